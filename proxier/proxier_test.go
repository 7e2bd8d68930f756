package proxier

import (
	"context"
	"fmt"
	"net/netip"
	goruntime "runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nftvs/nftvs/internal/kubeclient/clientset"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// fakeNode is a proxier over in-memory kernels, with a settable clock.
type fakeNode struct {
	p     *Proxier
	ipvs  *counting
	kern  *ipvs.Fake
	addrs *ipvs.FakeAddresses
	nft   *nft.Fake
	table *nft.Table
	clock *clocktesting.FakeClock
}

func newFakeNode(t testing.TB) *fakeNode {
	t.Helper()
	return newFakeNodeWith(t, func(c *Config) { c.DrainTimeout = time.Minute })
}

// newFakeNodeWith is newFakeNode with the config changed by tweak.
func newFakeNodeWith(t testing.TB, tweak func(*Config)) *fakeNode {
	t.Helper()
	table, nf, err := nft.NewFake(nft.Config{})
	if err != nil {
		t.Fatal(err)
	}
	kern := ipvs.NewFake()
	counting := newCounting(kern)
	f := &fakeNode{ipvs: counting, kern: kern, addrs: ipvs.NewFakeAddresses(), nft: nf, table: table,
		clock: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	cfg := Config{PlanConfig: *testConfig(), Clock: f.clock}
	tweak(&cfg)
	f.p = New(cfg, Dataplane{IPVS: ipvs.NewReconciler(counting, nil), Addresses: f.addrs, NFT: table})
	f.p.SetSynced()
	return f
}

func (f *fakeNode) addService(svc *v1.Service, slices ...*discovery.EndpointSlice) {
	f.p.OnServiceUpdate(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, svc)
	for _, s := range slices {
		f.p.OnEndpointSliceUpdate(s.Namespace, s.Name, s, svc.Name)
	}
}

func (f *fakeNode) sync(t testing.TB, full bool) SyncResult {
	t.Helper()
	res, err := f.p.Sync(full)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if f.p.cleans != nil {
		// The conntrack clean runs after the sync, on its own: the tests
		// that look at the flows left see it done.
		f.p.cleans.flush()
	}
	return res
}

// restarted replaces f's proxier with a new one over the same kernels (a
// restarted nftvs: new Reconciler, new nft Table), told no object yet.
func (f *fakeNode) restarted(t testing.TB) {
	t.Helper()
	table, err := f.nft.NewTable(nft.Config{})
	if err != nil {
		t.Fatal(err)
	}
	f.table = table
	f.p = New(f.p.cfg, Dataplane{IPVS: ipvs.NewReconciler(f.ipvs, nil), Addresses: f.addrs, NFT: table})
	f.p.SetSynced()
}

func (f *fakeNode) ipvsText() string { return ipvs.Format(f.kern.Services()) }

func (f *fakeNode) addresses(t testing.TB) []netip.Addr {
	t.Helper()
	as, err := f.addrs.ListAddresses(ipvs.DummyName)
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func TestProxierProgramsAllThreeKernels(t *testing.T) {
	f := newFakeNode(t)
	svc := makeService("ns", "web", nodePort(30080))
	f.addService(svc, httpSlice(svc, ready("10.244.1.5", thisNode), ready("10.244.2.5", "node-b")))
	f.sync(t, false)
	got := f.ipvsText()
	for _, want := range []string{"TCP  10.96.0.10:80 rr", "TCP  192.168.0.10:30080 rr", "10.244.1.5:8080", "10.244.2.5:8080"} {
		if !strings.Contains(got, want) {
			t.Errorf("IPVS lacks %q:\n%s", want, got)
		}
	}
	if as := f.addresses(t); len(as) != 1 || as[0] != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("kube-ipvs0 holds %v, want the ClusterIP only", as)
	}
	dump := f.nft.Dump()
	for _, want := range []string{`10.96.0.10 . tcp . 80 comment "ns/web:http/tcp"`, `tcp . 30080 comment "ns/web:http/tcp"`,
		`10.244.1.5 . tcp . 8080 . 10.244.1.5 comment "ns/web:http/tcp"`} {
		if !strings.Contains(dump, want) {
			t.Errorf("nft table lacks %q", want)
		}
	}

	// Deleting the Service removes everything it had.
	f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: "web"}, nil)
	f.sync(t, false)
	if s := f.kern.Services(); len(s) != 0 {
		t.Errorf("virtual servers left: %v", s)
	}
	if as := f.addresses(t); len(as) != 0 {
		t.Errorf("addresses left: %v", as)
	}
	if es := slices.DeleteFunc(f.nft.Elements(), func(e nft.KernelElement) bool { return e.Set == nft.NodePortAddresses }); len(es) != 0 {
		t.Errorf("elements left: %v", es)
	}
}

