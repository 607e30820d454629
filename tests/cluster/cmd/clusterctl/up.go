package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"weir.dev/tests/cluster/internal/host"
)

const (
	// podNetwork is the pod CIDR 10.244.0.0/16; each cluster takes one /24 of it
	podNetwork = "10.244"
	// bringUpTimeout bounds each wait of `up`: a cold machine under load needs more than the
	// 3.5 s a quiet one takes.
	bringUpTimeout = 120 * time.Second
)

// component is one process of the cluster, as recorded in STATE/pids.json for `down`.
type component struct {
	Name string `json:"name"`
	Pid  int    `json:"pid"`
	// how it was started, so that it can be started again (restartApiserver)
	Argv []string `json:"argv,omitempty"`
}

// network is what a cluster holds on the host: a bridge with the first address of its /24 of
// the pod network, and the prefix of its Pods' network namespaces.
type network struct {
	Bridge   string `json:"bridge"`
	Subnet   string `json:"subnet"` // e.g. 10.244.3.0/24
	Gateway  string `json:"gateway"`
	NSPrefix string `json:"nsPrefix"`
}

// names derives a cluster's host-wide names from its name and state directory, so that `down`
// finds them even when `up` died before writing anything.
func names(o options) network {
	h := fnv.New32a()
	h.Write([]byte(o.state))
	id := fmt.Sprintf("%08x", h.Sum32())
	return network{Bridge: "wbr" + id, NSPrefix: "wpod-" + id + "-"}
}

