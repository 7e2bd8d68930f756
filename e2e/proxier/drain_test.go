//go:build vmtest

package proxier_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"

	"github.com/nftvs/nftvs/ipvs"
)

// TestDrains: a long-lived connection to a pod survives the pod's
// readiness flap and a 60 s termination, as under kube-proxy's IPVS mode
// (issue 16). The real server stays at weight 0, taking no new
// connection, until its last connection ends; then it is removed. Before,
// nftvs cut the connection 30 s into the flap, and at once when a
// terminating pod stopped serving.
func TestDrains(t *testing.T) {
	requireVM(t)
	begin := time.Now()
	tb := newTestbed(t)
	cl := tb.addPod(t, "cl", nodeName, "10.244.1.99", "fd00:244:1::99")
	a1 := tb.addPod(t, "a1", nodeName, "10.244.1.11", "fd00:244:1::11")
	b1 := tb.addPod(t, "b1", remoteNode, "10.244.2.21", "fd00:244:2::21")
	const echoPort = 9090
	echoServer(t, a1.ns, a1.name, echoPort)
	echoServer(t, b1.ns, b1.name, echoPort)
	c := startClusterOpts(t, tb, clusterOptions{drainCheck: 2 * time.Second})

	svc := service("drain", "10.96.7.10")
	vip := ap("10.96.7.10", 80)
	key := tcpKey("10.96.7.10", 80)
	echoSlice := func(eps ...endpoint) *discovery.EndpointSlice { return echoSlice4(svc, echoPort, eps...) }
	at := func(p *pod, w int) rs { return rs{netip.AddrPortFrom(p.v4, echoPort): w} }
	c.apply(t, svc, echoSlice(readyEP(a1), readyEP(b1)))
	c.waitIPVS(t, key, at(a1, 1).with(at(b1, 1)))

	conn, err := cl.ns.dialEcho(vip)
	if err != nil {
		t.Fatalf("connect to %s: %v", vip, err)
	}
	defer conn.c.Close()
	x, err := conn.roundTrip("hello")
	if err != nil {
		t.Fatalf("first round trip: %v", err)
	}
	// The pod holding the long-lived connection, and the other one.
	held, other := a1, b1
	if x == b1.name {
		held, other = b1, a1
	}
	t.Logf("the long-lived connection is on %s", held.name)
	keepsTalking := func(t *testing.T, what string, d, every time.Duration) {
		t.Helper()
		for end, i := time.Now().Add(d), 0; ; i++ {
			msg := fmt.Sprintf("%s-%d", what, i)
			if who, err := conn.roundTrip(msg); err != nil || who != held.name {
				t.Fatalf("%s, %v in: round trip %q answered by %q, %v; want %s", what, time.Since(end.Add(-d)).Round(time.Second), msg, who, err, held.name)
			}
			if time.Now().After(end) {
				return
			}
			time.Sleep(every)
		}
	}
	newConnectionsGoTo := func(t *testing.T, what string, p *pod) {
		t.Helper()
		for i := range 4 {
			e, err := cl.ns.dialEcho(vip)
			if err != nil {
				t.Fatalf("%s: new connection %d: %v", what, i, err)
			}
			who, err := e.roundTrip("new")
			e.c.Close()
			if err != nil || who != p.name {
				t.Fatalf("%s: new connection %d answered by %q, %v; want %s", what, i, who, err, p.name)
			}
		}
	}
	connections := func(t *testing.T) ipvs.Connections {
		t.Helper()
		conns, err := c.ipvs.GetConnections(key)
		if err != nil {
			t.Fatal(err)
		}
		return conns[netip.AddrPortFrom(held.v4, echoPort)]
	}

	ok := t.Run("readiness flap: 40 s at weight 0, the connection lives on", func(t *testing.T) {
		c.apply(t, svc, echoSlice(notReadyEP(held), readyEP(other)))
		c.waitIPVS(t, key, at(held, 0).with(at(other, 1)))
		if n := connections(t); n.Active < 1 {
			t.Fatalf("the kernel counts %+v connections on %s, want 1 active", n, held.name)
		}
		newConnectionsGoTo(t, "not ready", other)
		keepsTalking(t, "flap", 40*time.Second, 5*time.Second)
		c.waitIPVS(t, key, at(held, 0).with(at(other, 1)))
		// Ready again: back to weight 1 in place.
		c.apply(t, svc, echoSlice(readyEP(held), readyEP(other)))
		c.waitIPVS(t, key, at(held, 1).with(at(other, 1)))
		keepsTalking(t, "ready again", 0, 0)
	})
	if !ok {
		return
	}
	ok = t.Run("60 s termination, no longer serving: the connection lives on", func(t *testing.T) {
		c.apply(t, svc, echoSlice(endpoint{pod: held, terminating: true}, readyEP(other)))
		c.waitIPVS(t, key, at(held, 0).with(at(other, 1)))
		newConnectionsGoTo(t, "terminating", other)
		keepsTalking(t, "terminating", 60*time.Second, 10*time.Second)
	})
	if !ok {
		return
	}
	t.Run("the last connection ends: the real server goes", func(t *testing.T) {
		// A reset leaves IPVS's entry in CLOSE for 10 s (a FIN would leave
		// it in TIME_WAIT for 2 min): then the check finds it idle.
		tc := conn.c.(*net.TCPConn)
		if err := tc.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		closed := time.Now()
		tc.Close()
		c.waitIPVS(t, key, at(other, 1))
		t.Logf("real server of %s removed %v after its last connection was reset", held.name, time.Since(closed).Round(100*time.Millisecond))
		newConnectionsGoTo(t, "after the drain", other)
	})
	t.Logf("TestDrains ran %v", time.Since(begin).Round(time.Second))
}