func TestProxierWaitsForCachesAndSyncsOnlyWhatChanged(t *testing.T) {
	f := newFakeNode(t)
	for i := range 100 {
		svc := makeService("ns", fmt.Sprintf("svc-%d", i), clusterIPs(fmt.Sprintf("10.96.1.%d", i)))
		f.addService(svc, namedSlice(fmt.Sprintf("svc-%d", i), httpSlice(svc, ready(fmt.Sprintf("10.244.2.%d", i), "node-b"))))
	}
	if res := f.sync(t, false); res.ServicesReplanned != 100 {
		t.Fatalf("first sync planned %d Services", res.ServicesReplanned)
	}
	f.ipvs.Reset()
	nftWrites := f.nft.Writes
	// One endpoint of one Service changes.
	svc := makeService("ns", "svc-7", clusterIPs("10.96.1.7"))
	f.p.OnEndpointSliceUpdate("ns", "svc-7", httpSlice(svc, ready("10.244.3.7", "node-b")), "svc-7")
	res := f.sync(t, false)
	if res.ServicesReplanned != 1 {
		t.Fatalf("one endpoint change replanned %d Services", res.ServicesReplanned)
	}
	if w := f.ipvs.Writes(); w.Total() != 2 || w.AddRealServer != 1 || w.DeleteRealServer != 1 || f.ipvs.Reads() != 0 {
		t.Fatalf("IPVS writes %+v, reads %d: want one real server replaced and no dump", w, f.ipvs.Reads())
	}
	if len(res.Removed) != 1 || res.Removed[0].RealServer.Address != netip.MustParseAddr("10.244.2.7") {
		t.Fatalf("removed real servers %v, want 10.244.2.7", res.Removed)
	}
	if f.nft.Writes-nftWrites != 0 {
		t.Fatalf("%d nft writes for an endpoint change of a remote endpoint", f.nft.Writes-nftWrites)
	}
	// Nothing changed: nothing sent.
	f.ipvs.Reset()
	f.sync(t, false)
	if w := f.ipvs.Writes(); w.Total() != 0 {
		t.Fatalf("idle sync wrote %+v", w)
	}
}

func TestProxierProgramsNothingBeforeCachesSync(t *testing.T) {
	f := newFakeNode(t)
	f.p = New(f.p.cfg, f.p.k) // a fresh proxier, caches not synced
	svc := makeService("ns", "web")
	f.addService(svc)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	f.p.Run(ctx, func(SyncResult, error) { t.Error("synced before the caches") })
	if len(f.kern.Services()) != 0 {
		t.Fatal("programmed before caches synced")
	}
}

func TestProxierKeepsGoodServicesBesideBadOnes(t *testing.T) {
	f := newFakeNode(t)
	good := makeService("ns", "good")
	bad := makeService("ns", "bad", clusterIPs("10.96.0.11"), externalIPs("256.1.1.1"), ports(
		v1.ServicePort{Name: "http", Port: 80}, v1.ServicePort{Name: "x", Port: 1, Protocol: "ICMP"}))
	f.addService(good, httpSlice(good, ready("10.244.2.1", "node-b")))
	f.addService(bad)
	f.sync(t, false)
	got := f.ipvsText()
	if !strings.Contains(got, "10.96.0.10:80") || !strings.Contains(got, "10.96.0.11:80") {
		t.Fatalf("good parts not programmed:\n%s", got)
	}
}

func TestProxierFullSyncRepairsDrift(t *testing.T) {
	f := newFakeNode(t)
	svc := makeService("ns", "web")
	f.addService(svc, httpSlice(svc, ready("10.244.2.1", "node-b")))
	f.sync(t, false)
	// Someone deletes the virtual server and adds a stranger.
	_ = f.kern.DeleteVirtualServer(ipvs.VSKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: ipvs.TCP, Port: 80})
	_ = f.kern.AddVirtualServer(ipvs.VirtualServer{VSKey: ipvs.VSKey{Address: netip.MustParseAddr("10.99.0.1"), Protocol: ipvs.TCP, Port: 1}, Scheduler: "rr"})
	// A full sync within the IPVS resync period lists the virtual servers
	// once, no real server, and restores the deleted one at once; the
	// stranger waits for the resync.
	f.ipvs.Reset()
	if res := f.sync(t, true); res.IPVSResync || f.ipvs.Reads() != 1 {
		t.Fatalf("full sync read IPVS %d times before the resync period, want 1 (the virtual servers)", f.ipvs.Reads())
	}
	if got := f.ipvsText(); !strings.Contains(got, "10.96.0.10:80 rr\n  "+w1("10.244.2.1:8080")) {
		t.Fatalf("the deleted virtual server is not back after one full sync:\n%s", got)
	}
	f.clock.Step(DefaultIPVSResyncPeriod)
	if res := f.sync(t, true); !res.IPVSResync {
		t.Fatal("no IPVS resync after the resync period")
	}
	got := f.ipvsText()
	if !strings.Contains(got, "10.96.0.10:80") || strings.Contains(got, "10.99.0.1") {
		t.Fatalf("drift not repaired:\n%s", got)
	}
}

