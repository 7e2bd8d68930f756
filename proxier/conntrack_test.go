package proxier

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/conntrack"
)

func flow(proto conntrack.Protocol, client, frontend, endpoint string) conntrack.Flow {
	return conntrack.Flow{Protocol: proto, OrigSrc: netip.MustParseAddrPort(client),
		OrigDst: netip.MustParseAddrPort(frontend), ReplySrc: netip.MustParseAddrPort(endpoint)}
}

// TestRemovedEndpointFlowsAreCleaned: when an endpoint leaves, the flows
// to every frontend of its Service answered by it are deleted, and no
// others; a draining (weight 0) endpoint keeps its flows.
func TestRemovedEndpointFlowsAreCleaned(t *testing.T) {
	f := newFakeNode(t)
	ct := conntrack.NewFake(
		flow(conntrack.ProtocolTCP, "10.0.0.1:40000", "10.96.0.10:80", "10.244.2.1:8080"),      // ClusterIP via gone endpoint
		flow(conntrack.ProtocolTCP, "10.0.0.1:40001", "192.168.0.10:30080", "10.244.2.1:8080"), // NodePort via gone endpoint
		flow(conntrack.ProtocolTCP, "10.0.0.1:40002", "10.96.0.10:80", "10.244.2.2:8080"),      // other endpoint
		flow(conntrack.ProtocolTCP, "10.0.0.1:40003", "10.244.2.1:8080", "10.244.2.1:8080"),    // direct to the pod
		flow(conntrack.ProtocolTCP, "10.0.0.1:40004", "10.96.0.10:80", "10.244.2.3:8080"),      // draining endpoint
	)
	f.p.k.Conntrack = ct
	svc := makeService("ns", "web", nodePort(30080))
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"), ready("10.244.2.3", "node-b"))))
	f.sync(t, false)
	if len(ct.Calls()) != 0 {
		t.Fatalf("cleaner called with nothing removed: %v", ct.Calls())
	}
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.2", "node-b"), servingTerminating("10.244.2.3", "node-b")), "web")
	res := f.sync(t, false)
	if len(ct.Calls()) != 1 {
		t.Fatalf("cleaner called %d times, want once per sync", len(ct.Calls()))
	}
	if n := len(ct.Flows()); n != 3 {
		t.Fatalf("%d entries left, want 3 (stale %v)", n, res.Stale)
	}
	left := map[string]bool{}
	for _, fl := range ct.Flows() {
		left[fl.OrigSrc.String()] = true
	}
	for _, keep := range []string{"10.0.0.1:40002", "10.0.0.1:40003", "10.0.0.1:40004"} {
		if !left[keep] {
			t.Errorf("flow from %s deleted", keep)
		}
	}
}

func TestUDPServiceGettingEndpointsFlushesItsFlows(t *testing.T) {
	f := newFakeNode(t)
	ct := conntrack.NewFake(flow(conntrack.ProtocolUDP, "10.0.0.1:5000", "10.96.0.53:53", "10.96.0.53:53"))
	f.p.k.Conntrack = ct
	svc := makeService("ns", "dns", clusterIPs("10.96.0.53"), ports(v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}))
	f.addService(svc)
	f.sync(t, false) // no endpoint: datagrams leave an entry answered by nobody
	f.p.OnEndpointSliceUpdate("ns", "dns-1", makeSlice(svc, "IPv4", "dns", 53, v1.ProtocolUDP, ready("10.244.2.9", "node-b")), "dns")
	f.sync(t, false)
	if n := len(ct.Flows()); n != 0 {
		t.Fatalf("stale UDP entry kept after the Service got an endpoint: %v", ct.Flows())
	}
}

func TestFWMarkFlowsUseEveryFrontend(t *testing.T) {
	stale := staleFlowsForTest(t)
	// The fwmark virtual server is reached through the ClusterIP's
	// siblings: the LB IP and the node port (and the ClusterIP, harmless:
	// its own virtual server lost the endpoint too).
	if len(stale) != 1 || len(stale[0].Frontends) != 3 || stale[0].Protocol != conntrack.ProtocolTCP {
		t.Fatalf("stale %v, want one TCP entry naming every frontend", stale)
	}
}

