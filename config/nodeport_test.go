package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestNodePortAddressSelection(t *testing.T) {
	host := []InterfaceAddress{
		{"lo", netip.MustParseAddr("127.0.0.1")},
		{"lo", netip.IPv6Loopback()},
		{"eth0", netip.MustParseAddr("192.168.0.10")},
		{"eth0", netip.MustParseAddr("2001:db8::10")},
		{"eth0", netip.MustParseAddr("fe80::1")},
		{"eth1", netip.MustParseAddr("10.0.0.5")},
		{"eth1", netip.MustParseAddr("169.254.3.4")},
		{"kube-ipvs0", netip.MustParseAddr("10.96.0.1")},
		{"kube-ipvs0", netip.MustParseAddr("192.168.0.200")},
		{"kube-ipvs0", netip.MustParseAddr("fd00:96::1")},
		{"cni0", netip.MustParseAddr("10.244.1.1")},
		{"eth2", netip.MustParseAddr("::ffff:10.0.0.6")},
		{"eth0", netip.MustParseAddr("192.168.0.10")}, // listed twice
	}
	cases := []struct {
		name  string
		sel   NodePortAddresses
		want  string
		match bool
	}{
		{"every address but kube-ipvs0's, loopback and IPv6 link-local",
			NodePortAddresses{Dummy: "kube-ipvs0", IPv4: true, IPv6: true},
			"10.0.0.5 10.0.0.6 10.244.1.1 169.254.3.4 192.168.0.10 2001:db8::10", true},
		{"IPv4 only",
			NodePortAddresses{Dummy: "kube-ipvs0", IPv4: true},
			"10.0.0.5 10.0.0.6 10.244.1.1 169.254.3.4 192.168.0.10", true},
		{"--nodeport-addresses CIDRs",
			NodePortAddresses{Dummy: "kube-ipvs0", CIDRs: prefixes("192.168.0.0/24", "2001:db8::/64"), IPv4: true, IPv6: true},
			"192.168.0.10 2001:db8::10", false},
		{"a CIDR covering kube-ipvs0's and loopback addresses still leaves them out",
			NodePortAddresses{Dummy: "kube-ipvs0", CIDRs: prefixes("0.0.0.0/0"), IPv4: true, IPv6: true},
			"10.0.0.5 10.0.0.6 10.244.1.1 169.254.3.4 192.168.0.10", false},
		{"primary: the node IPs",
			NodePortAddresses{Dummy: "kube-ipvs0", CIDRs: primaryNodePortCIDRs(addrs("192.168.0.10", "2001:db8::10")), IPv4: true, IPv6: true},
			"192.168.0.10 2001:db8::10", false},
		{"a CIDR matching nothing",
			NodePortAddresses{Dummy: "kube-ipvs0", CIDRs: prefixes("172.16.0.0/12"), IPv4: true, IPv6: true},
			"", false},
	}
	for _, c := range cases {
		got := c.sel.Select(host)
		var s []string
		for _, a := range got {
			s = append(s, a.String())
		}
		if strings.Join(s, " ") != c.want || c.sel.MatchAll() != c.match {
			t.Errorf("%s: %q (match all %v), want %q (%v)", c.name, strings.Join(s, " "), c.sel.MatchAll(), c.want, c.match)
		}
	}
}

// "primary" with an unknown node IP (loopback) means every address, as in
// kube-proxy.
func TestPrimaryNodePortCIDRs(t *testing.T) {
	if got := primaryNodePortCIDRs(addrs("127.0.0.1", "::1")); len(got) != 0 {
		t.Errorf("loopback node IPs give %v, want none (all addresses)", got)
	}
	if got := primaryNodePortCIDRs(addrs("10.0.0.1", "::1")); !slices.Equal(got, prefixes("10.0.0.1/32")) {
		t.Errorf("got %v", got)
	}
}

// The node's own addresses: what an external or load-balancer IP must
// not be. Loopback, link-local (pods' veths) and unset ones are left out.
func TestLocalAddresses(t *testing.T) {
	got := LocalAddresses(addrs("127.0.0.1", "::1", "169.254.1.1", "fe80::1", "192.168.0.10", "::ffff:10.0.0.5", "2001:db8::10"))
	if want := addrs("192.168.0.10", "10.0.0.5", "2001:db8::10"); !slices.Equal(got, want) {
		t.Errorf("LocalAddresses = %v, want %v", got, want)
	}
	np := NodePortAddresses{Dummy: "kube-ipvs0", IPv4: true, IPv6: true}
	if got, want := np.SelectAddrs(addrs("127.0.0.1", "192.168.0.10", "fe80::1", "2001:db8::10")), addrs("192.168.0.10", "2001:db8::10"); !slices.Equal(got, want) {
		t.Errorf("SelectAddrs = %v, want %v", got, want)
	}
}