// TestProxierRepairReplansOnlyWhatChanged: the periodic sync (Repair)
// repairs IPVS and kube-ipvs0 drift without replanning unchanged
// Services (a change arriving meanwhile would wait for it), replans what
// changed and what the kernel refused, and every FullReplanPeriod
// replans everything.
func TestProxierRepairReplansOnlyWhatChanged(t *testing.T) {
	f := newFakeNode(t)
	web := makeService("ns", "web")
	f.addService(web, httpSlice(web, ready("10.244.2.1", "node-b")))
	f.addService(makeService("ns", "db", clusterIPs("10.96.0.11")))
	bad := netip.MustParseAddr("10.96.0.66")
	f.kern.Inject = func(op ipvs.Op, key ipvs.VSKey, _ *ipvs.RealServer) error {
		if op == ipvs.OpAddVirtualServer && key.Address == bad {
			return fmt.Errorf("add virtual server %s: %w", key, syscall.EINVAL)
		}
		return nil
	}
	f.addService(makeService("ns", "bad", clusterIPs("10.96.0.66")))
	if res := f.sync(t, false); !res.Full || len(res.Refused) != 1 {
		t.Fatalf("first sync: full %v, refused %v; want a full sync refusing ns/bad", res.Full, res.Refused)
	}
	f.kern.Inject = nil

	// Drift: a virtual server deleted and an address taken off behind
	// nftvs's back.
	_ = f.kern.DeleteVirtualServer(ipvs.VSKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: ipvs.TCP, Port: 80})
	if _, _, err := f.addrs.SyncAddresses(ipvs.DummyName, []netip.Addr{netip.MustParseAddr("10.96.0.11")}); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(30 * time.Second)
	res, err := f.p.Repair()
	if err != nil {
		t.Fatal(err)
	}
	if res.Full || !res.Repair || res.ServicesReplanned != 1 {
		t.Fatalf("repair: full %v, repair %v, replanned %d; want a repair replanning only ns/bad (refused before)", res.Full, res.Repair, res.ServicesReplanned)
	}
	got := f.ipvsText()
	for _, want := range []string{"10.96.0.10:80 rr\n  " + w1("10.244.2.1:8080"), "10.96.0.66:80"} {
		if !strings.Contains(got, want) {
			t.Errorf("after the repair IPVS lacks %q:\n%s", want, got)
		}
	}
	if got := f.addresses(t); !slices.Contains(got, netip.MustParseAddr("10.96.0.10")) {
		t.Errorf("the address taken off kube-ipvs0 is not back: %v", got)
	}

	// Nothing changed, nothing refused: nothing replanned.
	f.clock.Step(30 * time.Second)
	if res, err := f.p.Repair(); err != nil || res.ServicesReplanned != 0 {
		t.Fatalf("repair with nothing changed replanned %d (err %v)", res.ServicesReplanned, err)
	}
	// A change: replanned alone.
	f.p.OnEndpointSliceUpdate("ns", web.Name, httpSlice(web, ready("10.244.2.2", "node-b")), web.Name)
	if res, err := f.p.Repair(); err != nil || res.ServicesReplanned != 1 {
		t.Fatalf("repair after one change replanned %d (err %v), want 1", res.ServicesReplanned, err)
	}
	// The hourly safety net.
	f.clock.Step(FullReplanPeriod)
	if res, err := f.p.Repair(); err != nil || !res.Full || res.ServicesReplanned != 3 {
		t.Fatalf("repair after FullReplanPeriod: full %v, replanned %d (err %v), want all 3", res.Full, res.ServicesReplanned, err)
	}
}

// TestProxierWatchesTheAPI drives the proxier through real informers over
// a fake clientset, with kube-proxy's ignore rules.
func TestProxierWatchesTheAPI(t *testing.T) {
	f := newFakeNode(t)
	cfg := f.p.cfg
	cfg.Clock = clock.RealClock{} // the loop runs on its own here (TestRunLoop steps a fake one)
	f.p = New(cfg, f.p.k)
	web := makeService("ns", "web")
	other := makeService("ns", "other", clusterIPs("10.96.0.99"), func(s *v1.Service) {
		s.Labels = map[string]string{labelServiceProxyName: "someone-else"}
	})
	slice := httpSlice(web, ready("10.244.2.1", "node-b"))
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: thisNode, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}}
	client := fake.NewClientset(web, other, slice, node)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := f.p.Watch(ctx, clientset.New(client), WatchOptions{Node: NewNodeInformer(clientset.New(client), thisNode, 0)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { f.p.Run(ctx, nil); close(done) }()
	waitFor(t, func() bool { return strings.Contains(f.ipvsText(), "10.244.2.1:8080") })
	if strings.Contains(f.ipvsText(), "10.96.0.99") {
		t.Fatal("a Service of another proxy was programmed")
	}
	// An endpoint added through the API shows up.
	slice2 := slice.DeepCopy()
	slice2.Endpoints = append(slice2.Endpoints, discovery.Endpoint{Addresses: []string{"10.244.2.2"}})
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, slice2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(f.ipvsText(), "10.244.2.2:8080") })
	if err := client.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !strings.Contains(f.ipvsText(), "10.96.0.10") })
	cancel()
	<-done
}

