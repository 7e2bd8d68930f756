package proxier

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/ipvs"
)

// Drains as kube-proxy's IPVS mode does them (issue 16): a real server
// that stops taking new connections stays at weight 0 until it has no
// connection left, however long that takes.

// untilIdle keeps DrainTimeout 0, the default: drains last until idle.
func untilIdle(*Config) {}

func tcpVS(addr string) ipvs.VSKey {
	ap := netip.MustParseAddrPort(addr)
	return ipvs.VSKey{Address: ap.Addr(), Protocol: ipvs.TCP, Port: ap.Port()}
}

// setConns gives a real server connections, as traffic would.
func (f *fakeNode) setConns(t *testing.T, vs ipvs.VSKey, rs string, c ipvs.Connections) {
	t.Helper()
	if err := f.kern.SetConnections(vs, netip.MustParseAddrPort(rs), c); err != nil {
		t.Fatalf("connections of %s on %s: %v", rs, vs, err)
	}
}

func (f *fakeNode) wantIPVS(t *testing.T, what string, has, lacks []string) {
	t.Helper()
	got := f.ipvsText()
	for _, s := range has {
		if !strings.Contains(got, s) {
			t.Fatalf("%s: no %q in\n%s", what, s, got)
		}
	}
	for _, s := range lacks {
		if strings.Contains(got, s) {
			t.Fatalf("%s: %q still in\n%s", what, s, got)
		}
	}
}

// webVS is ns/web's virtual server (makeService's ClusterIP and port).
var webVS = tcpVS("10.96.0.10:80")

// busyWeb programs ns/web with both endpoints ready, the second carrying
// conns.
func (f *fakeNode) busyWeb(t *testing.T, conns ipvs.Connections) *v1.Service {
	t.Helper()
	svc := makeService("ns", "web")
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"))))
	f.sync(t, false)
	f.setConns(t, webVS, "10.244.2.2:8080", conns)
	return svc
}

// setSecond puts web's second endpoint in state e (the first stays ready)
// and syncs.
func (f *fakeNode) setSecond(t *testing.T, svc *v1.Service, e ep) SyncResult {
	t.Helper()
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), e), "web")
	return f.sync(t, false)
}

func TestDrainLastsWhileConnectionsDo(t *testing.T) {
	for _, tc := range []struct {
		name string
		gone ep
	}{
		{"readiness flap", notReady("10.244.2.2", "node-b")},
		{"terminating, still serving", servingTerminating("10.244.2.2", "node-b")},
		{"terminating, no longer serving", terminatingNotServing("10.244.2.2", "node-b")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeNodeWith(t, untilIdle)
			svc := f.busyWeb(t, ipvs.Connections{Active: 1})
			f.setSecond(t, svc, tc.gone)
			f.wantIPVS(t, "after it stops serving", []string{w1("10.244.2.1:8080"), w0("10.244.2.2:8080")}, nil)
			// An hour of syncs and checks: the connection lives on, so
			// does the real server (the old 30 s bound cut it).
			for range 12 {
				f.clock.Step(5 * time.Minute)
				f.p.checkDrains()
				f.sync(t, true)
			}
			f.wantIPVS(t, "an hour later, with a connection", []string{w0("10.244.2.2:8080")}, nil)

			// The connection ends (its IPVS entry expires): the next
			// check finds it idle and a sync removes it.
			f.setConns(t, webVS, "10.244.2.2:8080", ipvs.Connections{})
			f.p.checkDrains()
			if d, ok := f.p.nextDrainDeadline(); !ok || d.After(f.clock.Now()) {
				t.Fatalf("an idle drain asks for a sync now; next %v %v", d, ok)
			}
			res := f.sync(t, false)
			f.wantIPVS(t, "once idle", []string{w1("10.244.2.1:8080")}, []string{"10.244.2.2"})
			if len(res.Removed) != 1 || res.Removed[0].RealServer.AddrPort() != netip.MustParseAddrPort("10.244.2.2:8080") {
				t.Fatalf("removed %v, want 10.244.2.2:8080", res.Removed)
			}
			// Still not serving: it is not added back at weight 0.
			f.sync(t, true)
			f.wantIPVS(t, "a full sync after", nil, []string{"10.244.2.2"})
			if f.p.hasDrains() {
				t.Fatal("a drain is still remembered")
			}
		})
	}
}

func TestDrainInactiveConnectionsCount(t *testing.T) {
	f := newFakeNodeWith(t, untilIdle)
	svc := f.busyWeb(t, ipvs.Connections{Inactive: 2}) // closing
	f.setSecond(t, svc, notReady("10.244.2.2", "node-b"))
	f.p.checkDrains()
	f.sync(t, false)
	f.wantIPVS(t, "with closing connections", []string{w0("10.244.2.2:8080")}, nil)
}

func TestDrainBackInServiceBeforeIdle(t *testing.T) {
	f := newFakeNodeWith(t, untilIdle)
	svc := f.busyWeb(t, ipvs.Connections{Active: 3})
	f.setSecond(t, svc, notReady("10.244.2.2", "node-b"))
	res := f.setSecond(t, svc, ready("10.244.2.2", "node-b"))
	f.wantIPVS(t, "ready again", []string{w1("10.244.2.2:8080")}, nil)
	if len(res.Removed) != 0 || res.IPVS.Writes.UpdateRealServer != 1 {
		t.Fatalf("ready again: want the real server reweighed in place, got %v removed, %+v", res.Removed, res.IPVS.Writes)
	}
	if f.p.hasDrains() {
		t.Fatal("the drain outlived the endpoint's return")
	}
}

