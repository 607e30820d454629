package main

import (
	"fmt"
	"net/netip"
	"os"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"weir.dev/tests/cluster/internal/host"
)

// podNetwork hands out Pod IPs from the cluster's /24 and builds each Pod's namespace: a veth
// pair whose host end joins the bridge (which holds the subnet's first address, the Pods'
// default gateway) and whose other end is the Pod's eth0.
type podNetwork struct {
	bridge   string
	subnet   netip.Prefix
	gateway  netip.Addr
	nsPrefix string

	mu    sync.Mutex
	inUse map[netip.Addr]types.UID
	last  netip.Addr // the last address handed out: the next search starts after it
}

func newPodNetwork(bridge string, subnet netip.Prefix, nsPrefix string) *podNetwork {
	subnet = subnet.Masked()
	return &podNetwork{
		bridge: bridge, subnet: subnet, gateway: subnet.Addr().Next(), nsPrefix: nsPrefix,
		inUse: map[netip.Addr]types.UID{}, last: subnet.Addr().Next(),
	}
}

// allocate returns an address that no running Pod holds, going round the subnet as a CNI's
// host-local IPAM does, so a stopped Pod's address is not handed out again at once (its
// EndpointSlice entry may still be draining). The network address, the gateway and the
// broadcast address are never handed out.
func (n *podNetwork) allocate(uid types.UID) (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	first := n.gateway.Next()
	usable := func(a netip.Addr) bool { return n.subnet.Contains(a) && n.subnet.Contains(a.Next()) }
	a := n.last
	for range 1 << (32 - n.subnet.Bits()) {
		a = a.Next()
		if !usable(a) || a.Less(first) {
			a = first
		}
		if _, taken := n.inUse[a]; !taken {
			n.inUse[a] = uid
			n.last = a
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("every address of %s is held by a running Pod", n.subnet)
}

func (n *podNetwork) release(a netip.Addr) {
	n.mu.Lock()
	delete(n.inUse, a)
	n.mu.Unlock()
}

// names of a Pod's namespace and of its veth's host end (interface names have 15 bytes at most).
func (n *podNetwork) names(uid types.UID) (netns, hostVeth string) {
	short := ""
	for _, c := range string(uid) {
		if c != '-' {
			short += string(c)
		}
		if len(short) == 12 {
			break
		}
	}
	return n.nsPrefix + short, "wv" + short
}

// setup creates the Pod's namespace with addr on its eth0 and a default route via the bridge.
func (n *podNetwork) setup(uid types.UID, addr netip.Addr) (string, error) {
	netns, hostVeth := n.names(uid)
	// left over from a kubelet-sim that was killed: start clean
	host.RemoveNamespace(netns)
	peer := hostVeth + "p"
	bits := fmt.Sprint(n.subnet.Bits())
	steps := [][]string{
		{"netns", "add", netns},
		{"link", "add", hostVeth, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", netns},
		{"link", "set", hostVeth, "master", n.bridge},
		{"link", "set", hostVeth, "up"},
		{"-n", netns, "link", "set", "lo", "up"},
		{"-n", netns, "link", "set", peer, "name", "eth0"},
		{"-n", netns, "addr", "add", addr.String() + "/" + bits, "dev", "eth0"},
		{"-n", netns, "link", "set", "eth0", "up"},
		{"-n", netns, "route", "add", "default", "via", n.gateway.String()},
	}
	for _, args := range steps {
		if _, err := host.IP(args...); err != nil {
			n.teardown(uid)
			return "", err
		}
	}
	return netns, nil
}

// teardown kills anything left in the Pod's namespace and deletes it with its veth pair.
func (n *podNetwork) teardown(uid types.UID) {
	netns, hostVeth := n.names(uid)
	host.RemoveNamespace(netns)
	// the host end goes with its peer; this only matters if the peer never moved
	if _, err := os.Stat("/sys/class/net/" + hostVeth); err == nil {
		_, _ = host.IP("link", "del", hostVeth)
	}
}
