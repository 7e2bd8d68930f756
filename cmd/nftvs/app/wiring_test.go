package app

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/metrics"
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
		{[]string{"--detect-local-mode=NodeCIDR", "--cluster-cidr=10.244.0.0/16"}, []string{"10.244.1.0/24", "10.244.2.0/24", "fd01:0:0:1::/64"},
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{PodCIDRs: prefixes("10.244.1.0/24", "fd01:0:0:1::/64")}}},
		{[]string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"}, nil,
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{Interface: "cbr0"}}},
		{[]string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"}, nil,
			nft.Config{MasqueradeMark: 1 << 14, DropInvalid: true, LocalTraffic: nft.LocalTraffic{Interface: "veth*"}}},
	}
	for _, c := range cases {
		cfg := mustParse(t, c.args...)
		got, err := cfg.nftConfig(c.podCIDRs)
		if err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		if got.MasqueradeMark != c.want.MasqueradeMark || got.MasqueradeAll != c.want.MasqueradeAll || got.DropInvalid != c.want.DropInvalid ||
			!slices.Equal(got.ExcludeCIDRs, c.want.ExcludeCIDRs) || !slices.Equal(got.LocalTraffic.PodCIDRs, c.want.LocalTraffic.PodCIDRs) ||
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
	p := cfg.proxierConfig("node-a", true, false)
	if p.Node.Name != "node-a" || p.Scheduler != "lc" || p.SyncPeriod != 45*time.Second || p.MinSyncPeriod != 2*time.Second ||
		p.DrainTimeout != time.Minute || !p.IPv4 || p.IPv6 {
		t.Errorf("%+v", p)
	}
}

// fakeNode is a proxier programming in-memory kernel adapters, wired as
// the command wires the real ones.
type fakeNode struct {
	p       *proxier.Proxier
	ipvs    *ipvs.Fake
	ct      *conntrack.Fake
	metrics *metrics.Metrics
}

func newFakeNode(t *testing.T, args ...string) *fakeNode {
	t.Helper()
	cfg := mustParse(t, args...)
	nftCfg, err := cfg.nftConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	table, _, err := nft.NewFake(nftCfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNode{ipvs: ipvs.NewFake(), ct: conntrack.NewFake(), metrics: metrics.New([]v1.IPFamily{v1.IPv4Protocol})}
	k, err := proxierKernel(cfg, ipvs.NewReconciler(f.ipvs, nil), ipvs.NewFakeAddresses(), table, f.metrics,
		func() (conntrack.Interface, error) { return f.ct, nil })
	if err != nil {
		t.Fatal(err)
	}
	pcfg := cfg.proxierConfig("node-a", true, false)
	pcfg.Node.IPs = addrs("192.168.0.10")
	pcfg.NodePortAddresses = func() ([]netip.Addr, error) { return addrs("192.168.0.10"), nil }
	f.p = proxier.New(pcfg, k)
	f.p.SetSynced()
	return f
}

func (f *fakeNode) sync(t *testing.T) proxier.SyncResult {
	t.Helper()
	res, err := f.p.Sync(false)
	f.metrics.ObserveSync(res, err, time.Now())
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}

func webService() *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeNodePort, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, NodePort: 30080, Protocol: v1.ProtocolTCP}},
		},
	}
}

func webSlice(ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To("node-b"),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}})
	}
	return s
}

