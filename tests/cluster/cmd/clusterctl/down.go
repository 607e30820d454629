package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"weir.dev/tests/cluster/internal/host"
)

// stopGrace is how long a component gets between SIGTERM and SIGKILL. kubelet-sim uses it to stop
// its Pods and remove their namespaces.
const stopGrace = 10 * time.Second

// down stops the cluster (see stopCluster) and removes its state directory, so a crashed or
// killed run never blocks the next `up`.
func down(o options) error {
	if err := stopCluster(o); err != nil {
		return err
	}
	return os.RemoveAll(o.state)
}

// stopCluster stops the cluster's processes by PID (kubelet-sim first, so it can stop its Pods),
// then removes whatever is left on the host by name (Pod processes, network namespaces, the
// bridge). The state directory, logs included, stays.
func stopCluster(o options) error {
	data, err := os.ReadFile(filepath.Join(o.state, "pids.json"))
	if err == nil {
		var procs []component
		if json.Unmarshal(data, &procs) == nil {
			for i := len(procs) - 1; i >= 0; i-- {
				stop(procs[i].Pid)
			}
		}
	}
	n := names(o)
	for _, ns := range host.Namespaces(n.NSPrefix) {
		host.RemoveNamespace(ns)
	}
	if _, err := os.Stat("/sys/class/net/" + n.Bridge); err == nil {
		if _, err := host.IP("link", "del", n.Bridge); err != nil {
			return err
		}
	}
	return nil
}

// stop sends SIGTERM to a component's process group, and SIGKILL if it is still there after
// stopGrace.
func stop(pid int) {
	if pid <= 0 || !alive(pid) {
		return
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(stopGrace)
	for time.Now().Before(deadline) && alive(pid) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(pid) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// alive says whether pid is a running process (a zombie, dead but not yet reaped by init, is not).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// the state follows the command name, which is in parentheses and may hold spaces
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// reap waits for the owner process to exit, then takes the cluster down; it gives up if the
// cluster went down some other way first.
func reap(o options) {
	for alive(o.ownerPid) {
		if _, err := os.Stat(filepath.Join(o.state, "pids.json")); err != nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := down(o); err != nil {
		progress("reaper: %v", err)
	}
}