// Like kube-proxy, only what was serving drains: a new endpoint that is
// not ready is not added at weight 0.
func TestDrainOnlyWhatServed(t *testing.T) {
	f := newFakeNodeWith(t, untilIdle)
	svc := makeService("ns", "web")
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), notReady("10.244.2.2", "node-b"),
		servingTerminating("10.244.2.3", "node-b"))))
	f.sync(t, false)
	f.wantIPVS(t, "new Service", []string{w1("10.244.2.1:8080")}, []string{"10.244.2.2", "10.244.2.3"})
}

// UDP and SCTP real servers are removed at once, as kube-proxy removes
// them: there is no connection to finish, and the conntrack cleaner
// flushes their flows.
func TestDrainConnectionless(t *testing.T) {
	f := newFakeNodeWith(t, untilIdle)
	svc := makeService("ns", "dns", ports(v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}))
	f.addService(svc, namedSlice("dns-1", makeSlice(svc, "IPv4", "dns", 53, v1.ProtocolUDP, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"))))
	f.sync(t, false)
	vs := ipvs.VSKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: ipvs.UDP, Port: 53}
	f.setConns(t, vs, "10.244.2.2:53", ipvs.Connections{Inactive: 5})
	f.p.OnEndpointSliceUpdate("ns", "dns-1", makeSlice(svc, "IPv4", "dns", 53, v1.ProtocolUDP, ready("10.244.2.1", "node-b"), notReady("10.244.2.2", "node-b")), "dns")
	res := f.sync(t, false)
	f.wantIPVS(t, "UDP endpoint not ready", []string{w1("10.244.2.1:53")}, []string{"10.244.2.2"})
	if len(res.Stale) != 1 {
		t.Fatalf("want its flows flushed, stale = %v", res.Stale)
	}
}

// After a restart nftvs has applied nothing yet: the kernel's counts say
// which weight-0 real servers still carry connections, and those stay.
func TestDrainSurvivesRestart(t *testing.T) {
	f := newFakeNodeWith(t, untilIdle)
	svc := makeService("ns", "web")
	slice := namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"), ready("10.244.2.3", "node-b")))
	f.addService(svc, slice)
	f.sync(t, false)
	f.setConns(t, webVS, "10.244.2.2:8080", ipvs.Connections{Active: 1})
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.1", "node-b"),
		notReady("10.244.2.2", "node-b"), notReady("10.244.2.3", "node-b")), "web")
	f.sync(t, false)
	f.wantIPVS(t, "before the restart", []string{w0("10.244.2.2:8080"), w0("10.244.2.3:8080")}, nil)

	// A new process over the same kernel.
	restarted := New(f.p.cfg, Dataplane{IPVS: ipvs.NewReconciler(f.ipvs, nil), Addresses: f.addrs, NFT: f.table})
	restarted.SetSynced()
	f.p = restarted
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"),
		notReady("10.244.2.2", "node-b"), notReady("10.244.2.3", "node-b"))))
	f.sync(t, true)
	f.wantIPVS(t, "after the restart", []string{w1("10.244.2.1:8080"), w0("10.244.2.2:8080")}, []string{"10.244.2.3"})
	if !f.p.hasDrains() {
		t.Fatal("the restarted proxier does not watch the drain")
	}
}

// --ipvs-graceful-termination-period, when set, bounds a drain however
// busy the real server is.
func TestDrainTimeoutBounds(t *testing.T) {
	f := newFakeNodeWith(t, func(c *Config) { c.DrainTimeout = time.Minute })
	svc := f.busyWeb(t, ipvs.Connections{Active: 1})
	f.setSecond(t, svc, servingTerminating("10.244.2.2", "node-b"))
	if d, ok := f.p.nextDrainDeadline(); !ok || !d.Equal(f.clock.Now().Add(time.Minute)) {
		t.Fatalf("drain deadline %v %v, want %v", d, ok, f.clock.Now().Add(time.Minute))
	}
	f.clock.Step(30 * time.Second)
	f.p.checkDrains()
	f.sync(t, false)
	f.wantIPVS(t, "30 s in", []string{w0("10.244.2.2:8080")}, nil)
	f.clock.Step(31 * time.Second)
	res := f.sync(t, false)
	f.wantIPVS(t, "past the bound", nil, []string{"10.244.2.2"})
	if len(res.Removed) != 1 {
		t.Fatalf("removed %v", res.Removed)
	}
}

// The check costs one dump per virtual server with a draining real
// server, and none when nothing drains.
func TestDrainCheckReads(t *testing.T) {
	f := newFakeNodeWith(t, untilIdle)
	svc := makeService("ns", "web")
	f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.2.1", "node-b"), ready("10.244.2.2", "node-b"), ready("10.244.2.3", "node-b"))))
	f.sync(t, false)
	if f.p.hasDrains() {
		t.Fatal("drains with every endpoint ready")
	}
	f.setConns(t, webVS, "10.244.2.2:8080", ipvs.Connections{Active: 1})
	f.setConns(t, webVS, "10.244.2.3:8080", ipvs.Connections{Active: 1})
	f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.2.1", "node-b"),
		notReady("10.244.2.2", "node-b"), notReady("10.244.2.3", "node-b")), "web")
	f.sync(t, false)
	f.ipvs.Reset()
	f.p.checkDrains()
	if r := f.ipvs.Reads(); r != 1 {
		t.Fatalf("check of two drains on one virtual server: %d reads, want 1", r)
	}
}
