package explain

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/internal/k8stest"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

// fakeKernel reads the in-memory kernels the proxier programmed.
type fakeKernel struct {
	ipvs  *ipvs.Fake
	addrs *ipvs.FakeAddresses
	nft   *nft.Fake
	flows []conntrack.Flow
}

func (f *fakeKernel) VirtualServers() ([]ipvs.VirtualServer, error) {
	return f.ipvs.GetVirtualServers()
}
func (f *fakeKernel) RealServers(k ipvs.VSKey) ([]ipvs.RealServer, map[netip.AddrPort]ipvs.Connections, error) {
	rs, err := f.ipvs.GetRealServers(k)
	if err != nil {
		return nil, nil, err
	}
	c, err := f.ipvs.GetConnections(k)
	return rs, c, err
}
func (f *fakeKernel) DummyAddresses() ([]netip.Addr, error) {
	return f.addrs.ListAddresses(ipvs.DummyName)
}
func (f *fakeKernel) Elements(want []nft.Element) ([]nft.ElementState, error) {
	have := map[nft.Element]string{}
	for _, e := range f.nft.Elements() {
		k := e.Element
		k.Mark = 0
		have[k] = e.Comment
	}
	var out []nft.ElementState
	for _, e := range want {
		k := e
		k.Mark = 0
		c, ok := have[k]
		out = append(out, nft.ElementState{Element: e, Checked: e.Set != nft.LoadBalancerSourceRanges, InKernel: ok, Comment: c})
	}
	return out, nil
}
func (f *fakeKernel) Conntrack(fe []netip.AddrPort) ([]conntrack.Flow, error) { return f.flows, nil }
func (f *fakeKernel) HealthCheck(port int) (string, error) {
	return `200 OK from 127.0.0.1: {"localEndpoints": 1}`, nil
}

func ptr[T any](v T) *T { return &v }

// node is a proxier over in-memory kernels with one Service synced:
// e2e/web, ClusterIP + node port + ETP Local, scheduler sh by
// annotation, a refused external IP, and endpoints in every state.
func node(t *testing.T) (*proxier.Proxier, *fakeKernel) {
	t.Helper()
	table, nf, err := nft.NewFake(nft.Config{})
	if err != nil {
		t.Fatal(err)
	}
	fk := &fakeKernel{ipvs: ipvs.NewFake(), addrs: ipvs.NewFakeAddresses(), nft: nf,
		flows: []conntrack.Flow{{Protocol: ipvs.TCP, OrigSrc: netip.MustParseAddrPort("10.244.1.99:40000"),
			OrigDst: netip.MustParseAddrPort("10.96.0.10:80"), ReplySrc: netip.MustParseAddrPort("10.244.1.5:8080")}}}
	p := proxier.New(proxier.Config{PlanConfig: proxier.PlanConfig{
		Node:      proxier.Node{Name: "node-a", NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.10")}},
		Scheduler: "rr", IPv4: true,
	}}, proxier.Dataplane{IPVS: ipvs.NewReconciler(fk.ipvs, nil), Addresses: fk.addrs, NFT: table})
	p.SetSynced()
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: "web", Annotations: map[string]string{proxier.AnnotationScheduler: "sh"}},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	k8stest.LoadBalancer(30080)(svc)
	k8stest.ETPLocal(30099)(svc)
	k8stest.ExternalIPs("127.0.0.1")(svc)
	n := types.NamespacedName{Namespace: "e2e", Name: "web"}
	p.OnServiceUpdate(n, svc)
	yes, no := ptr(true), ptr(false)
	sl := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "e2e", Name: "web-1"},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(v1.ProtocolTCP)}},
		Endpoints: []discovery.Endpoint{
			{Addresses: []string{"10.244.1.5"}, NodeName: ptr("node-a"), Conditions: discovery.EndpointConditions{Ready: yes, Serving: yes}},
			{Addresses: []string{"10.244.2.5"}, NodeName: ptr("node-b"), Conditions: discovery.EndpointConditions{Ready: yes, Serving: yes}},
			{Addresses: []string{"10.244.1.6"}, NodeName: ptr("node-a"), Conditions: discovery.EndpointConditions{Ready: no, Serving: no}},
		},
	}
	p.OnEndpointSliceUpdate("e2e", "web-1", sl, "web")
	if _, err := p.Sync(false); err != nil {
		t.Fatal(err)
	}
	k := ipvs.VSKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: ipvs.TCP, Port: 80}
	if err := fk.ipvs.SetConnections(k, netip.MustParseAddrPort("10.244.1.5:8080"), ipvs.Connections{Active: 3, Inactive: 2}); err != nil {
		t.Fatal(err)
	}
	return p, fk
}

