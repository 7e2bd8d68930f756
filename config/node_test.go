package config

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestNodeHostIPs(t *testing.T) {
	node := func(as ...v1.NodeAddress) *v1.Node {
		return &v1.Node{Status: v1.NodeStatus{Addresses: as}}
	}
	in := func(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeInternalIP, Address: a} }
	ex := func(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeExternalIP, Address: a} }
	host := v1.NodeAddress{Type: v1.NodeHostName, Address: "node-a"}
	cases := []struct {
		name string
		node *v1.Node
		want []netip.Addr
	}{
		{"nil", nil, nil},
		{"none", node(host), nil},
		{"internal first", node(ex("203.0.113.1"), in("10.0.0.1")), addrs("10.0.0.1")},
		{"external when no internal", node(host, ex("203.0.113.1")), addrs("203.0.113.1")},
		{"dual-stack", node(in("10.0.0.1"), in("10.0.0.2"), in("fd00::1")), addrs("10.0.0.1", "fd00::1")},
		{"IPv6 primary", node(in("fd00::1"), ex("203.0.113.1")), addrs("fd00::1", "203.0.113.1")},
		{"leading zeros, as kube-proxy parses", node(in("010.000.000.001")), addrs("10.0.0.1")},
		{"garbage skipped", node(in("not-an-ip"), in("10.0.0.3")), addrs("10.0.0.3")},
	}
	for _, c := range cases {
		if got := NodeHostIPs(c.node); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// kube-proxy's detectNodeIPs cases.
func TestDetectNodeIPs(t *testing.T) {
	cases := []struct {
		name    string
		raw     []netip.Addr
		bind    string
		primary bool // IPv6
		v4, v6  string
	}{
		{"nothing known", nil, "0.0.0.0", false, "127.0.0.1", "::1"},
		{"IPv4 node", addrs("10.0.0.1"), "0.0.0.0", false, "10.0.0.1", "::1"},
		{"IPv6 node", addrs("fd00::1"), "::", true, "127.0.0.1", "fd00::1"},
		{"dual-stack", addrs("10.0.0.1", "fd00::1"), "0.0.0.0", false, "10.0.0.1", "fd00::1"},
		{"bind address overrides the primary IP", addrs("10.0.0.1"), "10.0.0.9", false, "10.0.0.9", "::1"},
		{"bind address changes the primary family", addrs("10.0.0.1"), "fd00::9", true, "10.0.0.1", "fd00::9"},
	}
	for _, c := range cases {
		p, v4, v6 := detectNodeIPs(c.raw, bindAddr(c.bind))
		if p != c.primary || v4.String() != c.v4 || v6.String() != c.v6 {
			t.Errorf("%s: primary IPv6 %v, %v %v; want %v %s %s", c.name, p, v4, v6, c.primary, c.v4, c.v6)
		}
	}
}

// bindAddr is a --bind-address as Addresses holds it.
func bindAddr(s string) netip.Addr {
	a := netip.MustParseAddr(s)
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}