func namedSlice(name string, s *discovery.EndpointSlice) *discovery.EndpointSlice {
	s.Name = name
	return s
}

// w0 and w1 match a real server line of ipvs.Format with its weight.
func w0(rs string) string { return fmt.Sprintf("-> %-28s Masq 0", rs) }
func w1(rs string) string { return fmt.Sprintf("-> %-28s Masq 1", rs) }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkProxierHeap reports the heap a programmed node holds per
// Service (× 10 endpoints) after GC: the proxier's watch state, plans,
// claims and view, the IPVS reconciler's cache and the nft mirror. The
// Services and EndpointSlices themselves (the informers' cache) are
// built before the first reading and left out; the fake kernels' copies
// of IPVS and nftables (about 2.3 KB a Service, memory the real kernel
// holds) are in.
func BenchmarkProxierHeap(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				svcs, slices := benchObjects(n)
				var before, after goruntime.MemStats
				goruntime.GC()
				goruntime.ReadMemStats(&before)
				f := newFakeNode(b)
				for i := range svcs {
					f.addService(svcs[i], slices[i])
				}
				f.sync(b, false)
				goruntime.GC()
				goruntime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "heap-B/service")
				goruntime.KeepAlive(f)
				goruntime.KeepAlive(svcs)
				goruntime.KeepAlive(slices)
			}
		})
	}
}

// BenchmarkProxierSync measures plan+apply over fakes with N Services × 10
// endpoints: the first sync at 10k, and one endpoint change after it at
// 100, 1k and 10k — the change must cost the same at any N (only the
// changed Service is replanned).
func BenchmarkProxierSync(b *testing.B) {
	const endpoints = 10
	add := func(f *fakeNode, services int) {
		for i := range services {
			svc := makeService("ns", fmt.Sprintf("svc-%d", i), clusterIPs(fmt.Sprintf("10.%d.%d.%d", 96+i>>16, (i>>8)&0xff, i&0xff)))
			var eps []ep
			for j := range endpoints {
				eps = append(eps, ready(fmt.Sprintf("10.%d.%d.%d", 128+j, (i>>8)&0xff, i&0xff), "node-b"))
			}
			f.addService(svc, namedSlice(svc.Name, httpSlice(svc, eps...)))
		}
	}
	build := func(services int) *fakeNode {
		f := newFakeNode(b)
		add(f, services)
		return f
	}
	b.Run("first/N=10000", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			b.StopTimer()
			f := build(10000)
			b.StartTimer()
			f.sync(b, false)
		}
	})
	// A restart over a programmed node: a new proxier over the same
	// kernels, told every object again, the kernel read ahead (as the app
	// does while the informers list); the first sync writes nothing.
	// programmed is a node with 10k Services synced, the timer reset.
	programmed := func(b *testing.B) *fakeNode {
		f := build(10000)
		f.sync(b, false)
		b.ReportAllocs()
		b.ResetTimer()
		return f
	}
	b.Run("restart/N=10000", func(b *testing.B) {
		f := programmed(b)
		for range b.N {
			b.StopTimer()
			f.restarted(b)
			add(f, 10000)
			f.p.ReadAhead()
			b.StartTimer()
			if res := f.sync(b, false); res.IPVS.Writes.Total() != 0 || res.AddressesAdded != 0 {
				b.Fatalf("restart wrote: %+v", res)
			}
		}
	})
	// What a change can wait behind: the periodic full sync with nothing
	// changed (every SyncPeriod, 30 s by default).
	b.Run("full-unchanged/N=10000", func(b *testing.B) {
		f := programmed(b)
		for range b.N {
			if res := f.sync(b, true); res.ServicesReplanned != 10000 {
				b.Fatalf("replanned %d", res.ServicesReplanned)
			}
		}
	})
	// What a change can wait behind under Run: the periodic repair's part
	// under syncMu (the kernel read is off the loop), with and without
	// the IPVS resync (every real server compared) that comes every
	// IPVSResyncPeriod.
	for _, resync := range []bool{false, true} {
		b.Run(fmt.Sprintf("repair-unchanged/resync=%v/N=10000", resync), func(b *testing.B) {
			f := programmed(b)
			for range b.N {
				b.StopTimer()
				if resync {
					f.p.lastIPVSResync = time.Time{}
				}
				r := f.p.readForRepair()
				b.StartTimer()
				res, err := f.p.repair(r)
				if err != nil || res.IPVS.Writes.Total() != 0 || res.IPVSResync != resync {
					b.Fatalf("repair: %v, %+v", err, res)
				}
			}
		})
	}
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("one-endpoint-change/N=%d", n), func(b *testing.B) {
			f := build(n)
			f.sync(b, false)
			svc := makeService("ns", "svc-7", clusterIPs("10.96.0.7"))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				eps := []ep{ready(fmt.Sprintf("10.200.%d.%d", i>>8&0xff, i&0xff), "node-b")}
				for j := 1; j < endpoints; j++ {
					eps = append(eps, ready(fmt.Sprintf("10.%d.0.7", 128+j), "node-b"))
				}
				f.p.OnEndpointSliceUpdate("ns", "svc-7", httpSlice(svc, eps...), "svc-7")
				if res := f.sync(b, false); res.ServicesReplanned != 1 {
					b.Fatalf("replanned %d", res.ServicesReplanned)
				}
			}
		})
	}
}