func staleFlowsForTest(t *testing.T) []conntrack.Stale {
	t.Helper()
	f := newFakeNode(t)
	ct := conntrack.NewFake()
	f.p.k.Conntrack = ct
	svc := makeService("ns", "web", loadBalancer(30080, "192.0.2.10"), etpLocal(0))
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"))))
	f.sync(t, false)
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.2", "node-b")), "web")
	res := f.sync(t, false)
	var fw []conntrack.Stale
	for _, s := range res.Stale {
		// The ClusterIP virtual server loses it too; keep the fwmark one
		// (the entry naming more than one frontend).
		if len(s.Frontends) > 1 {
			fw = append(fw, s)
		}
	}
	return fw
}

// blockingCleaner is a conntrack cleaner whose Clean waits until release
// is closed: a clean of a large conntrack table, as a sync would wait for
// it.
type blockingCleaner struct {
	*conntrack.Fake
	started chan struct{}
	release chan struct{}
}

func newBlockingCleaner(flows ...conntrack.Flow) *blockingCleaner {
	return &blockingCleaner{Fake: conntrack.NewFake(flows...), started: make(chan struct{}, 16), release: make(chan struct{})}
}

func (b *blockingCleaner) Clean(stale []conntrack.Stale) (conntrack.Result, error) {
	b.started <- struct{}{}
	<-b.release
	return b.Fake.Clean(stale)
}

// TestSyncDoesNotWaitForConntrackClean: a sync that removes an endpoint
// returns while the clean of its flows still runs (the clean walks the
// whole conntrack table: its time must not be the sync's), and the clean
// still happens.
func TestSyncDoesNotWaitForConntrackClean(t *testing.T) {
	f := newFakeNode(t)
	ct := newBlockingCleaner(flow(conntrack.ProtocolTCP, "10.0.0.1:40000", "10.96.0.10:80", "10.244.2.1:8080"))
	f.p.k.Conntrack = ct
	svc := makeService("ns", "web", nodePort(30080))
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"))))
	if _, err := f.p.Sync(false); err != nil {
		t.Fatal(err)
	}
	// syncs syncs, failing the test if it takes 10 s (waits for the clean).
	syncs := func(what string) {
		done := make(chan error, 1)
		go func() { _, err := f.p.Sync(false); done <- err }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			close(ct.release)
			t.Fatalf("%s waited for the conntrack clean", what)
		}
	}
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.2", "node-b")), "web")
	syncs("the sync removing 10.244.2.1")
	<-ct.started // the clean was started, and waits
	// Another change meanwhile (a new endpoint): not held up either.
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.2", "node-b"), ready("10.244.2.3", "node-b")), "web")
	syncs("a sync adding an unrelated endpoint")
	close(ct.release)
	f.p.cleans.flush()
	if n := len(ct.Flows()); n != 0 {
		t.Fatalf("flows of the removed endpoint left: %v", ct.Flows())
	}
}

// TestReturningEndpointWaitsForItsClean: when an endpoint whose flows are
// queued for deletion comes back, the sync that gives it traffic again
// waits for the clean first, so the clean never deletes the returning
// endpoint's new flows.
func TestReturningEndpointWaitsForItsClean(t *testing.T) {
	f := newFakeNode(t)
	ct := newBlockingCleaner()
	f.p.k.Conntrack = ct
	svc := makeService("ns", "web", nodePort(30080))
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"))))
	if _, err := f.p.Sync(false); err != nil {
		t.Fatal(err)
	}
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.2", "node-b")), "web")
	if _, err := f.p.Sync(false); err != nil {
		t.Fatal(err)
	}
	<-ct.started // cleaning 10.244.2.1's flows, held
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b")), "web")
	done := make(chan error, 1)
	go func() { _, err := f.p.Sync(false); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("the sync giving 10.244.2.1 traffic again did not wait for its clean (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	if strings.Contains(f.ipvsText(), "10.244.2.1") {
		t.Fatalf("10.244.2.1 back in IPVS before its clean ended:\n%s", f.ipvsText())
	}
	// New flows of the endpoint would appear only now; the clean ends.
	close(ct.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.ipvsText(), "10.244.2.1") {
		t.Fatalf("10.244.2.1 not back in IPVS:\n%s", f.ipvsText())
	}
	ct.AddFlows(flow(conntrack.ProtocolTCP, "10.0.0.1:40000", "10.96.0.10:80", "10.244.2.1:8080"))
	f.p.cleans.flush()
	if n := len(ct.Flows()); n != 1 {
		t.Fatalf("the returning endpoint's new flow was deleted: %v left", ct.Flows())
	}
}
