package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"weir.dev/tests/cluster/internal/host"
)

// probeState counts a readiness probe's consecutive results and when it runs next.
type probeState struct {
	next      time.Time
	successes int32
	failures  int32
}

// checkReady is a container's readiness: its readinessProbe where it has one (initial delay,
// period, timeout and thresholds honoured); otherwise, once it answers on its first declared
// TCP port (or at once if it declares none). The pause stand-in is Ready once started.
func (r *podRunner) checkReady(c *container) bool {
	if c.prog.standIn {
		return true
	}
	p := c.spec.ReadinessProbe
	if p == nil {
		if c.ready {
			return true
		}
		for _, port := range c.spec.Ports {
			if port.Protocol == "" || port.Protocol == corev1.ProtocolTCP {
				return dialOK(r.ip.String(), int(port.ContainerPort), time.Second)
			}
		}
		return true
	}
	now := time.Now()
	if c.probe.next.IsZero() {
		c.probe.next = c.startedAt.Add(time.Duration(p.InitialDelaySeconds) * time.Second)
	}
	if now.Before(c.probe.next) {
		return c.ready
	}
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	c.probe.next = now.Add(period)
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	if r.runHandler(c, &corev1.LifecycleHandler{Exec: p.Exec, HTTPGet: p.HTTPGet, TCPSocket: p.TCPSocket}, timeout) ||
		(p.GRPC != nil && dialOK(r.ip.String(), int(p.GRPC.Port), timeout)) {
		c.probe.successes++
		c.probe.failures = 0
		if c.probe.successes >= max(p.SuccessThreshold, 1) {
			return true
		}
		return c.ready
	}
	c.probe.failures++
	c.probe.successes = 0
	if c.probe.failures >= max(p.FailureThreshold, 1) {
		return false
	}
	return c.ready
}

// runHandler runs a probe's or a preStop hook's action against the container and reports
// success: exec inside the Pod's namespace, an HTTP GET or a TCP connect to the Pod's IP, or a
// sleep (the preStop sleep action).
func (r *podRunner) runHandler(c *container, h *corev1.LifecycleHandler, timeout time.Duration) bool {
	if timeout <= 0 {
		return false
	}
	switch {
	case h.Sleep != nil:
		d := time.Duration(h.Sleep.Seconds) * time.Second
		select {
		case <-time.After(min(d, timeout)):
		case <-r.killed:
		}
		return true
	case h.Exec != nil && len(h.Exec.Command) > 0:
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		argv := host.Privileged(append([]string{"ip", "netns", "exec", r.netns}, h.Exec.Command...)...)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = c.prog.env
		return cmd.Run() == nil
	case h.HTTPGet != nil:
		port, err := resolvePort(h.HTTPGet.Port, c.spec)
		if err != nil {
			return false
		}
		addr := r.ip.String()
		if h.HTTPGet.Host != "" {
			addr = h.HTTPGet.Host
		}
		scheme := "http"
		if h.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(addr, strconv.Itoa(port)), h.HTTPGet.Path), nil)
		if err != nil {
			return false
		}
		for _, hd := range h.HTTPGet.HTTPHeaders {
			req.Header.Add(hd.Name, hd.Value)
		}
		client := &http.Client{
			Timeout: timeout,
			// a kubelet does not verify a probe's certificate either
			Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec
		}
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case h.TCPSocket != nil:
		port, err := resolvePort(h.TCPSocket.Port, c.spec)
		if err != nil {
			return false
		}
		return dialOK(r.ip.String(), port, timeout)
	}
	return true
}

// resolvePort turns a probe's port, a number or the name of a container port, into a number.
func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}

func dialOK(ip string, port int, timeout time.Duration) bool {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(port)), timeout)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}