// TestWatchFailsLoudlyWithoutPermission: when the API server refuses to
// list EndpointSlices (a ClusterRole missing a rule), Watch stops with an
// error naming the resource instead of waiting forever with nothing
// programmed.
func TestWatchFailsLoudlyWithoutPermission(t *testing.T) {
	f := newFakeNode(t)
	client := fake.NewClientset(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: thisNode}})
	client.PrependReactor("list", "endpointslices", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, "",
			fmt.Errorf("User \"system:serviceaccount:kube-system:nftvs\" cannot list resource"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := f.p.Watch(ctx, clientset.New(client), WatchOptions{Node: NewNodeInformer(clientset.New(client), thisNode, 0)})
	if err == nil {
		t.Fatal("Watch succeeded without permission to list EndpointSlices")
	}
	if ctx.Err() != nil {
		t.Fatalf("Watch gave up only when its context ended: %v", err)
	}
	for _, want := range []string{"endpointslices.discovery.k8s.io", "forbidden", "ClusterRole"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestTriggerTimes: as kube-proxy, a sync reports the
// last-change-trigger-time of each EndpointSlice change it programmed
// (later than the proxier's start; Service changes and slices without the
// annotation have none), a failed sync's changes keep theirs for the sync
// that programs them, and a sync with no change reports none.
func TestTriggerTimes(t *testing.T) {
	f := newFakeNode(t)
	t0 := f.clock.Now()
	at := func(s *discovery.EndpointSlice, tm time.Time) *discovery.EndpointSlice {
		s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: tm.Format(time.RFC3339Nano)}
		return s
	}
	a := makeService("ns", "a")
	f.addService(a)
	f.p.OnEndpointSliceUpdate("ns", "a", at(httpSlice(a, ready("10.244.2.1", "node-b")), t0.Add(-time.Minute)), "a") // before the start
	f.p.OnEndpointSliceUpdate("ns", "a", at(httpSlice(a, ready("10.244.2.2", "node-b")), t0.Add(time.Second)), "a")
	f.p.OnEndpointSliceUpdate("ns", "a", httpSlice(a, ready("10.244.2.3", "node-b")), "a") // no annotation
	res := f.sync(t, false)
	if len(res.TriggerTimes) != 1 || !res.TriggerTimes[0].At.Equal(t0.Add(time.Second)) || res.TriggerTimes[0].Family != v1.IPv4Protocol {
		t.Errorf("trigger times %v, want the one change after the start", res.TriggerTimes)
	}
	if res = f.sync(t, false); len(res.TriggerTimes) != 0 {
		t.Errorf("a sync without changes reports trigger times %v", res.TriggerTimes)
	}
	f.kern.Inject = func(ipvs.Op, ipvs.VSKey, *ipvs.RealServer) error { return syscall.ENOMEM } // IPVS fails the node
	f.p.OnEndpointSliceUpdate("ns", "a", at(httpSlice(a, ready("10.244.2.4", "node-b")), t0.Add(2*time.Second)), "a")
	if res, err := f.p.Sync(false); err == nil || len(res.TriggerTimes) != 0 {
		t.Fatalf("a failed sync: %v, trigger times %v", err, res.TriggerTimes)
	}
	f.kern.Inject = nil
	if res = f.sync(t, false); len(res.TriggerTimes) != 1 || !res.TriggerTimes[0].At.Equal(t0.Add(2*time.Second)) {
		t.Errorf("after a failed sync, trigger times %v, want the failed sync's change", res.TriggerTimes)
	}
	// An IPv6 EndpointSlice's change is IPv6's: kube-proxy's IPv6
	// proxier observes it, and only that one.
	f.p.OnEndpointSliceUpdate("ns", "a", at(makeSlice(a, discovery.AddressTypeIPv6, "http", 8080, v1.ProtocolTCP, ready("fd00:244:2::1", "node-b")), t0.Add(3*time.Second)), "a-v6")
	if res = f.sync(t, false); len(res.TriggerTimes) != 1 || res.TriggerTimes[0].Family != v1.IPv6Protocol {
		t.Errorf("IPv6 EndpointSlice change: trigger times %v, want one of family IPv6", res.TriggerTimes)
	}
}

// TestAddressesSyncedOnlyWhenTheyChange: an endpoint change keeps the
// Service's addresses, so the sync leaves kube-ipvs0 alone (listing it is
// an O(Services) netlink dump); a new or deleted Service changes them.
func TestAddressesSyncedOnlyWhenTheyChange(t *testing.T) {
	f := newFakeNode(t)
	a := makeService("ns", "a", clusterIPs("10.96.0.10"))
	f.addService(a, namedSlice("a", httpSlice(a, ready("10.244.1.2", "node-b"))))
	if res := f.sync(t, false); !res.AddressesSync {
		t.Fatal("the first sync of a new Service did not sync kube-ipvs0's addresses")
	}
	f.p.OnEndpointSliceUpdate("ns", "a", httpSlice(a, ready("10.244.1.3", "node-b")), "a")
	if res := f.sync(t, false); res.ServicesReplanned != 1 || res.AddressesSync {
		t.Errorf("endpoint change: replanned %d Services, addresses synced %v; want 1 and false", res.ServicesReplanned, res.AddressesSync)
	}
	b := makeService("ns", "b", clusterIPs("10.96.0.11"))
	f.addService(b)
	if res := f.sync(t, false); !res.AddressesSync {
		t.Error("a new Service's ClusterIP did not sync the addresses")
	}
	if got := f.addresses(t); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.96.0.11")}) {
		t.Errorf("kube-ipvs0 holds %v", got)
	}
	f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: "b"}, nil)
	if res := f.sync(t, false); !res.AddressesSync {
		t.Error("a deleted Service did not sync the addresses")
	}
	if got := f.addresses(t); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.96.0.10")}) {
		t.Errorf("after deleting b, kube-ipvs0 holds %v", got)
	}
}

