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

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

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
	node := &v1.Node{Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.10"}}}}
	res, err := cfg.Resolve(config.NodeFacts{Name: "node-a", Node: node})
	if err != nil {
		t.Fatal(err)
	}
	table, _, err := nft.NewFake(res.NFT)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNode{ipvs: ipvs.NewFake(), ct: conntrack.NewFake(), metrics: metrics.New([]v1.IPFamily{v1.IPv4Protocol})}
	k, err := newDataplane(cfg, ipvs.NewReconciler(f.ipvs, nil), ipvs.NewFakeAddresses(), table, f.metrics,
		func() (conntrack.Interface, error) { return f.ct, nil })
	if err != nil {
		t.Fatal(err)
	}
	f.p = proxier.New(res.Proxier(config.Runtime{HostAddresses: func() ([]config.InterfaceAddress, error) {
		return []config.InterfaceAddress{{Link: "eth0", Addr: netip.MustParseAddr("192.168.0.10")}}, nil
	}}), k)
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
	// The clean runs after the sync, on its own (proxier/cleanqueue.go):
	// wait for its metric, observed once the clean returned.
	deleted := func() float64 {
		return value(t, f.metrics, "kubeproxy_conntrack_reconciler_deleted_entries_total", "IPv4")
	}
	for deadline := time.Now().Add(10 * time.Second); deleted() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	calls := f.ct.Calls()
	if len(calls) != 1 {
		t.Fatalf("cleaner called %d times within 10 s, want once per sync", len(calls))
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
	if len(res.Removed) != 2 || len(f.ct.Flows()) != 1 {
		t.Errorf("removed %v, flows left %v", res.Removed, f.ct.Flows())
	}
	if got := deleted(); got != 2 {
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
	time.Sleep(100 * time.Millisecond) // a clean would run after the sync
	if len(f.ct.Calls()) != 0 {
		t.Errorf("cleaner used with --conntrack-cleaner=false: %v", f.ct.Calls())
	}
	if len(res.Removed) != 2 {
		t.Errorf("removed %v", res.Removed)
	}
	_, err := newDataplane(mustParse(t), nil, nil, nil, nil, func() (conntrack.Interface, error) { return nil, errors.New("no netlink") })
	if err == nil {
		t.Error("a cleaner that cannot start is not an error")
	}
}
