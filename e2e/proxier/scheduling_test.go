//go:build vmtest

package proxier_test

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

func annotate(kv ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Annotations[kv[i]] = kv[i+1]
		}
	}
}

// ipvsadmLine is the line of `ipvsadm -Ln` for the virtual server on
// addrPort, or "".
func ipvsadmLine(out, addrPort string) string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[1] == addrPort {
			return l
		}
	}
	return ""
}

// waitScheduling waits until the kernel's virtual server key has
// scheduler sched and flags (the hashed flag aside).
func (c *cluster) waitScheduling(t *testing.T, key ipvs.VSKey, sched string, flags ipvs.Flags) {
	t.Helper()
	c.eventually(t, fmt.Sprintf("IPVS %s with scheduler %s flags %v", key, sched, flags), func() error {
		_, vs, ok, err := c.realServers(key)
		switch {
		case err != nil:
			return err
		case !ok:
			return fmt.Errorf("no such virtual server")
		case vs.Scheduler != sched || vs.Flags&^ipvs.FlagHashed != flags:
			return fmt.Errorf("scheduler %s flags %v", vs.Scheduler, vs.Flags&^ipvs.FlagHashed)
		}
		return nil
	})
}

// TestScheduling: per-Service IPVS scheduling by annotation, with real
// traffic in the VM. The node's scheduler is rr.
func TestScheduling(t *testing.T) {
	requireVM(t)
	tb := newTestbed(t)
	cl := tb.addPod(t, "cl", nodeName, "10.244.1.99", "fd00:244:1::99")
	a1 := tb.addPod(t, "a1", nodeName, "10.244.1.11", "fd00:244:1::11")
	a2 := tb.addPod(t, "a2", nodeName, "10.244.1.12", "fd00:244:1::12")
	a3 := tb.addPod(t, "a3", nodeName, "10.244.1.13", "fd00:244:1::13")
	pods := []*pod{a1, a2, a3}
	const echoPort = 9090
	for _, p := range pods {
		echoServer(t, p.ns, p.name, echoPort)
	}

	// Probed as nftvs probes them at start.
	k, err := ipvs.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	offered, err := ipvs.ProbeSchedulers(k, ipvs.KernelSchedulers)
	k.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the kernel offers %v", offered)

	var mu sync.Mutex
	var warnings []string
	c := startClusterOpts(t, tb, clusterOptions{
		schedulers: offered,
		syncPeriod: 2 * time.Second, // full syncs often: a warning must still come once
		warn: func(svc, reason, msg string) {
			mu.Lock()
			defer mu.Unlock()
			warnings = append(warnings, svc+" "+reason+": "+msg)
		},
	})
	warned := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), warnings...)
	}

	rrKey, shKey := tcpKey("10.96.0.60", 80), tcpKey("10.96.0.61", 80)
	shSvc := service("sched-sh", "10.96.0.61", annotate(proxier.AnnotationScheduler, "sh", proxier.AnnotationSchedulerFlags, "sh-port"))

	t.Run("rr and sh with sh-port: ipvsadm shows each, sh-port hashes the port, rr spreads", func(t *testing.T) {
		rr := service("sched-rr", "10.96.0.60", annotate(proxier.AnnotationScheduler, "rr"))
		c.apply(t, rr, slice4(rr, readyEP(a1), readyEP(a2), readyEP(a3)))
		c.apply(t, shSvc, slice4(shSvc, readyEP(a1), readyEP(a2), readyEP(a3)))
		c.waitIPVS(t, rrKey, weights(podTCPPort, false, 1, pods...))
		c.waitIPVS(t, shKey, weights(podTCPPort, false, 1, pods...))
		c.waitScheduling(t, rrKey, "rr", 0)
		c.waitScheduling(t, shKey, "sh", ipvs.FlagSched2)

		out := command("ipvsadm", "-Ln")
		t.Logf("ipvsadm -Ln:\n%s", out)
		if l := ipvsadmLine(out, "10.96.0.60:80"); !strings.Contains(l, " rr") {
			t.Errorf("ipvsadm line of sched-rr %q, want scheduler rr", l)
		}
		if l := ipvsadmLine(out, "10.96.0.61:80"); !strings.Contains(l, " sh") || !strings.Contains(l, "sh-port") {
			t.Errorf("ipvsadm line of sched-sh %q, want scheduler sh with sh-port", l)
		}

		check(t, "rr: cl → 10.96.0.60:80", cl.ns.askN("tcp", ap("10.96.0.60", 80), 6),
			expect{only: pods, seeAll: pods})
		// sh-port hashes the source port too: one client on new source
		// ports reaches more than one pod (plain sh would pin it to one;
		// 12 connections on one pod of three by chance: 3^-11).
		tl := cl.ns.askN("tcp", ap("10.96.0.61", 80), 12)
		check(t, "sh sh-port: cl → 10.96.0.61:80", tl, expect{only: pods})
		if n := len(tl.pods()); n < 2 {
			t.Errorf("sh with sh-port: 12 connections from new source ports all reached one pod: %s", tl)
		}
	})

	t.Run("an annotation edit changes the virtual server in place; an established connection survives", func(t *testing.T) {
		edit := service("sched-edit", "10.96.0.62", annotate(proxier.AnnotationScheduler, "sh", proxier.AnnotationSchedulerFlags, "sh-port"))
		key := tcpKey("10.96.0.62", 80)
		c.apply(t, edit, echoSlice4(edit, echoPort, readyEP(a1), readyEP(a2), readyEP(a3)))
		c.waitIPVS(t, key, weights(echoPort, false, 1, pods...))
		c.waitScheduling(t, key, "sh", ipvs.FlagSched2)
		conn, err := cl.ns.dialEcho(netip.AddrPortFrom(netip.MustParseAddr("10.96.0.62"), 80))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.c.Close()
		first, err := conn.roundTrip("before")
		if err != nil {
			t.Fatal(err)
		}
		roundTrip := func(when string) {
			t.Helper()
			who, err := conn.roundTrip(when)
			switch {
			case err != nil:
				t.Errorf("the connection established before the edits broke %s: %v", when, err)
			case who != first:
				t.Errorf("%s: answered by %s, the connection was with %s", when, who, first)
			}
		}

		// sh without flags: one client is pinned to one pod, whatever
		// its source port.
		edit.Annotations = map[string]string{proxier.AnnotationScheduler: "sh"}
		c.apply(t, edit)
		c.waitScheduling(t, key, "sh", 0)
		roundTrip("after sh-port → sh")
		var tl tally
		for range 8 {
			e, err := cl.ns.dialEcho(netip.AddrPortFrom(netip.MustParseAddr("10.96.0.62"), 80))
			if err != nil {
				tl.errs = append(tl.errs, err)
				continue
			}
			who, err := e.roundTrip("x")
			e.c.Close()
			if err != nil {
				tl.errs = append(tl.errs, err)
				continue
			}
			tl.answers = append(tl.answers, answer{Pod: who})
		}
		check(t, "sh: cl → 10.96.0.62:80 on 8 source ports", tl, expect{only: pods, onePod: true})

		// Then rr, then mh with the fallback flag, then the node's
		// scheduler (annotation removed): every step in place.
		edit.Annotations = map[string]string{proxier.AnnotationScheduler: "rr"}
		c.apply(t, edit)
		c.waitScheduling(t, key, "rr", 0)
		roundTrip("after sh → rr")
		edit.Annotations = map[string]string{proxier.AnnotationScheduler: "mh", proxier.AnnotationSchedulerFlags: "mh-fallback,mh-port"}
		c.apply(t, edit)
		c.waitScheduling(t, key, "mh", ipvs.FlagSched1|ipvs.FlagSched2)
		roundTrip("after rr → mh")
		edit.Annotations = map[string]string{proxier.KubeRouterScheduler: "lc"}
		c.apply(t, edit)
		c.waitScheduling(t, key, "lc", 0)
		roundTrip("after mh → kube-router's lc")
		edit.Annotations = nil
		c.apply(t, edit)
		c.waitScheduling(t, key, "rr", 0)
		roundTrip("after the annotation is removed")
		conns, err := c.ipvs.GetConnections(key)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("connections per real server after the edits: %v", conns)
	})

	t.Run("a bad value keeps the node's scheduler and warns once", func(t *testing.T) {
		before := len(warned())
		bad := shSvc.DeepCopy()
		bad.Annotations = map[string]string{proxier.AnnotationScheduler: "fastest"}
		c.apply(t, bad)
		c.waitScheduling(t, shKey, "rr", 0)
		c.waitIPVS(t, shKey, weights(podTCPPort, false, 1, pods...))
		check(t, "fallen back to rr: cl → 10.96.0.61:80", cl.ns.askN("tcp", ap("10.96.0.61", 80), 6),
			expect{only: pods, seeAll: pods})
		time.Sleep(5 * time.Second) // at least two full syncs (syncPeriod 2 s)
		got := warned()[before:]
		if len(got) != 1 || !strings.Contains(got[0], "e2e/sched-sh "+proxier.ReasonInvalidScheduler+": ") ||
			!strings.Contains(got[0], `unknown IPVS scheduler "fastest"`) || !strings.Contains(got[0], "keeps the node's scheduler rr") {
			t.Errorf("warnings %q, want one InvalidScheduler for e2e/sched-sh", got)
		} else {
			t.Logf("warning: %s", got[0])
		}
	})

	t.Run("session affinity with every scheduler the kernel offers", func(t *testing.T) {
		keys := map[string]ipvs.VSKey{}
		for i, s := range offered {
			ip := fmt.Sprintf("10.96.1.%d", 10+i)
			svc := service("aff-"+s, ip, clientIPAffinity(300), annotate(proxier.AnnotationScheduler, s))
			c.apply(t, svc, slice4(svc, readyEP(a1), readyEP(a2), readyEP(a3)))
			keys[s] = tcpKey(ip, 80)
		}
		for _, s := range offered {
			c.waitIPVS(t, keys[s], weights(podTCPPort, false, 1, pods...))
			c.waitScheduling(t, keys[s], s, ipvs.FlagPersistent|ipvs.SchedulerFlags(s))
			_, vs, _, _ := c.realServers(keys[s])
			if vs.Timeout != 300 {
				t.Errorf("%s: persistence timeout %d, want 300", s, vs.Timeout)
			}
			check(t, s+" with ClientIP affinity: cl → "+keys[s].String(), cl.ns.askN("tcp", netip.AddrPortFrom(keys[s].Address, 80), 4),
				expect{only: pods, onePod: true})
		}
	})
}