// TestWatchWithARunningNodeInformer: the command starts the Node's
// informer first (to wait for the node's IPs) and hands it over: the
// watch takes it as it is, running, instead of failing to set its watch
// error handler (nftvs exited at start when this broke).
func TestWatchWithARunningNodeInformer(t *testing.T) {
	f := newFakeNode(t)
	f.p = New(f.p.cfg, f.p.k)
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: thisNode}}
	client := fake.NewClientset(makeService("ns", "web"), node)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ni := NewNodeInformer(clientset.New(client), thisNode, 0)
	if err := StartAndSync(ctx, map[string]cache.SharedIndexInformer{"nodes": ni}, nil, func() { ni.Start(ctx.Done()) }); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Watch(ctx, clientset.New(client), WatchOptions{Node: ni}); err != nil {
		t.Fatalf("Watch with a running Node informer: %v", err)
	}
}

// TestProxierKeepsHealthChecksAndNoLocalCounts: the health checks and
// no-local-endpoint counts kept by commit equal a walk of every applied
// plan, through adds, changes and deletes.
func TestProxierKeepsHealthChecksAndNoLocalCounts(t *testing.T) {
	f := newFakeNode(t)
	walk := func() (hc []ServiceHealth, internal, external int) {
		for _, plans := range f.p.applied {
			for _, pl := range plans {
				if pl.InternalNoLocal {
					internal++
				}
				if pl.ExternalNoLocal {
					external++
				}
				if pl.HealthCheckNodePort > 0 {
					hc = append(hc, ServiceHealth{Name: pl.Name, NodePort: pl.HealthCheckNodePort, LocalEndpoints: pl.LocalEndpoints})
				}
			}
		}
		slices.SortFunc(hc, func(a, b ServiceHealth) int { return a.NodePort - b.NodePort })
		return hc, internal, external
	}
	for step := range 6 {
		for i := range 5 {
			name := fmt.Sprintf("svc-%d", i)
			svc := makeService("ns", name, clusterIPs(fmt.Sprintf("10.96.0.%d", 10+i)), loadBalancer(int32(30100+i), fmt.Sprintf("192.0.2.%d", 10+i)),
				etpLocal(int32(32000+i)), itpLocal)
			switch {
			case (i+step)%3 == 0:
				f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: name}, nil)
			case (i+step)%3 == 1:
				f.addService(svc, httpSlice(svc, ready("10.244.1.5", thisNode)))
			default:
				f.addService(svc, httpSlice(svc, ready("10.244.2.5", "node-b")))
			}
		}
		f.sync(t, step%2 == 0)
		hc, in, ex := walk()
		gotIn, gotEx := f.p.NoLocalEndpoints()
		if got := f.p.HealthChecks(); fmt.Sprint(got) != fmt.Sprint(hc) || gotIn != in || gotEx != ex {
			t.Errorf("step %d: kept %v %d %d, walk %v %d %d", step, got, gotIn, gotEx, hc, in, ex)
		}
	}
}

