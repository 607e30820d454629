package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The apiserver alone can be stopped and started again, as an upgrade or a crash does, to test
// that clients (weir's watches) keep serving and converge when it is back.

// components reads the cluster's pids.json.
func components(o options) ([]component, error) {
	data, err := os.ReadFile(filepath.Join(o.state, "pids.json"))
	if err != nil {
		return nil, fmt.Errorf("cluster %s is not up: %w", o.name, err)
	}
	var procs []component
	if err := json.Unmarshal(data, &procs); err != nil {
		return nil, fmt.Errorf("pids.json: %w", err)
	}
	return procs, nil
}

func apiserverIndex(procs []component) (int, error) {
	for i, c := range procs {
		if c.Name == "kube-apiserver" {
			return i, nil
		}
	}
	return 0, errors.New("no kube-apiserver in pids.json")
}

// apiserver reads pids.json and finds the kube-apiserver in it.
func apiserver(o options) ([]component, int, error) {
	procs, err := components(o)
	if err != nil {
		return nil, 0, err
	}
	i, err := apiserverIndex(procs)
	return procs, i, err
}

// stopApiserver stops the kube-apiserver process; etcd and the rest keep running.
func stopApiserver(o options) error {
	procs, i, err := apiserver(o)
	if err != nil {
		return err
	}
	stop(procs[i].Pid)
	return nil
}

// startApiserver starts the kube-apiserver again with the arguments it was first started with,
// and waits for /readyz.
func startApiserver(o options) error {
	procs, i, err := apiserver(o)
	if err != nil {
		return err
	}
	c := procs[i]
	if alive(c.Pid) {
		return errors.New("kube-apiserver is running: stop it first")
	}
	if len(c.Argv) == 0 {
		return errors.New("pids.json has no arguments for kube-apiserver (a cluster started by an older clusterctl)")
	}
	port := ""
	for _, a := range c.Argv {
		if v, ok := strings.CutPrefix(a, "--secure-port="); ok {
			port = v
		}
	}
	pid, err := spawn(o.state, c.Name, c.Argv)
	if err != nil {
		return err
	}
	procs[i].Pid = pid
	data, _ := json.MarshalIndent(procs, "", "  ")
	if err := os.WriteFile(filepath.Join(o.state, "pids.json"), data, 0o644); err != nil {
		return err
	}
	admin, err := adminHTTP(o.state)
	if err != nil {
		return err
	}
	server := "https://127.0.0.1:" + port
	return waitFor("kube-apiserver /readyz", func() bool { return httpOK(admin, server+"/readyz") }, o.state)
}
