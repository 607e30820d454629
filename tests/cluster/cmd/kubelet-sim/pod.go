package main

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"

	"weir.dev/tests/cluster/internal/host"
)

const (
	// tick is how often a Pod's loop looks at its processes and probes
	tick = 100 * time.Millisecond
	// maxRestartBackoff caps the wait before a crashed container is started again (a kubelet's
	// CrashLoopBackOff, doubling from 1 s)
	maxRestartBackoff = 30 * time.Second
	// defaultGrace is a Pod's terminationGracePeriodSeconds when it gives none
	defaultGrace = 30 * time.Second
)

// container is one running program of a Pod.
type container struct {
	spec      *corev1.Container
	prog      program
	cmd       *exec.Cmd
	exited    chan int // the exit code, once
	exitCode  *int
	startedAt metav1.Time
	finished  metav1.Time
	restarts  int32
	nextStart time.Time
	ready     bool
	probe     probeState
}

// podRunner runs one Pod from start to deletion. Its loop owns every field but the latest object
// (mu) and the kill switch.
type podRunner struct {
	k   *kubelet
	uid types.UID
	dir string

	mu        sync.Mutex
	latest    *corev1.Pod
	killGrace time.Duration // how long a kill waits between SIGTERM and SIGKILL
	poke      chan struct{}
	killed    chan struct{}
	once      sync.Once
	done      chan struct{} // closed when run returns

	ip         netip.Addr
	netns      string
	containers []*container
	startTime  metav1.Time
	posted     *corev1.PodStatus
	// terminating: stopping for a delete, so exited containers are not started again
	terminating bool
}

func newPodRunner(k *kubelet, pod *corev1.Pod) *podRunner {
	return &podRunner{
		k: k, uid: pod.UID, latest: pod,
		dir:    filepath.Join(k.stateDir, "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID)),
		poke:   make(chan struct{}, 1),
		killed: make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// update hands the runner the Pod's newest object.
func (r *podRunner) update(pod *corev1.Pod) {
	r.mu.Lock()
	r.latest = pod
	r.mu.Unlock()
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

func (r *podRunner) pod() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latest
}

// kill stops the Pod: SIGTERM, SIGKILL after grace (none when its object is already gone).
func (r *podRunner) kill(grace time.Duration) {
	r.once.Do(func() {
		r.mu.Lock()
		r.killGrace = grace
		r.mu.Unlock()
		close(r.killed)
	})
}

func (r *podRunner) isKilled() bool {
	select {
	case <-r.killed:
		return true
	default:
		return false
	}
}

func (r *podRunner) run() {
	defer close(r.done)
	defer r.k.finished(r.uid)
	ctx := context.Background()
	pod := r.pod()
	key := pod.Namespace + "/" + pod.Name

	// sandbox: an IP, a namespace and the volumes; a missing Secret is waited for
	for last := ""; ; {
		err := r.prepare(ctx)
		if err == nil {
			break
		}
		if err.Error() != last {
			last = err.Error()
			log.Printf("kubelet-sim: %s: %v (waiting, retried every second)", key, err)
		}
		if r.wait(time.Second) || r.pod().DeletionTimestamp != nil {
			r.cleanup(ctx, true)
			return
		}
	}
	log.Printf("kubelet-sim: %s: %s in %s", key, r.ip, r.netns)
	if err := r.runInit(ctx); err != nil {
		log.Printf("kubelet-sim: %s: init: %v", key, err)
	}
	r.startTime = metav1.Now()
	for _, c := range r.containers {
		r.start(c)
	}
	r.postStatus(ctx)

	for {
		if r.wait(tick) {
			r.mu.Lock()
			grace := r.killGrace
			r.mu.Unlock()
			r.stopAll(grace)
			r.cleanup(ctx, false)
			return
		}
		pod = r.pod()
		if pod.DeletionTimestamp != nil {
			r.terminate(ctx, pod)
			r.cleanup(ctx, true)
			return
		}
		r.step()
		r.postStatus(ctx)
	}
}

// wait sleeps up to d, waking early for an update; it reports whether the Pod was killed.
func (r *podRunner) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.killed:
		return true
	case <-r.poke:
	case <-t.C:
	}
	return r.isKilled()
}

func (r *podRunner) prepare(ctx context.Context) error {
	pod := r.pod()
	if !r.ip.IsValid() {
		ip, err := r.k.net.allocate(r.uid)
		if err != nil {
			return err
		}
		r.ip = ip
	}
	if r.netns == "" {
		netns, err := r.k.net.setup(r.uid, r.ip)
		if err != nil {
			return err
		}
		r.netns = netns
	}
	if err := os.MkdirAll(filepath.Join(r.dir, "logs"), 0o755); err != nil {
		return err
	}
	volumes, err := r.k.volumes(ctx, pod, r.dir)
	if err != nil {
		return err
	}
	// the downward API's status.podIP is this Pod's address even before its status says so
	withIP := pod.DeepCopy()
	withIP.Status.PodIP = r.ip.String()
	var containers []*container
	for i := range pod.Spec.Containers {
		c, err := r.k.containerFor(ctx, withIP, &pod.Spec.Containers[i], volumes)
		if err != nil {
			return err
		}
		containers = append(containers, c)
	}
	r.containers = containers
	return nil
}

func (k *kubelet) containerFor(ctx context.Context, pod *corev1.Pod, spec *corev1.Container, volumes map[string]string) (*container, error) {
	bin, standIn := k.programFor(spec)
	m := mountsFor(spec, volumes)
	env, err := k.env(ctx, pod, spec, m)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", spec.Name, err)
	}
	prog := program{argv: argv(bin, spec, env, m), env: env, standIn: standIn}
	if standIn {
		prog.argv = []string{bin, "pause"}
	}
	return &container{spec: spec, prog: prog}, nil
}