// With --conntrack-cleaner (the default), a sync that removes a real
// server cleans its flows once: the Stale names the removed endpoint and
// every frontend of its virtual server; the work shows in the metrics.
func TestConntrackCleanerWiring(t *testing.T) {
	f := newFakeNode(t)
	f.ct.AddFlows(
		conntrack.Flow{Protocol: conntrack.ProtocolTCP, OrigSrc: netip.MustParseAddrPort("10.0.0.1:40000"),
			OrigDst: netip.MustParseAddrPort("10.96.0.10:80"), ReplySrc: netip.MustParseAddrPort("10.244.2.1:8080")},
		conntrack.Flow{Protocol: conntrack.ProtocolTCP, OrigSrc: netip.MustParseAddrPort("10.0.0.1:40001"),
			OrigDst: netip.MustParseAddrPort("192.168.0.10:30080"), ReplySrc: netip.MustParseAddrPort("10.244.2.1:8080")},
		conntrack.Flow{Protocol: conntrack.ProtocolTCP, OrigSrc: netip.MustParseAddrPort("10.0.0.1:40002"),
			OrigDst: netip.MustParseAddrPort("10.96.0.10:80"), ReplySrc: netip.MustParseAddrPort("10.244.2.2:8080")},
	)
	name := types.NamespacedName{Namespace: "ns", Name: "web"}
	f.p.OnServiceUpdate(name, webService())
	f.p.OnEndpointSliceUpdate("ns", "web-1", webSlice("10.244.2.1", "10.244.2.2"), "web")
	f.sync(t)
	if len(f.ct.Calls()) != 0 {
		t.Fatalf("cleaner called with nothing removed: %v", f.ct.Calls())
	}

	f.p.OnEndpointSliceUpdate("ns", "web-1", webSlice("10.244.2.2"), "web")
	res := f.sync(t)
	calls := f.ct.Calls()
	if len(calls) != 1 {
		t.Fatalf("cleaner called %d times, want once per sync", len(calls))
	}
	var frontends []string
	for _, s := range calls[0] {
		if s.Protocol != conntrack.ProtocolTCP || s.Endpoint != netip.MustParseAddrPort("10.244.2.1:8080") {
			t.Errorf("stale %v", s)
		}
		for _, fe := range s.Frontends {
			frontends = append(frontends, fe.String())
		}
	}
	slices.Sort(frontends)
	if !slices.Equal(frontends, []string{"10.96.0.10:80", "192.168.0.10:30080"}) {
		t.Errorf("frontends %v, want the ClusterIP and the node port", frontends)
	}
	if len(res.Removed) != 2 || res.Conntrack.Deleted != 2 || len(f.ct.Flows()) != 1 {
		t.Errorf("removed %v, deleted %d, flows left %v", res.Removed, res.Conntrack.Deleted, f.ct.Flows())
	}
	if got := value(t, f.metrics, "kubeproxy_conntrack_reconciler_deleted_entries_total", "IPv4"); got != 2 {
		t.Errorf("kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=IPv4} = %v, want 2", got)
	}
	if got := value(t, f.metrics, "nftvs_ipvs_real_servers_removed_total", ""); got != 2 {
		t.Errorf("nftvs_ipvs_real_servers_removed_total = %v, want 2", got)
	}
	if got := value(t, f.metrics, "nftvs_ipvs_netlink_writes_total", "delete_real_server"); got != 2 {
		t.Errorf("nftvs_ipvs_netlink_writes_total{op=delete_real_server} = %v, want 2", got)
	}
}

func TestConntrackCleanerDisabled(t *testing.T) {
	f := newFakeNode(t, "--conntrack-cleaner=false")
	name := types.NamespacedName{Namespace: "ns", Name: "web"}
	f.p.OnServiceUpdate(name, webService())
	f.p.OnEndpointSliceUpdate("ns", "web-1", webSlice("10.244.2.1", "10.244.2.2"), "web")
	f.sync(t)
	f.p.OnEndpointSliceUpdate("ns", "web-1", webSlice("10.244.2.2"), "web")
	res := f.sync(t)
	if len(f.ct.Calls()) != 0 || res.Conntrack.Walks != 0 {
		t.Errorf("cleaner used with --conntrack-cleaner=false: %v", f.ct.Calls())
	}
	if len(res.Removed) != 2 {
		t.Errorf("removed %v", res.Removed)
	}
	_, err := proxierKernel(mustParse(t), nil, nil, nil, nil, func() (conntrack.Interface, error) { return nil, errors.New("no netlink") })
	if err == nil {
		t.Error("a cleaner that cannot start is not an error")
	}
}
