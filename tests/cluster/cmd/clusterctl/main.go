// Command clusterctl starts and stops weir's test control plane: etcd, kube-apiserver,
// kube-controller-manager and kubelet-sim, each on a free loopback port, with state under one
// directory per cluster so that clusters with different names run side by side.
// scripts/cluster builds it and calls it; progress goes to stderr and `up` prints
// `export KUBECONFIG=...` as the last line of stdout.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// options are the paths scripts/cluster passes; every one is required.
type options struct {
	name     string // the cluster's name: its state directory and network names derive from it
	state    string // target/cluster/NAME
	k8sBin   string // kube-apiserver, kube-controller-manager (and kubectl), cached by version
	toolsBin string // etcd, kubelet-sim, echo-basic, and the CRDs of the Gateway API module
	crds     string // comma-separated directories of CRD manifests to apply (weir's own)
	ownerPid int    // when set, a reaper tears the cluster down once this process is gone
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: clusterctl up|down|reap|stop-apiserver|start-apiserver --name NAME --state DIR [--k8s-bin DIR --tools-bin DIR --crds DIRS --owner-pid PID]`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var o options
	fs.StringVar(&o.name, "name", "default", "cluster name")
	fs.StringVar(&o.state, "state", "", "state directory")
	fs.StringVar(&o.k8sBin, "k8s-bin", "", "directory of kube-apiserver and kube-controller-manager")
	fs.StringVar(&o.toolsBin, "tools-bin", "", "directory of etcd, kubelet-sim and echo-basic")
	fs.StringVar(&o.crds, "crds", "", "comma-separated directories of extra CRDs to install")
	fs.IntVar(&o.ownerPid, "owner-pid", 0, "tear the cluster down when this process exits")
	_ = fs.Parse(os.Args[2:])
	if o.state == "" {
		usage()
	}
	abs, err := filepath.Abs(o.state)
	if err != nil {
		fail(err)
	}
	o.state = abs

	switch cmd {
	case "up":
		start := time.Now()
		kubeconfig, reused, err := up(o)
		if err != nil {
			fail(err)
		}
		if reused {
			progress("cluster %s is already up", o.name)
		} else {
			progress("cluster %s up in %.1f s", o.name, time.Since(start).Seconds())
		}
		fmt.Printf("export KUBECONFIG=%s\n", kubeconfig)
	case "down":
		if err := down(o); err != nil {
			fail(err)
		}
		progress("cluster %s down", o.name)
	case "reap":
		reap(o)
	case "stop-apiserver":
		if err := stopApiserver(o); err != nil {
			fail(err)
		}
		progress("cluster %s: kube-apiserver stopped", o.name)
	case "start-apiserver":
		if err := startApiserver(o); err != nil {
			fail(err)
		}
		progress("cluster %s: kube-apiserver started again", o.name)
	default:
		usage()
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cluster: "+format+"\n", args...)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "cluster: %v\n", strings.TrimSpace(err.Error()))
	os.Exit(1)
}