// TestRestartWritesNothing: a proxier started over kernels another one
// programmed (a restarted nftvs: new Reconciler, new nft Table, same
// kernel) writes no IPVS object, no kube-ipvs0 address and no nft element
// when it wants what is there, reads IPVS in two reads whatever the number
// of virtual servers, and writes only the difference when something
// changed while it was down.
func TestRestartWritesNothing(t *testing.T) {
	f := newFakeNode(t)
	services := func(n int) {
		for i := range n {
			s := makeService("ns", fmt.Sprintf("s%d", i), clusterIPs(fmt.Sprintf("10.96.1.%d", i)))
			switch i % 4 {
			case 1:
				nodePort(int32(30000 + i))(s)
			case 2:
				loadBalancer(int32(30000+i), fmt.Sprintf("192.0.2.%d", i))(s)
				etpLocal(int32(31000 + i))(s)
				sourceRanges("203.0.113.0/24")(s)
			case 3:
				externalIPs(fmt.Sprintf("198.51.100.%d", i))(s)
				affinity(300)(s)
			}
			f.addService(s, httpSlice(s, ready(fmt.Sprintf("10.244.1.%d", i), thisNode), ready(fmt.Sprintf("10.244.2.%d", i), "node-b"),
				notReady(fmt.Sprintf("10.244.3.%d", i), "node-b")))
		}
	}
	services(20)
	first := f.sync(t, true)
	if first.IPVS.Writes.Total() == 0 || first.AddressesAdded == 0 || first.NFT[0].Added == 0 {
		t.Fatalf("the first start wrote nothing: %+v", first)
	}
	ipvsBefore, nftBefore, addrsBefore := f.ipvsText(), f.nft.Dump(), f.addresses(t)

	// A new process over the same kernels, told every object again.
	restart := func(n int) {
		t.Helper()
		f.restarted(t)
		f.ipvs.Reset()
		services(n)
	}
	nftWrites := f.nft.Writes
	restart(20)
	res := f.sync(t, true)
	if w := f.ipvs.Writes(); w.Total() != 0 || res.IPVS.Writes.Total() != 0 {
		t.Errorf("restart wrote IPVS: %+v", w)
	}
	// Three reads, whatever the number of Services: every real server's
	// connections (for the weight-0 ones: drain or not), the virtual
	// servers, every real server.
	if r := f.ipvs.Reads(); r != 3 {
		t.Errorf("restart read IPVS %d times, want 3", r)
	}
	if res.AddressesAdded+res.AddressesRemoved != 0 {
		t.Errorf("restart wrote %d+%d addresses", res.AddressesAdded, res.AddressesRemoved)
	}
	if f.nft.Writes != nftWrites || !res.NFT[0].Adopted || res.NFT[0].Rebuilt {
		t.Errorf("restart wrote %d nft elements (%+v)", f.nft.Writes-nftWrites, res.NFT)
	}
	if f.ipvsText() != ipvsBefore || f.nft.Dump() != nftBefore || !slices.Equal(f.addresses(t), addrsBefore) {
		t.Errorf("restart changed the kernel")
	}

	// As the app starts: the kernel read ahead (ReadAhead, while the
	// informers list), and the first sync reads nothing more. Two IPVS
	// reads: the virtual servers, and every real server with its
	// connections (which the drains use too); the nft table once.
	restart(20)
	nftReads := f.nft.Reads
	f.p.ReadAhead()
	res = f.sync(t, true)
	if r := f.ipvs.Reads(); r != 2 || f.nft.Reads != nftReads+1 {
		t.Errorf("restart after ReadAhead read IPVS %d times and nft %d, want 2 and 1", r, f.nft.Reads-nftReads)
	}
	if w := f.ipvs.Writes(); w.Total() != 0 || res.AddressesAdded+res.AddressesRemoved != 0 || f.nft.Writes != nftWrites || !res.NFT[0].Adopted {
		t.Errorf("restart after ReadAhead wrote IPVS %+v, addresses +%d -%d, nft %d (%+v)", w, res.AddressesAdded, res.AddressesRemoved, f.nft.Writes-nftWrites, res.NFT)
	}
	if f.ipvsText() != ipvsBefore || f.nft.Dump() != nftBefore || !slices.Equal(f.addresses(t), addrsBefore) {
		t.Errorf("restart after ReadAhead changed the kernel")
	}

	// Down, one Service deleted (its ClusterIP and external IP: two
	// virtual servers, two addresses, its nft elements), then up again.
	nftWrites = f.nft.Writes
	restart(19) // s19 is gone
	f.p.ReadAhead()
	res = f.sync(t, true)
	if w := f.ipvs.Writes(); w != (ipvs.WriteCounts{DeleteVirtualServer: 2}) {
		t.Errorf("restart with one Service gone wrote IPVS %+v, want two virtual servers deleted", w)
	}
	if res.AddressesAdded != 0 || res.AddressesRemoved != 2 {
		t.Errorf("restart with one Service gone: addresses +%d -%d, want -2", res.AddressesAdded, res.AddressesRemoved)
	}
	if got := f.nft.Writes - nftWrites; got == 0 || res.NFT[0].Rebuilt {
		t.Errorf("restart with one Service gone: %d nft writes, rebuilt %v; want its elements deleted", got, res.NFT[0].Rebuilt)
	}
	if strings.Contains(f.nft.Dump(), "ns/s19:") || strings.Contains(f.ipvsText(), "10.96.1.19:") {
		t.Errorf("s19 left behind")
	}
}

