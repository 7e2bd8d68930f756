package proxier

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNodeIPs(t *testing.T) {
	node := func(as ...v1.NodeAddress) *v1.Node {
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: v1.NodeStatus{Addresses: as}}
	}
	in := func(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeInternalIP, Address: a} }
	ex := func(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeExternalIP, Address: a} }
	host := v1.NodeAddress{Type: v1.NodeHostName, Address: "node-a"}
	ips := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	for _, c := range []struct {
		name string
		node *v1.Node
		bind string
		want []netip.Addr
	}{
		{"nil", nil, "", nil},
		{"no IP", node(host), "", nil},
		{"every internal and external IP", node(in("10.0.0.1"), in("10.0.0.2"), ex("203.0.113.1"), in("fd00::1")), "", ips("10.0.0.1", "10.0.0.2", "203.0.113.1", "fd00::1")},
		{"bind address added", node(in("10.0.0.1")), "10.0.0.9", ips("10.0.0.1", "10.0.0.9")},
		{"bind address once", node(in("10.0.0.1")), "10.0.0.1", ips("10.0.0.1")},
		{"bind address alone", nil, "fd00::9", ips("fd00::9")},
		{"loopback left out", node(in("127.0.0.1"), in("::1")), "", nil},
		{"leading zeros, as kube-proxy parses", node(in("010.000.000.001")), "", ips("10.0.0.1")},
		{"mapped IPv4 unmapped", node(in("::ffff:10.0.0.1")), "", ips("10.0.0.1")},
		{"garbage skipped", node(in("not-an-ip"), in("10.0.0.3")), "", ips("10.0.0.3")},
	} {
		var bind netip.Addr
		if c.bind != "" {
			bind = netip.MustParseAddr(c.bind)
		}
		if got := NodeIPs(c.node, bind); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// A Node update gives the proxier the same IPs as the start did
// (NodeIPs both times): an update that changes nothing replans nothing.
func TestNodeUpdateKeepsTheStartIPs(t *testing.T) {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: "10.0.0.1"}, {Type: v1.NodeExternalIP, Address: "203.0.113.1"}, {Type: v1.NodeInternalIP, Address: "fd00::1"},
	}}}
	bind := netip.MustParseAddr("10.0.0.9")
	cfg := Config{PlanConfig: PlanConfig{Node: Node{Name: "n", IPs: NodeIPs(n, bind)}}, BindAddress: bind}
	p := New(cfg, Dataplane{})
	p.nodeHandler(nil, n, false)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nodeChanged {
		t.Errorf("the Node as at start changed the node's IPs: %v, start %v", p.node.IPs, cfg.Node.IPs)
	}
}