// runInit runs the init containers in order, each to completion; a stand-in completes at once.
func (r *podRunner) runInit(ctx context.Context) error {
	pod := r.pod()
	withIP := pod.DeepCopy()
	withIP.Status.PodIP = r.ip.String()
	volumes, err := r.k.volumes(ctx, pod, r.dir)
	if err != nil {
		return err
	}
	for i := range pod.Spec.InitContainers {
		c, err := r.k.containerFor(ctx, withIP, &pod.Spec.InitContainers[i], volumes)
		if err != nil {
			return err
		}
		if c.prog.standIn {
			continue
		}
		r.start(c)
		select {
		case code := <-c.exited:
			if code != 0 {
				return fmt.Errorf("init container %s exited with %d", c.spec.Name, code)
			}
		case <-r.killed:
			r.signal(c, syscall.SIGKILL)
			return nil
		}
	}
	return nil
}

// start runs a container's program inside the Pod's network namespace, in a process group of
// its own, its output appended to the container's log a timed line at a time (logs.go).
func (r *podRunner) start(c *container) {
	logs, err := openContainerLog(r.logPath(c.spec.Name))
	if err != nil {
		log.Printf("kubelet-sim: %v", err)
		return
	}
	argv := host.Privileged(append([]string{"ip", "netns", "exec", r.netns}, c.prog.argv...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = c.prog.env
	cmd.Dir = r.dir
	logs.attach(cmd)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.exited = make(chan int, 1)
	c.exitCode = nil
	c.ready = false
	c.probe = probeState{}
	if err := cmd.Start(); err != nil {
		_ = logs.Close()
		log.Printf("kubelet-sim: start %s: %v", c.spec.Name, err)
		code := 128
		c.exitCode = &code
		c.finished = metav1.Now()
		return
	}
	c.cmd = cmd
	c.startedAt = metav1.Now()
	exited := c.exited
	go func() {
		_ = cmd.Wait()
		// the end of a last line without a newline is in the log before the exit is seen
		_ = logs.Close()
		exited <- cmd.ProcessState.ExitCode()
	}()
}

func (r *podRunner) logPath(name string) string {
	return filepath.Join(r.dir, "logs", name+".log")
}

// step notices exits, restarts what the restart policy says to, and runs readiness checks.
func (r *podRunner) step() {
	pod := r.pod()
	for _, c := range r.containers {
		if c.exitCode == nil && c.exited != nil {
			select {
			case code := <-c.exited:
				c.exitCode = &code
				c.finished = metav1.Now()
				c.ready = false
				backoff := time.Second << min(c.restarts, 5)
				c.nextStart = time.Now().Add(min(backoff, maxRestartBackoff))
			default:
			}
		}
		if c.exitCode != nil {
			if r.terminating {
				continue
			}
			policy := pod.Spec.RestartPolicy
			if policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && *c.exitCode != 0) {
				if time.Now().After(c.nextStart) {
					c.restarts++
					r.start(c)
				}
			}
			continue
		}
		c.ready = r.checkReady(c)
	}
}

// terminate stops the Pod as a kubelet does on a graceful delete: preStop hooks, SIGTERM, and
// SIGKILL for whatever is still running when the grace period ends. Readiness keeps being
// checked meanwhile, so a draining Pod shows `serving` in its EndpointSlice while it serves.
func (r *podRunner) terminate(ctx context.Context, pod *corev1.Pod) {
	grace := defaultGrace
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	deadline := time.Now().Add(grace)
	r.terminating = true
	log.Printf("kubelet-sim: %s/%s: stopping (grace %s)", pod.Namespace, pod.Name, grace)

	hooks := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, c := range r.containers {
			if c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil && c.exitCode == nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r.runHandler(c, c.spec.Lifecycle.PreStop, time.Until(deadline))
				}()
			}
		}
		wg.Wait()
		close(hooks)
	}()
	for waiting := true; waiting; {
		select {
		case <-hooks:
			waiting = false
		case <-time.After(tick):
			if time.Now().After(deadline) || r.isKilled() {
				waiting = false
			}
		}
		r.step()
		r.postStatus(ctx)
	}
	r.stopAll(time.Until(deadline))
}

