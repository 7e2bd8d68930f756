package config

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

func TestNFTConfigFromFlags(t *testing.T) {
	cases := []struct {
		args     []string
		podCIDRs []string
		want     nft.Config
	}{
		{nil, nil, nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true}},
		{[]string{"--masquerade-all", "--iptables-masquerade-bit=3", "--conntrack-tcp-be-liberal", "--ipvs-exclude-cidrs=10.1.2.3/16,fd00::/8"}, nil,
			nft.Config{MasqueradeMark: 1 << 3, MasqueradeAll: true, ExcludeCIDRs: prefixes("10.1.0.0/16", "fd00::/8")}},
		{[]string{"--cluster-cidr=10.244.0.0/16,fd01::/48"}, nil,
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{PodCIDRs: prefixes("10.244.0.0/16", "fd01::/48")}}},
		// ClusterCIDR: every pod is spared masquerade to ClusterIPs, only
		// this node's are internal to externalTrafficPolicy Local.
		{[]string{"--cluster-cidr=10.244.0.0/16,fd01::/48"}, []string{"10.244.1.0/24", "fd01:0:0:1::/64"},
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{PodCIDRs: prefixes("10.244.0.0/16", "fd01::/48"), NodePodCIDRs: prefixes("10.244.1.0/24", "fd01:0:0:1::/64")}}},
		// A podCIDR that does not parse: no short-cut at all.
		{[]string{"--cluster-cidr=10.244.0.0/16"}, []string{"10.244.1.0/24", "10.244.999.0/24"},
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{PodCIDRs: prefixes("10.244.0.0/16")}}},
		{[]string{"--detect-local-mode=NodeCIDR", "--cluster-cidr=10.244.0.0/16"}, []string{"10.244.1.0/24", "10.244.2.0/24", "fd01:0:0:1::/64"},
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{PodCIDRs: prefixes("10.244.1.0/24", "fd01:0:0:1::/64"), NodePodCIDRs: prefixes("10.244.1.0/24", "fd01:0:0:1::/64")}}},
		{[]string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"}, nil,
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{Interface: "cbr0"}}},
		{[]string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"}, nil,
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{Interface: "veth*"}}},
	}
	for _, c := range cases {
		cfg := mustParse(t, c.args...)
		res, err := cfg.Resolve(NodeFacts{Node: &v1.Node{Spec: v1.NodeSpec{PodCIDRs: c.podCIDRs}}, IPv6: true})
		if err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		got := res.NFT
		if got.MasqueradeMark != c.want.MasqueradeMark || got.MasqueradeAll != c.want.MasqueradeAll || got.DropInvalid != c.want.DropInvalid ||
			!slices.Equal(got.ExcludeCIDRs, c.want.ExcludeCIDRs) || !slices.Equal(got.LocalTraffic.PodCIDRs, c.want.LocalTraffic.PodCIDRs) ||
			!slices.Equal(got.LocalTraffic.NodePodCIDRs, c.want.LocalTraffic.NodePodCIDRs) ||
			got.LocalTraffic.Interface != c.want.LocalTraffic.Interface {
			t.Errorf("%q: %+v, want %+v", c.args, got, c.want)
		}
		// The table accepts it.
		if _, _, err := nft.NewFake(got); err != nil {
			t.Errorf("%q: nft refuses %+v: %v", c.args, got, err)
		}
	}
}

func TestProxierConfigFromFlags(t *testing.T) {
	cfg := mustParse(t, "--ipvs-scheduler=lc", "--ipvs-sync-period=45s", "--ipvs-min-sync-period=2s", "--ipvs-graceful-termination-period=1m")
	p := resolve(t, cfg, NodeFacts{Name: "node-a"}).Proxier(Runtime{})
	if p.Node.Name != "node-a" || p.Scheduler != "lc" || p.SyncPeriod != 45*time.Second || p.MinSyncPeriod != 2*time.Second ||
		p.DrainTimeout != time.Minute || !p.IPv4 || p.IPv6 {
		t.Errorf("%+v", p)
	}
}

// The cluster uses IPv6 when the node, --bind-address, --cluster-cidr or
// a podCIDR is IPv6: then IPv6 forwarding is checked.
func TestUsesIPv6(t *testing.T) {
	v4 := []netip.Addr{netip.MustParseAddr("192.168.0.10")}
	dual := append(v4, netip.MustParseAddr("fd00::10"))
	for _, c := range []struct {
		name     string
		args     []string
		nodeIPs  []netip.Addr
		podCIDRs []string
		want     bool
	}{
		{"IPv4 node, no CIDRs", nil, v4, nil, false},
		{"IPv4 node and cluster CIDR", []string{"--cluster-cidr=10.244.0.0/16"}, v4, []string{"10.244.1.0/24"}, false},
		{"unknown node", nil, nil, nil, false},
		{"dual-stack node", nil, dual, nil, true},
		{"IPv6 cluster CIDR", []string{"--cluster-cidr=10.244.0.0/16,fd00:244::/56"}, v4, nil, true},
		{"IPv6 podCIDR", nil, v4, []string{"10.244.1.0/24", "fd00:244:0:1::/64"}, true},
		{"IPv6 bind address", []string{"--bind-address=fd00::10"}, nil, nil, true},
	} {
		if got := mustParse(t, c.args...).UsesIPv6(c.nodeIPs, c.podCIDRs); got != c.want {
			t.Errorf("%s: usesIPv6 = %v, want %v", c.name, got, c.want)
		}
	}
}

// The proxier starts with the node's IPs as every Node update gives them
// (proxier.NodeIPs): every InternalIP and ExternalIP, and a specific
// --bind-address. Before, the start had the primary IP of each family
// only, with --bind-address in place of one, and the first Node update
// changed the set.
func TestResolveNodeIPsAsOnUpdate(t *testing.T) {
	n := &v1.Node{Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: "10.0.0.1"}, {Type: v1.NodeInternalIP, Address: "10.0.0.2"},
		{Type: v1.NodeExternalIP, Address: "203.0.113.1"}, {Type: v1.NodeInternalIP, Address: "fd00::1"},
	}}}
	cfg := mustParse(t, "--bind-address=10.0.0.9")
	got := resolve(t, cfg, NodeFacts{Name: "n", Node: n, IPv6: true}).Proxier(Runtime{})
	want := proxier.NodeIPs(n, netip.MustParseAddr("10.0.0.9"))
	if !slices.Equal(got.Node.IPs, want) || got.BindAddress != netip.MustParseAddr("10.0.0.9") {
		t.Errorf("node IPs %v (bind %v), want %v", got.Node.IPs, got.BindAddress, want)
	}
	if len(want) != 5 {
		t.Errorf("proxier.NodeIPs = %v, want the 4 node addresses and the bind address", want)
	}
}
