// Command kubelet-sim is the test cluster's kubelet. There is no container runtime here, so it
// runs each Pod as local processes in a network namespace of its own, joined by a veth pair to
// the cluster's bridge, with a Pod IP from the cluster's /24 of 10.244.0.0/16. It registers one
// Node and keeps it Ready, binds unscheduled Pods to it, reports Pod status as a kubelet does,
// and deletes like one (preStop, SIGTERM, grace period, SIGKILL, then the object goes).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
)

// imageFlag maps image name fragments to the programs that stand for them (--image FRAGMENT=PATH).
type imageFlag map[string]string

func (f imageFlag) String() string { return fmt.Sprint(map[string]string(f)) }
func (f imageFlag) Set(v string) error {
	k, p, ok := strings.Cut(v, "=")
	if !ok || k == "" || p == "" {
		return fmt.Errorf("--image wants FRAGMENT=PATH, got %q", v)
	}
	f[k] = p
	return nil
}

// kubelet holds the Node's identity and every Pod it runs, keyed by Pod UID.
type kubelet struct {
	client   kubernetes.Interface
	node     string
	stateDir string
	port     int // of the kubelet API, published in the Node's status
	net      *podNetwork
	images   imageFlag
	self     string // this binary: the stand-in for images it cannot run
	pods     listersv1.PodLister

	mu      sync.Mutex
	running map[types.UID]*podRunner
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "pause" {
		pause()
		return
	}
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	nodeName := flag.String("node-name", "kubelet-sim", "name of the Node to register")
	stateDir := flag.String("state-dir", "", "directory for Pods' volumes and logs")
	bridge := flag.String("bridge", "", "bridge that Pods' veths join (it holds the subnet's first address)")
	subnet := flag.String("subnet", "", "Pod IPs come from this /24, e.g. 10.244.0.0/24")
	nsPrefix := flag.String("netns-prefix", "", "prefix of the Pods' network namespace names")
	port := flag.Int("port", 10250, "HTTPS port of the kubelet API (containerLogs)")
	tlsCert := flag.String("tls-cert-file", "", "serving certificate of the kubelet API")
	tlsKey := flag.String("tls-private-key-file", "", "its key")
	clientCA := flag.String("client-ca-file", "", "CA of the apiserver's kubelet client certificate")
	images := imageFlag{}
	flag.Var(images, "image", "FRAGMENT=PATH: run PATH for images whose name contains FRAGMENT (repeatable)")
	flag.Parse()
	if *stateDir == "" || *bridge == "" || *subnet == "" || *nsPrefix == "" {
		log.Fatal("kubelet-sim: --state-dir, --bridge, --subnet and --netns-prefix are required")
	}
	prefix, err := netip.ParsePrefix(*subnet)
	if err != nil {
		log.Fatalf("kubelet-sim: --subnet: %v", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubelet-sim: %v", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("kubelet-sim: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		log.Fatalf("kubelet-sim: %v", err)
	}

	k := &kubelet{
		client: client, node: *nodeName, stateDir: *stateDir, port: *port, images: images, self: self,
		net:     newPodNetwork(*bridge, prefix, *nsPrefix),
		running: map[types.UID]*podRunner{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if err := k.serveAPI(*port, *tlsCert, *tlsKey, *clientCA); err != nil {
		log.Fatalf("kubelet-sim: kubelet API: %v", err)
	}
	if err := k.registerNode(ctx); err != nil {
		log.Fatalf("kubelet-sim: register Node %s: %v", k.node, err)
	}
	go k.heartbeat(ctx)

	factory := informers.NewSharedInformerFactory(client, 0)
	informer := factory.Core().V1().Pods()
	k.pods = informer.Lister()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	_, _ = informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			// a Pod deleted at once (grace period 0) never shows a deletionTimestamp here: stop it
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				k.forget(pod.UID)
			}
		},
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	log.Printf("kubelet-sim: Node %s ready; Pods get IPs from %s on bridge %s", k.node, prefix, *bridge)

	for i := 0; i < 4; i++ {
		go func() {
			for {
				key, quit := queue.Get()
				if quit {
					return
				}
				if err := k.sync(ctx, key); err != nil {
					log.Printf("kubelet-sim: %s: %v (retrying)", key, err)
					queue.AddRateLimited(key)
				} else {
					queue.Forget(key)
				}
				queue.Done(key)
			}
		}()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	log.Printf("kubelet-sim: stopping every Pod")
	queue.ShutDown()
	k.stopAll()
}

// sync brings one Pod to what its object asks: bound to this Node, running, or stopped and gone.
func (k *kubelet) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := k.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil // DeleteFunc stopped it
	}
	if err != nil {
		return err
	}
	if pod.Spec.NodeName == "" {
		return k.bind(ctx, pod)
	}
	if pod.Spec.NodeName != k.node {
		return nil
	}
	k.mu.Lock()
	r, ok := k.running[pod.UID]
	if !ok {
		if pod.DeletionTimestamp != nil {
			// not running here (never started, finished, or left by an earlier kubelet-sim,
			// whose processes `down` removes): nothing to stop
			k.mu.Unlock()
			return k.deletePod(ctx, pod)
		}
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			k.mu.Unlock()
			return nil
		}
		r = newPodRunner(k, pod)
		k.running[pod.UID] = r
		go r.run()
	}
	k.mu.Unlock()
	r.update(pod)
	return nil
}

// bind places an unscheduled Pod on this Node, as the scheduler would (there is only one).
func (k *kubelet) bind(ctx context.Context, pod *corev1.Pod) error {
	if pod.DeletionTimestamp != nil {
		return nil
	}
	err := k.client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: k.node},
	}, metav1.CreateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// deletePod removes the object at the end of a graceful deletion (grace period 0, this UID only).
func (k *kubelet) deletePod(ctx context.Context, pod *corev1.Pod) error {
	zero := int64(0)
	err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// forget stops a Pod whose object is gone.
func (k *kubelet) forget(uid types.UID) {
	k.mu.Lock()
	r := k.running[uid]
	k.mu.Unlock()
	if r != nil {
		r.kill(0)
	}
}

func (k *kubelet) finished(uid types.UID) {
	k.mu.Lock()
	delete(k.running, uid)
	k.mu.Unlock()
}

// stopAll stops every Pod at once (SIGTERM, then SIGKILL after a short grace) and removes their
// namespaces, when kubelet-sim itself is stopped.
func (k *kubelet) stopAll() {
	k.mu.Lock()
	runners := make([]*podRunner, 0, len(k.running))
	for _, r := range k.running {
		runners = append(runners, r)
	}
	k.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.shutdown(5 * time.Second)
		}()
	}
	wg.Wait()
}

// pause is the stand-in for every image kubelet-sim has no program for: it only waits to be
// stopped, so namespaces full of Pods that tests never call can be Ready.
func pause() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
