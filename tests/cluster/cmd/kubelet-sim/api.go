package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

// serveAPI serves the part of the kubelet API that `kubectl logs` reaches through the
// apiserver: GET /containerLogs/NAMESPACE/POD/CONTAINER (?sinceTime, sinceSeconds, timestamps,
// tailLines, follow), over HTTPS with client certificates from the cluster's CA.
func (k *kubelet) serveAPI(port int, certFile, keyFile, caFile string) error {
	if certFile == "" {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.containerLogs)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
		},
	}
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil {
			log.Printf("kubelet-sim: kubelet API: %v", err)
		}
	}()
	return nil
}

// containerLogs serves a container's log with the PodLogOptions of the query (logs.go). A
// followed log ends when the Pod has stopped.
func (k *kubelet) containerLogs(w http.ResponseWriter, req *http.Request) {
	ns, name, ctr := req.PathValue("namespace"), req.PathValue("pod"), req.PathValue("container")
	pod, err := k.pods.Pods(ns).Get(name)
	if err != nil {
		http.Error(w, fmt.Sprintf("pod %s/%s: %v", ns, name, err), http.StatusNotFound)
		return
	}
	k.mu.Lock()
	r := k.running[pod.UID]
	k.mu.Unlock()
	if r == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s is not running on this node", ns, name), http.StatusNotFound)
		return
	}
	f, err := os.Open(r.logPath(ctr))
	if err != nil {
		http.Error(w, fmt.Sprintf("container %s of pod %s/%s has no log", ctr, ns, name), http.StatusNotFound)
		return
	}
	defer f.Close()
	serveLogs(w, req, f, r.done)
}