// TestKernelReadListsTheNodesAddressesOnce: a kernel read (ReadAhead, a
// periodic repair's) takes the node's addresses from its dump of
// kube-ipvs0's, which lists every link's, instead of dumping them again:
// at 10k Services each dump walks the 10k Service addresses. A sync
// without a read lists them with HostAddresses, once for both lists.
func TestKernelReadListsTheNodesAddressesOnce(t *testing.T) {
	lists := 0
	f := newFakeNodeWith(t, func(c *Config) {
		c.DummyName = ipvs.DummyName
		c.HostAddresses = func() ([]netip.Addr, error) {
			lists++
			return []netip.Addr{netip.MustParseAddr("192.168.0.10"), netip.MustParseAddr("192.168.0.99")}, nil
		}
		c.NodePortAddresses = func(host []netip.Addr) []netip.Addr { return host }
		c.LocalAddresses = func(host []netip.Addr) []netip.Addr { return host }
	})
	f.addrs.AddLink("eth0", netip.MustParseAddr("192.168.0.10"), netip.MustParseAddr("192.168.0.77"))
	// A restart: kube-ipvs0 is there (on a fresh node the read of its
	// addresses fails, and the sync lists the node's).
	if err := f.addrs.EnsureDummy(ipvs.DummyName); err != nil {
		t.Fatal(err)
	}
	svc := makeService("ns", "np", clusterIPs("10.96.0.11"), nodePort(30080))
	f.addService(svc, httpSlice(svc, ready("10.244.2.11", "node-b")))

	f.p.ReadAhead()
	f.sync(t, true)
	if lists != 0 {
		t.Errorf("the first sync after ReadAhead listed the node's addresses %d times, want 0: the read has them", lists)
	}
	got := f.ipvsText()
	if !strings.Contains(got, "TCP  192.168.0.77:30080 rr") || strings.Contains(got, "192.168.0.99") {
		t.Errorf("node ports are not served on eth0's addresses as the read saw them (192.168.0.10, .77):\n%s", got)
	}
	if addrs := f.addresses(t); slices.Contains(addrs, netip.MustParseAddr("192.168.0.77")) {
		t.Errorf("a node address became a Service address on %s: %v", ipvs.DummyName, addrs)
	}

	f.p.OnLocalAddressChange()
	f.sync(t, false)
	if lists != 1 {
		t.Errorf("a sync after an address change listed the node's addresses %d times, want 1", lists)
	}
	if got := f.ipvsText(); !strings.Contains(got, "TCP  192.168.0.99:30080 rr") || strings.Contains(got, "192.168.0.77") {
		t.Errorf("node ports are not served on HostAddresses' list (192.168.0.10, .99):\n%s", got)
	}
}

// TestFullSyncWritesAddressesBesideIPVS: a full sync (the first one)
// adds kube-ipvs0's addresses while IPVS is being written, not after it;
// a change keeps the order, its address added once its virtual server is.
func TestFullSyncWritesAddressesBesideIPVS(t *testing.T) {
	f := newFakeNode(t)
	has := func(a string) bool {
		as, _ := f.addrs.ListAddresses(ipvs.DummyName)
		return slices.Contains(as, netip.MustParseAddr(a))
	}
	seen := map[string]bool{} // ClusterIP → its address was there when its virtual server was added
	f.kern.Inject = func(op ipvs.Op, key ipvs.VSKey, rs *ipvs.RealServer) error {
		if op != ipvs.OpAddVirtualServer {
			return nil
		}
		a := key.Address.String()
		if a == "10.96.0.11" { // the full sync's: wait for the address, bounded
			for deadline := time.Now().Add(10 * time.Second); !has(a) && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
		seen[a] = has(a)
		return nil
	}
	first := makeService("ns", "first", clusterIPs("10.96.0.11"))
	f.addService(first, httpSlice(first, ready("10.244.2.11", "node-b")))
	f.sync(t, true)
	if !seen["10.96.0.11"] {
		t.Error("the full sync added no address until IPVS was written")
	}
	second := makeService("ns", "second", clusterIPs("10.96.0.12"))
	f.addService(second, httpSlice(second, ready("10.244.2.12", "node-b")))
	f.sync(t, false)
	if s, ok := seen["10.96.0.12"]; !ok || s {
		t.Errorf("a change's address was on %s before its virtual server was added (seen %v, %v)", ipvs.DummyName, s, ok)
	}
	if !has("10.96.0.12") {
		t.Errorf("the change's address is not on %s", ipvs.DummyName)
	}
}