func up(o options) (kubeconfig string, reused bool, err error) {
	kubeconfig = filepath.Join(o.state, "kubeconfig")
	defer func() {
		// a failed start leaves nothing running, but keeps the logs its error points to (the next
		// `up` removes them)
		if err != nil && !reused {
			_ = stopCluster(o)
		}
	}()
	if _, err := os.Stat(filepath.Join(o.state, "pids.json")); err == nil {
		if healthy(o.state) {
			return kubeconfig, true, nil
		}
		progress("cluster %s left behind by an earlier run is not healthy: removing it", o.name)
	}
	if err := down(o); err != nil {
		return "", false, err
	}
	if o.k8sBin == "" || o.toolsBin == "" {
		return "", false, errors.New("up needs --k8s-bin and --tools-bin")
	}
	for _, d := range []string{"pki", "logs", "etcd", "kubelet"} {
		if err := os.MkdirAll(filepath.Join(o.state, d), 0o755); err != nil {
			return "", false, err
		}
	}

	ports, err := freePorts(5)
	if err != nil {
		return "", false, err
	}
	etcdPort, etcdPeer, apiPort, kcmPort, kubeletPort := ports[0], ports[1], ports[2], ports[3], ports[4]

	progress("making certificates")
	p, err := newPKI(filepath.Join(o.state, "pki"))
	if err != nil {
		return "", false, err
	}
	serving := []string{"127.0.0.1", "localhost", "10.96.0.1", "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	for _, c := range []struct {
		name, cn string
		orgs     []string
		hosts    []string
	}{
		{"apiserver", "kube-apiserver", nil, serving},
		{"admin", "kubernetes-admin", []string{"system:masters"}, nil},
		{"controller-manager", "system:kube-controller-manager", nil, nil},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil},
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}, []string{"127.0.0.1", "localhost"}},
	} {
		if err := p.issue(c.name, c.cn, c.orgs, c.hosts); err != nil {
			return "", false, err
		}
	}
	if err := p.serviceAccountKeys(); err != nil {
		return "", false, err
	}

	podNet, err := allocateNetwork(o)
	if err != nil {
		return "", false, err
	}

	var procs []component
	record := func(c component) error {
		procs = append(procs, c)
		data, _ := json.MarshalIndent(procs, "", "  ")
		return os.WriteFile(filepath.Join(o.state, "pids.json"), data, 0o644)
	}
	started := func(name string, argv ...string) error {
		pid, err := spawn(o.state, name, argv)
		if err != nil {
			return err
		}
		return record(component{Name: name, Pid: pid, Argv: argv})
	}
	pki := p.path

	progress("starting etcd on 127.0.0.1:%d", etcdPort)
	if err := started("etcd", filepath.Join(o.toolsBin, "etcd"),
		"--data-dir", filepath.Join(o.state, "etcd"),
		"--listen-client-url", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--listen-peer-url", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)); err != nil {
		return "", false, err
	}
	if err := waitFor("etcd", func() bool {
		return httpOK(http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/health", etcdPort))
	}, o.state); err != nil {
		return "", false, err
	}

	progress("starting kube-apiserver on 127.0.0.1:%d", apiPort)
	if err := started("kube-apiserver", filepath.Join(o.k8sBin, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file="+pki("apiserver.crt"), "--tls-private-key-file="+pki("apiserver.key"),
		"--client-ca-file="+pki("ca.crt"),
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki("sa.pub"),
		"--service-account-signing-key-file="+pki("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		// 127.0.0.1 may not be the `kubernetes` Service's endpoint: without this the apiserver
		// logs an error every 10 s
		"--endpoint-reconciler-type=none",
		"--kubelet-client-certificate="+pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority="+pki("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--profiling=false",
	); err != nil {
		return "", false, err
	}

	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	if err := writeKubeconfig(kubeconfig, o.name, server, p, "admin"); err != nil {
		return "", false, err
	}
	kcmConfig := filepath.Join(o.state, "controller-manager.kubeconfig")
	if err := writeKubeconfig(kcmConfig, o.name, server, p, "controller-manager"); err != nil {
		return "", false, err
	}
	admin, err := adminHTTP(o.state)
	if err != nil {
		return "", false, err
	}
	if err := waitFor("kube-apiserver /readyz", func() bool { return httpOK(admin, server+"/readyz") }, o.state); err != nil {
		return "", false, err
	}

	progress("starting kube-controller-manager on 127.0.0.1:%d", kcmPort)
	if err := started("kube-controller-manager", filepath.Join(o.k8sBin, "kube-controller-manager"),
		"--kubeconfig="+kcmConfig,
		"--authentication-kubeconfig="+kcmConfig,
		"--authorization-kubeconfig="+kcmConfig,
		"--controllers=*", "--leader-elect=false",
		// with shared credentials RBAC forbids the controllers most of their work
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+pki("sa.key"),
		"--root-ca-file="+pki("ca.crt"),
		"--cluster-signing-cert-file="+pki("ca.crt"),
		"--cluster-signing-key-file="+pki("ca.key"),
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort),
		"--profiling=false",
	); err != nil {
		return "", false, err
	}

	progress("starting kubelet-sim (Pods in %s, bridge %s)", podNet.Subnet, podNet.Bridge)
	kubelet := host.Privileged(filepath.Join(o.toolsBin, "kubelet-sim"),
		"--kubeconfig="+kubeconfig,
		"--node-name="+nodeName,
		"--state-dir="+filepath.Join(o.state, "kubelet"),
		"--bridge="+podNet.Bridge, "--subnet="+podNet.Subnet, "--netns-prefix="+podNet.NSPrefix,
		"--image=gateway-api/echo-basic="+filepath.Join(o.toolsBin, "echo-basic"),
		fmt.Sprintf("--port=%d", kubeletPort),
		"--tls-cert-file="+pki("kubelet.crt"), "--tls-private-key-file="+pki("kubelet.key"),
		"--client-ca-file="+pki("ca.crt"),
	)
	if err := started("kubelet-sim", kubelet...); err != nil {
		return "", false, err
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return "", false, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", false, err
	}

	progress("installing CRDs")
	dirs := []string{filepath.Join(o.toolsBin, "crds", "gateway-api")}
	for _, d := range strings.Split(o.crds, ",") {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	if err := installCRDs(cfg, dirs); err != nil {
		return "", false, err
	}

	progress("CRDs established; waiting for a Ready Node")
	if err := waitFor("a Ready Node", func() bool { return nodeReady(client) }, o.state); err != nil {
		return "", false, err
	}
	if o.ownerPid > 0 {
		self, _ := os.Executable()
		if _, err := spawn(o.state, "reaper", []string{self, "reap", "--name", o.name, "--state", o.state,
			"--owner-pid", strconv.Itoa(o.ownerPid)}); err != nil {
			return "", false, err
		}
	}
	return kubeconfig, false, nil
}

// nodeName is kubelet-sim's one Node.
const nodeName = "kubelet-sim"

func nodeReady(client kubernetes.Interface) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return false
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// spawn starts a component in a session of its own (so that `down` can signal its whole process
// group, and it outlives `up`), its output appended to STATE/logs/NAME.log.
func spawn(state, name string, argv []string) (int, error) {
	logf, err := os.OpenFile(filepath.Join(state, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	// not waited for: it belongs to the cluster, not to this command
	_ = cmd.Process.Release()
	return pid, nil
}

// waitFor polls cond until it holds, up to bringUpTimeout; on timeout the error names the logs.
func waitFor(what string, cond func() bool, state string) error {
	deadline := time.Now().Add(bringUpTimeout)
	for time.Now().Before(deadline) {
		if cond() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s; see the logs in %s", what, bringUpTimeout, filepath.Join(state, "logs"))
}

func httpOK(client *http.Client, url string) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// adminHTTP is an HTTP client holding the admin certificate and trusting the cluster's CA.
func adminHTTP(state string) (*http.Client, error) {
	dir := filepath.Join(state, "pki")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}, nil
}

// healthy says whether the cluster recorded in state answers /readyz and still has its kubelet.
func healthy(state string) bool {
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(state, "kubeconfig"))
	if err != nil {
		return false
	}
	client, err := adminHTTP(state)
	if err != nil || !httpOK(client, cfg.Host+"/readyz") {
		return false
	}
	data, err := os.ReadFile(filepath.Join(state, "pids.json"))
	if err != nil {
		return false
	}
	var procs []component
	if json.Unmarshal(data, &procs) != nil {
		return false
	}
	for _, p := range procs {
		if !alive(p.Pid) {
			return false
		}
	}
	return true
}

func writeKubeconfig(path, cluster, server string, p *pki, user string) error {
	read := func(name string) ([]byte, error) { return os.ReadFile(p.path(name)) }
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	cert, err := read(user + ".crt")
	if err != nil {
		return err
	}
	key, err := read(user + ".key")
	if err != nil {
		return err
	}
	name := "weir-" + cluster
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user}
	cfg.CurrentContext = name
	return clientcmd.WriteToFile(*cfg, path)
}

// freePorts reserves n distinct free loopback ports: all listeners stay open until every port is
// known, so none is handed out twice.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// allocateNetwork creates the cluster's bridge on a /24 of 10.244.0.0/16 that no interface on
// this host holds. A lock file makes two `up`s at once pick different ones.
func allocateNetwork(o options) (network, error) {
	n := names(o)
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "weir-cluster-network.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return n, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return n, err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	out, err := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		return n, fmt.Errorf("list addresses (is iproute2 installed?): %w", err)
	}
	used := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, podNetwork+".") {
			parts := strings.Split(f, ".")
			used[parts[2]] = true
		}
	}
	third := -1
	for i := 0; i < 255; i++ {
		if !used[strconv.Itoa(i)] {
			third = i
			break
		}
	}
	if third < 0 {
		return n, errors.New("every /24 of 10.244.0.0/16 is held by an interface on this host: stop other clusters (scripts/cluster down NAME)")
	}
	n.Subnet = fmt.Sprintf("%s.%d.0/24", podNetwork, third)
	n.Gateway = fmt.Sprintf("%s.%d.1", podNetwork, third)
	for _, args := range [][]string{
		{"link", "add", n.Bridge, "type", "bridge"},
		{"addr", "add", n.Gateway + "/24", "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
	} {
		if _, err := host.IP(args...); err != nil {
			return n, err
		}
	}
	data, _ := json.MarshalIndent(n, "", "  ")
	return n, os.WriteFile(filepath.Join(o.state, "network.json"), data, 0o644)
}