// stopAll sends SIGTERM to every running container and SIGKILL to those still running after
// grace (at once when grace is not positive).
func (r *podRunner) stopAll(grace time.Duration) {
	for _, c := range r.containers {
		if c.exitCode == nil && c.cmd != nil {
			r.signal(c, syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(grace)
	for _, c := range r.containers {
		if c.exitCode != nil || c.cmd == nil {
			continue
		}
		select {
		case code := <-c.exited:
			c.exitCode = &code
		case <-time.After(time.Until(deadline)):
			r.signal(c, syscall.SIGKILL)
			code := <-c.exited
			c.exitCode = &code
		}
		c.finished = metav1.Now()
		c.ready = false
	}
}

func (r *podRunner) signal(c *container, sig syscall.Signal) {
	if c.cmd != nil && c.cmd.Process != nil {
		_ = syscall.Kill(-c.cmd.Process.Pid, sig)
	}
}

// shutdown is kubelet-sim's own exit: stop the Pod within grace and remove its namespace, but
// leave its object (the cluster is going away). The Pod's own loop does the work.
func (r *podRunner) shutdown(grace time.Duration) {
	r.kill(grace)
	select {
	case <-r.done:
	case <-time.After(grace + 5*time.Second):
		log.Printf("kubelet-sim: %s did not stop within %s", r.dir, grace)
	}
}

// cleanup removes the namespace and, after a graceful delete, the Pod object itself.
func (r *podRunner) cleanup(ctx context.Context, deleteObject bool) {
	if r.netns != "" {
		r.k.net.teardown(r.uid)
		r.netns = ""
	}
	if r.ip.IsValid() {
		r.k.net.release(r.ip)
	}
	if deleteObject {
		if err := r.k.deletePod(ctx, r.pod()); err != nil {
			log.Printf("kubelet-sim: delete %s: %v", r.pod().Name, err)
		}
	}
	_ = os.RemoveAll(filepath.Join(r.dir, "volumes"))
}

// postStatus writes the Pod's status when it changed since the last write.
func (r *podRunner) postStatus(ctx context.Context) {
	pod := r.pod()
	status := r.status(pod)
	if r.posted != nil && reflect.DeepEqual(*r.posted, status) {
		return
	}
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		fresh, err := r.k.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if fresh.UID != r.uid {
			return nil
		}
		fresh.Status = withStatus(fresh.Status, status)
		_, err = r.k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) {
		log.Printf("kubelet-sim: status of %s/%s: %v", pod.Namespace, pod.Name, err)
		return
	}
	r.posted = &status
}

// withStatus keeps what the apiserver set (QoS class, nominated node, ...) and replaces what a
// kubelet owns.
func withStatus(old, s corev1.PodStatus) corev1.PodStatus {
	old.Phase = s.Phase
	old.Conditions = s.Conditions
	old.HostIP, old.HostIPs = s.HostIP, s.HostIPs
	old.PodIP, old.PodIPs = s.PodIP, s.PodIPs
	old.StartTime = s.StartTime
	old.ContainerStatuses = s.ContainerStatuses
	return old
}

// status is the Pod's status as a kubelet reports it. Condition times are the Pod's start: the
// status is compared to the last one written, so it must not change with the clock.
func (r *podRunner) status(pod *corev1.Pod) corev1.PodStatus {
	allReady, running, succeeded, failed := true, 0, 0, 0
	var statuses []corev1.ContainerStatus
	for _, c := range r.containers {
		cs := corev1.ContainerStatus{
			Name: c.spec.Name, Image: c.spec.Image, ImageID: "kubelet-sim://" + c.spec.Image,
			Ready: c.ready, RestartCount: c.restarts,
		}
		switch {
		case c.exitCode != nil:
			cs.State.Terminated = &corev1.ContainerStateTerminated{
				ExitCode: int32(*c.exitCode), StartedAt: c.startedAt, FinishedAt: c.finished,
				Reason: map[bool]string{true: "Completed", false: "Error"}[*c.exitCode == 0],
			}
			if *c.exitCode == 0 {
				succeeded++
			} else {
				failed++
			}
		case c.cmd != nil:
			running++
			started := true
			cs.Started = &started
			cs.ContainerID = fmt.Sprintf("kubelet-sim://%d", c.cmd.Process.Pid)
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.startedAt}
		default:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		}
		allReady = allReady && c.ready
		statuses = append(statuses, cs)
	}
	phase := corev1.PodRunning
	switch {
	case len(r.containers) == 0:
		phase = corev1.PodPending
	case running == 0 && pod.Spec.RestartPolicy != corev1.RestartPolicyAlways && failed == 0:
		phase = corev1.PodSucceeded
	case running == 0 && pod.Spec.RestartPolicy == corev1.RestartPolicyNever:
		phase = corev1.PodFailed
	}
	ready := corev1.ConditionFalse
	if allReady && len(r.containers) > 0 {
		ready = corev1.ConditionTrue
	}
	cond := func(t corev1.PodConditionType, s corev1.ConditionStatus) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: r.startTime}
	}
	ips := []corev1.PodIP{{IP: r.ip.String()}}
	return corev1.PodStatus{
		Phase: phase,
		Conditions: []corev1.PodCondition{
			cond(corev1.PodReadyToStartContainers, corev1.ConditionTrue),
			cond(corev1.PodInitialized, corev1.ConditionTrue),
			cond(corev1.ContainersReady, ready),
			cond(corev1.PodReady, ready),
			cond(corev1.PodScheduled, corev1.ConditionTrue),
		},
		HostIP:            "127.0.0.1",
		HostIPs:           []corev1.HostIP{{IP: "127.0.0.1"}},
		PodIP:             r.ip.String(),
		PodIPs:            ips,
		StartTime:         &r.startTime,
		ContainerStatuses: statuses,
	}
}