func serve(t *testing.T, p *proxier.Proxier) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "explain.sock")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := Serve(ctx, path, Handler(p)); err != nil {
		t.Fatal(err)
	}
	return path
}

func run(t *testing.T, fk *fakeKernel, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := Run(context.Background(), args, &out, func() (Kernel, error) { return fk, nil }); err != nil {
		t.Fatalf("explain %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

func TestExplainService(t *testing.T) {
	p, fk := node(t)
	sock := serve(t, p)
	text := run(t, fk, "--socket", sock, "e2e/web")
	t.Log("\n" + text)
	for _, want := range []string{
		"Service e2e/web on node node-a",
		"RefusedAddress", "127.0.0.1 is a loopback address",
		"Port e2e/web:http",
		"TCP  10.96.0.10:80", "in IPVS: sh",
		"-> 10.244.1.5:8080", "kernel weight 1, 3 active, 2 inactive",
		"TCP  192.168.0.10:30080",
		"FWM  ",
		"kube-ipvs0: 10.96.0.10",
		"cluster-ips", `comment "e2e/web:http/tcp"`,
		"health check node port 30099: 1 local endpoints; answers 200 OK",
		"10.244.1.6", "not ready",
		"10.244.2.5", "on node node-b: internal traffic only",
		"Conntrack entries to its frontends: 1",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("explain lacks %q", want)
		}
	}

	var s Service
	if err := json.Unmarshal([]byte(run(t, fk, "--socket", sock, "-o", "json", "e2e/web")), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Ports) != 1 || len(s.Ports[0].VirtualServers) < 3 {
		t.Fatalf("json: %+v", s)
	}
	for _, vs := range s.Ports[0].VirtualServers {
		if vs.Kernel == nil || !vs.Kernel.Present || vs.Scheduler != "sh" || vs.Kernel.Scheduler != "sh" {
			t.Errorf("%s: %+v kernel %+v", vs.Frontend, vs, vs.Kernel)
		}
	}
	for _, e := range s.Ports[0].Elements {
		if e.Set != string(nft.LoadBalancerSourceRanges) && (e.InKernel == nil || !*e.InKernel) {
			t.Errorf("element %s %s not found in the kernel", e.Set, e.Element)
		}
	}
}

// TestExplainShowsWhatIsMissing: a virtual server deleted behind nftvs's
// back, and an address taken off kube-ipvs0, are called missing.
func TestExplainShowsWhatIsMissing(t *testing.T) {
	p, fk := node(t)
	sock := serve(t, p)
	if err := fk.ipvs.DeleteVirtualServer(ipvs.VSKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: ipvs.TCP, Port: 80}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := fk.addrs.SyncAddresses(ipvs.DummyName, nil); err != nil {
		t.Fatal(err)
	}
	text := run(t, fk, "--socket", sock, "e2e/web")
	for _, want := range []string{"TCP  10.96.0.10:80\tsh\tMISSING from IPVS", "kube-ipvs0: 10.96.0.10 (MISSING)"} {
		if !strings.Contains(strings.Join(strings.Fields(text), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("explain lacks %q:\n%s", want, text)
		}
	}
}

func TestExplainFrontend(t *testing.T) {
	p, fk := node(t)
	sock := serve(t, p)
	if text := run(t, fk, "--socket", sock, "10.96.0.10:80"); !strings.HasPrefix(text, "TCP  10.96.0.10:80 is e2e/web:http") {
		t.Errorf("by address:\n%s", text)
	}
	if text := run(t, fk, "--socket", sock, "192.168.0.10:30080/tcp"); !strings.Contains(text, "is e2e/web:http") {
		t.Errorf("by node port:\n%s", text)
	}
	if text := run(t, fk, "--socket", sock, "10.96.0.10:81"); !strings.Contains(text, "no Service's virtual server") {
		t.Errorf("a port nobody has:\n%s", text)
	}
	if text := run(t, fk, "--socket", sock, "e2e/nothing"); !strings.Contains(text, "not known to nftvs") {
		t.Errorf("an unknown Service:\n%s", text)
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"--socket", sock, "nonsense"}, &out, nil); err == nil {
		t.Error("no error for a target that is neither")
	}
}
