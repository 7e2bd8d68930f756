//go:build vmtest

package proxier_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

// TestHostile: objects any namespace user may write, and state others
// tamper with, never take the node down (issue 15). Every case is checked
// with real traffic: the Service port, and the node's other ports.
func TestHostile(t *testing.T) {
	requireVM(t)
	tb := newTestbed(t)
	a1 := tb.addPod(t, "a1", nodeName, "10.244.1.11", "fd00:244:1::11")
	b1 := tb.addPod(t, "b1", remoteNode, "10.244.2.21", "fd00:244:2::21")
	b2 := tb.addPod(t, "b2", remoteNode, "10.244.2.22", "fd00:244:2::22")
	node, out1, out2 := tb.node, tb.out1, tb.out2

	// Host services: one on the node's address, loopback-only daemons.
	serve(t, node, "host-ssh", "tcp", "192.168.100.1:2222")
	serve(t, node, "host-lo-9090", "tcp", "127.0.0.1:9090")
	serve(t, node, "host-lo-9091", "tcp", "127.0.0.1:9091")
	hostOnly := func(name string) expect { return expect{only: []*pod{{name: name}}} }

	// A foreign virtual server (keepalived, kube-vip) inside
	// --ipvs-exclude-cidrs, made before nftvs starts.
	foreign := tcpKey("198.51.100.50", 80)
	for _, args := range [][]string{
		{"-A", "-t", "198.51.100.50:80", "-s", "wrr"},
		{"-a", "-t", "198.51.100.50:80", "-r", "10.244.2.21:8080", "-m", "-w", "3"},
	} {
		if out, err := exec.Command("ipvsadm", args...).CombinedOutput(); err != nil {
			t.Fatalf("ipvsadm %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ipvsadm", "-D", "-t", "198.51.100.50:80").Run() })

	var mu sync.Mutex
	var warnings []string
	warned := func(svc, reason string) error {
		mu.Lock()
		defer mu.Unlock()
		for _, w := range warnings {
			if strings.HasPrefix(w, svc+" "+reason) {
				return nil
			}
		}
		return fmt.Errorf("no %s warning for %s (got %q)", reason, svc, warnings)
	}
	syncPeriod := 5 * time.Second
	var syncs []timedSync // guarded by mu
	syncsSince := func(t0 time.Time) []timedSync {
		mu.Lock()
		defer mu.Unlock()
		var out []timedSync
		for _, s := range syncs {
			if s.at.After(t0) {
				out = append(out, s)
			}
		}
		return out
	}
	c := startClusterOpts(t, tb, clusterOptions{
		exclude:    []netip.Prefix{netip.MustParsePrefix("198.51.100.48/28")},
		syncPeriod: syncPeriod,
		onSync: func(res proxier.SyncResult, err error) {
			mu.Lock()
			syncs = append(syncs, timedSync{time.Now(), res})
			mu.Unlock()
		},
		warn: func(svc, reason, msg string) {
			mu.Lock()
			warnings = append(warnings, svc+" "+reason+": "+msg)
			mu.Unlock()
			t.Logf("warning: %s %s: %s", svc, reason, msg)
		},
	})
	// A Service that must keep working whatever the others do.
	np := service("np", "10.96.1.10", nodePort(30090))
	c.apply(t, np, slice4(np, readyEP(b2)))
	c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30090}, weights(podTCPPort, false, 1, b2))

	t.Run("externalIP on the node's own address", func(t *testing.T) {
		svc := service("on-node", "10.96.1.11", externalIPs(tb.ext0IP4.String()))
		c.apply(t, svc, slice4(svc, readyEP(a1)))
		c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 80}, weights(podTCPPort, false, 1, a1))
		c.settle()
		check(t, "out1 → node:80 (the Service port)", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 80), 2), expect{only: []*pod{a1}})
		check(t, "out1 → node:2222 (a host service)", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 2222), 2), hostOnly("host-ssh"))
		check(t, "out1 → node:30090 (another Service's node port)", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30090), 2), expect{only: []*pod{b2}})
		if got := command("ip", "-br", "addr", "show", "dev", ipvs.DummyName); strings.Contains(got, tb.ext0IP4.String()) {
			t.Errorf("the node's address is bound to %s: %s", ipvs.DummyName, got)
		}
		c.deleteService(t, "on-node")
	})

	t.Run("load-balancer ingress 127.0.0.1", func(t *testing.T) {
		svc := service("lo", "10.96.1.12", loadBalancer(0, "127.0.0.1"), func(s *v1.Service) { s.Spec.Ports[0].Port = 9090 })
		c.apply(t, svc, slice4(svc, readyEP(a1)))
		c.eventually(t, "a RefusedAddress warning", func() error { return warned("e2e/lo", "RefusedAddress") })
		c.waitIPVS(t, tcpKey("10.96.1.12", 9090), weights(podTCPPort, false, 1, a1))
		c.settle()
		if got, _, ok, _ := c.realServers(tcpKey("127.0.0.1", 9090)); ok {
			t.Errorf("a virtual server on 127.0.0.1:9090 exists: %s", got)
		}
		check(t, "node → 127.0.0.1:9090 (the daemon, not the Service)", node.askN("tcp", ap("127.0.0.1", 9090), 2), hostOnly("host-lo-9090"))
		check(t, "node → 127.0.0.1:9091", node.askN("tcp", ap("127.0.0.1", 9091), 2), hostOnly("host-lo-9091"))
		c.deleteService(t, "lo")
	})

	t.Run("padded and unusable loadBalancerSourceRanges", func(t *testing.T) {
		padded := service("padded", "10.96.1.13", loadBalancer(0, "192.0.2.30"), sourceRanges(" 192.168.100.2/32 "))
		c.apply(t, padded, slice4(padded, readyEP(a1)))
		c.waitIPVS(t, tcpKey("192.0.2.30", 80), weights(podTCPPort, false, 1, a1))
		c.settle()
		check(t, "allowed out1 → 192.0.2.30:80", out1.askN("tcp", ap("192.0.2.30", 80), 2), expect{only: []*pod{a1}})
		expectFailure(t, "out2 (not in the padded range) → 192.0.2.30:80", out2, "tcp", ap("192.0.2.30", 80), "no answer")

		closed := service("closed", "10.96.1.14", loadBalancer(0, "192.0.2.31"), sourceRanges("192.168.100.2/33", "bogus"))
		c.apply(t, closed, slice4(closed, readyEP(a1)))
		c.eventually(t, "an InvalidSourceRange warning", func() error { return warned("e2e/closed", "InvalidSourceRange") })
		c.waitIPVS(t, tcpKey("192.0.2.31", 80), weights(podTCPPort, false, 1, a1))
		c.settle()
		expectFailure(t, "out1 → 192.0.2.31:80 (no usable range: closed)", out1, "tcp", ap("192.0.2.31", 80), "no answer")
		expectFailure(t, "out2 → 192.0.2.31:80 (no usable range: closed)", out2, "tcp", ap("192.0.2.31", 80), "no answer")
		check(t, "a pod → 10.96.1.14:80 (the ClusterIP is not restricted)", a1.ns.askN("tcp", ap("10.96.1.14", 80), 2), expect{only: []*pod{a1}})
		c.deleteService(t, "padded")
		c.deleteService(t, "closed")
	})

	t.Run("two Services claim one externalIP:port", func(t *testing.T) {
		older := service("older", "10.96.1.15", externalIPs("203.0.113.40"))
		older.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
		newer := service("newer", "10.96.1.16", externalIPs("203.0.113.40"))
		newer.CreationTimestamp = metav1.NewTime(time.Now())
		c.apply(t, newer, slice4(newer, readyEP(b1)))
		c.waitIPVS(t, tcpKey("203.0.113.40", 80), weights(podTCPPort, false, 1, b1))
		c.apply(t, older, slice4(older, readyEP(a1)))
		c.waitIPVS(t, tcpKey("203.0.113.40", 80), weights(podTCPPort, false, 1, a1))
		c.eventually(t, "a FrontendConflict warning", func() error { return warned("e2e/newer", "FrontendConflict") })
		c.settle()
		check(t, "out1 → 203.0.113.40:80 (the older Service's)", out1.askN("tcp", ap("203.0.113.40", 80), 3), expect{only: []*pod{a1}})
		check(t, "out1 → node:30090 (others keep syncing)", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30090), 1), expect{only: []*pod{b2}})
		c.deleteService(t, "older")
		c.waitIPVS(t, tcpKey("203.0.113.40", 80), weights(podTCPPort, false, 1, b1))
		c.settle()
		check(t, "out1 → 203.0.113.40:80 (handed over)", out1.askN("tcp", ap("203.0.113.40", 80), 3), expect{only: []*pod{b1}})
		c.deleteService(t, "newer")
	})

	t.Run("a Service asking for a frontend inside --ipvs-exclude-cidrs", func(t *testing.T) {
		svc := service("excluded", "10.96.1.17", externalIPs("198.51.100.50"))
		c.apply(t, svc, slice4(svc, readyEP(a1)))
		c.eventually(t, "a RefusedAddress warning", func() error { return warned("e2e/excluded", "RefusedAddress") })
		c.waitIPVS(t, tcpKey("10.96.1.17", 80), weights(podTCPPort, false, 1, a1))
		c.deleteService(t, "excluded")
		c.waitGone(t, tcpKey("10.96.1.17", 80))
		c.p.SyncSoon()
		time.Sleep(syncPeriod + time.Second) // a full sync, too
		got, vs, ok, err := c.realServers(foreign)
		want := rs{netip.MustParseAddrPort("10.244.2.21:8080"): 3}
		if err != nil || !ok || got.String() != want.String() || vs.Scheduler != "wrr" {
			t.Errorf("the foreign virtual server is %v %s (%s, %v), want wrr with %s", ok, got, vs.Scheduler, err, want)
		}
	})

	t.Run("ipvsadm -C is repaired within one sync period", func(t *testing.T) {
		start := time.Now()
		if out, err := exec.Command("ipvsadm", "-C").CombinedOutput(); err != nil {
			t.Fatalf("ipvsadm -C: %v: %s", err, out)
		}
		c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30090}, weights(podTCPPort, false, 1, b2))
		t.Logf("virtual servers back %v after ipvsadm -C (--ipvs-sync-period %v)", time.Since(start).Round(time.Millisecond), syncPeriod)
		// By the first periodic sync's cheap repair, not by the IPVS
		// resync (every 5 minutes) that reads every real server.
		for _, s := range syncsSince(start) {
			if s.res.IPVSResync {
				t.Errorf("a sync at %s dumped IPVS whole", s.at.Format("15:04:05.000"))
			}
			if s.res.Repair {
				if s.res.IPVS.Writes.AddVirtualServer == 0 {
					t.Errorf("the first periodic sync (a repair) after ipvsadm -C added no virtual server: %s", s.res.IPVS)
				}
				break
			}
		}
		check(t, "out1 → node:30090 after the repair", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30090), 2), expect{only: []*pod{b2}})
	})

	t.Run("a CNI's mark bits set before nftvs's chains", func(t *testing.T) {
		// Calico-style: another table marks every packet with a bit of its
		// own before nftvs's chains run (mangle, -150).
		cni := "table inet cni {\n\tchain early {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n" +
			"\t\tmeta mark set meta mark | 0x10000000\n\t}\n}\n"
		nftRun := exec.Command("nft", "-f", "-")
		nftRun.Stdin = strings.NewReader(cni)
		if out, err := nftRun.CombinedOutput(); err != nil {
			t.Fatalf("nft -f: %v: %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("nft", "delete", "table", "inet", "cni").Run() })
		// No local endpoint: a local pod reaches the remote ones only
		// through the fwmark virtual server, which IPVS finds by the
		// whole mark.
		svc := service("etpl", "10.96.1.19", loadBalancer(30095, "192.0.2.50"), etpLocal(0))
		c.apply(t, svc, slice4(svc, readyEP(b1)))
		c.waitIPVS(t, fwmarkKey(30095, false), weights(podTCPPort, false, 1, b1))
		c.settle()
		check(t, "a1 → 192.0.2.50:80 (fwmark path, foreign bit set)", a1.ns.askN("tcp", ap("192.0.2.50", 80), 3),
			expect{only: []*pod{b1}})
		check(t, "out1 → node:30090 (masqueraded, foreign bit set)", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30090), 2),
			expect{only: []*pod{b2}, src: nodeSources(t, tb.ext0IP4, tb.ext1IP4)})
		c.deleteService(t, "etpl")
	})

	t.Run("nft flush ruleset is repaired within a second", func(t *testing.T) {
		// Right after a periodic sync, so that the next one is a sync
		// period away: a rebuild before it is the drift watch's doing.
		t0 := time.Now()
		c.eventually(t, "a periodic sync (a repair)", func() error {
			for _, s := range syncsSince(t0) {
				if s.res.Repair {
					return nil
				}
			}
			return fmt.Errorf("none since %s", t0.Format("15:04:05.000"))
		})
		start := time.Now()
		if out, err := exec.Command("nft", "flush", "ruleset").CombinedOutput(); err != nil {
			t.Fatalf("nft flush ruleset: %v: %s", err, out)
		}
		var took time.Duration
		c.eventually(t, "the table rebuilt", func() error {
			out, err := exec.Command("nft", "list", "set", "inet", "nftvs", "node-ports").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "30090") {
				return fmt.Errorf("node-ports: %v %s", err, out)
			}
			took = time.Since(start)
			return nil
		})
		t.Logf("table rebuilt %v after nft flush ruleset (--ipvs-sync-period %v)", took.Round(time.Millisecond), syncPeriod)
		// By a sync the drift watch asked for, not by the periodic one.
		rebuiltBy := ""
		for _, s := range syncsSince(start) {
			for _, r := range s.res.NFT {
				if r.Rebuilt && rebuiltBy == "" {
					rebuiltBy = fmt.Sprintf("repair=%v", s.res.Repair)
				}
			}
		}
		if rebuiltBy != "repair=false" {
			t.Errorf("the table was rebuilt by %q, want a sync the drift watch asked for (repair=false)", rebuiltBy)
		}
		check(t, "out1 → node:30090 after the rebuild", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30090), 2), expect{only: []*pod{b2}, src: nodeSources(t, tb.ext0IP4, tb.ext1IP4)})
	})

	t.Run("a LoadBalancer with 5,000 source ranges", func(t *testing.T) {
		ranges := []string{"192.168.100.2/32"}
		for i := 0; len(ranges) < 5000; i++ {
			ranges = append(ranges, fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256))
		}
		huge := service("huge", "10.96.1.18", loadBalancer(0, "192.0.2.40"), sourceRanges(ranges...))
		start := time.Now()
		c.apply(t, huge, slice4(huge, readyEP(a1)))
		c.waitIPVS(t, tcpKey("192.0.2.40", 80), weights(podTCPPort, false, 1, a1))
		c.settle()
		t.Logf("5,000-range LoadBalancer programmed %v after it was created", time.Since(start).Round(time.Millisecond))
		// Others' changes keep flowing meanwhile.
		start = time.Now()
		c.apply(t, np, slice4(np, readyEP(b1)))
		c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30090}, weights(podTCPPort, false, 1, b1))
		t.Logf("another Service's endpoint change programmed %v after it was made", time.Since(start).Round(time.Millisecond))
		check(t, "allowed out1 → 192.0.2.40:80", out1.askN("tcp", ap("192.0.2.40", 80), 2), expect{only: []*pod{a1}})
		expectFailure(t, "out2 → 192.0.2.40:80", out2, "tcp", ap("192.0.2.40", 80), "no answer")
	})

	if s := c.syncErrors(); s != "" {
		t.Errorf("syncs failed while hostile objects were around:%s", s)
	}
}

type timedSync struct {
	at  time.Time
	res proxier.SyncResult
}
