//go:build vmtest

package proxier_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

// TestHostileTraffic: objects any namespace user may write that took
// another Service's traffic, or the node's, before issue 26. Each case
// makes the hostile object, then checks the victim with real traffic.
func TestHostileTraffic(t *testing.T) {
	requireVM(t)
	tb := newTestbed(t)
	cl := tb.addPod(t, "cl", nodeName, "10.244.1.99", "fd00:244:1::99")
	a1 := tb.addPod(t, "a1", nodeName, "10.244.1.11", "fd00:244:1::11")
	b1 := tb.addPod(t, "b1", remoteNode, "10.244.2.21", "fd00:244:2::21")
	b2 := tb.addPod(t, "b2", remoteNode, "10.244.2.22", "fd00:244:2::22")
	node, out1, out2 := tb.node, tb.out1, tb.out2
	// A host service on every address of the node.
	serve(t, node, "host-2223", "tcp", ":2223")

	// keepalived's way: an fwmark virtual server of its own (mark 7) on
	// an address of its own, made before nftvs starts.
	kaAddr := netip.MustParseAddr("198.51.100.77")
	keepalived(t, node, kaAddr, 7, netip.AddrPortFrom(b1.v4, podTCPPort))

	var mu sync.Mutex
	warnings := map[string][]string{} // Service → "reason: message"
	warnedFor := func(svc string) []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), warnings[svc]...)
	}
	warned := func(svc, reason string) error {
		for _, w := range warnedFor(svc) {
			if strings.HasPrefix(w, reason+": ") {
				return nil
			}
		}
		return fmt.Errorf("no %s warning for %s (got %q)", reason, svc, warnedFor(svc))
	}
	var resyncs int // guarded by mu
	c := startClusterOpts(t, tb, clusterOptions{
		// No full sync gets in the way: what a case needs is done by the
		// sync its own change asks for.
		syncPeriod:        time.Hour,
		ipvsResync:        2 * time.Second,
		maxVirtualServers: 100,
		onSync: func(res proxier.SyncResult, err error) {
			mu.Lock()
			if res.IPVSResync {
				resyncs++
			}
			mu.Unlock()
		},
		warn: func(svc, reason, msg string) {
			mu.Lock()
			warnings[svc] = append(warnings[svc], reason+": "+msg)
			mu.Unlock()
			t.Logf("warning: %s %s: %s", svc, reason, truncateLog(msg))
		},
	})
	// A Service that must keep working whatever the others do.
	np := service("np", "10.96.3.10", nodePort(30090))
	c.apply(t, np, slice4(np, readyEP(b2)))
	c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30090}, weights(podTCPPort, false, 1, b2))
	others := func(t *testing.T) {
		t.Helper()
		check(t, "out1 → node:30090 (another Service keeps working)", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30090), 2),
			expect{only: []*pod{b2}})
	}

	t.Run("1 an ETP=Local node port does not take other Services' ports", func(t *testing.T) {
		// The victim: a ClusterIP and an external IP on port 30100.
		victim := service("victim", "10.96.3.11", externalIPs("203.0.113.60"), func(s *v1.Service) { s.Spec.Ports[0].Port = 30100 })
		c.apply(t, victim, slice4(victim, readyEP(a1)))
		c.waitIPVS(t, tcpKey("10.96.3.11", 30100), weights(podTCPPort, false, 1, a1))
		// The tenant: node port 30100, externalTrafficPolicy Local, no
		// local endpoint.
		tenant := service("tenant", "10.96.3.12", nodePort(30100), etpLocal(0))
		c.apply(t, tenant, slice4(tenant, readyEP(b1)))
		c.waitIPVS(t, fwmarkKey(30100, false), weights(podTCPPort, false, 1, b1))
		c.settle()
		check(t, "pod → victim ClusterIP:30100", cl.ns.askN("tcp", ap("10.96.3.11", 30100), 4), expect{only: []*pod{a1}})
		check(t, "node → victim ClusterIP:30100", node.askN("tcp", ap("10.96.3.11", 30100), 4), expect{only: []*pod{a1}})
		check(t, "pod → victim external IP:30100", cl.ns.askN("tcp", ap("203.0.113.60", 30100), 2), expect{only: []*pod{a1}})
		check(t, "outside → victim external IP:30100", out1.askN("tcp", ap("203.0.113.60", 30100), 4), expect{only: []*pod{a1}})
		// The tenant's own node port still does what the Service API says.
		check(t, "pod → tenant node port (all endpoints)", cl.ns.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30100), 2), expect{only: []*pod{b1}})
		expectFailure(t, "outside → tenant node port (no local endpoint: dropped)", out1, "tcp", netip.AddrPortFrom(tb.ext0IP4, 30100), "no answer")
		others(t)
		c.deleteService(t, "tenant")
		c.deleteService(t, "victim")
	})

	t.Run("2 an externalIP does not squat on a load balancer's IP", func(t *testing.T) {
		squatter := service("squatter", "10.96.3.13", externalIPs("203.0.113.70"))
		squatter.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
		c.apply(t, squatter, slice4(squatter, readyEP(a1)))
		c.waitIPVS(t, tcpKey("203.0.113.70", 80), weights(podTCPPort, false, 1, a1))
		// Another namespace's LoadBalancer gets that IP from its
		// controller later, with a firewall.
		lb := service("shop-lb", "10.96.3.14", loadBalancer(0, "203.0.113.70"), sourceRanges("192.168.100.2/32"))
		lb.Namespace = "shop"
		lb.CreationTimestamp = metav1.NewTime(time.Now())
		c.apply(t, lb, slice4(lb, readyEP(b2)))
		c.waitIPVS(t, tcpKey("203.0.113.70", 80), weights(podTCPPort, false, 1, b2))
		c.eventually(t, "a FrontendConflict warning for the squatter", func() error { return warned("e2e/squatter", "FrontendConflict") })
		check(t, "out1 (allowed) → LB IP 203.0.113.70:80", out1.askN("tcp", ap("203.0.113.70", 80), 4), expect{only: []*pod{b2}})
		expectFailure(t, "out2 (not in the LB's source ranges) → 203.0.113.70:80", out2, "tcp", ap("203.0.113.70", 80), "no answer")
		for _, w := range warnedFor("e2e/squatter") {
			if strings.Contains(w, "shop") {
				t.Errorf("the squatter's Event names the other namespace's Service: %q", w)
			}
		}
		others(t)
		c.deleteService(t, "squatter")
		if err := c.client.CoreV1().Services("shop").Delete(context.Background(), "shop-lb", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitGone(t, tcpKey("203.0.113.70", 80))
	})

	t.Run("3 a relabelled EndpointSlice leaves the Service", func(t *testing.T) {
		victim := service("rl-victim", "10.96.3.15")
		c.apply(t, victim, slice4(victim, readyEP(a1)))
		evil := slice4(victim, readyEP(b1))
		evil.Name = "evil"
		c.apply(t, victim, evil)
		c.waitIPVS(t, tcpKey("10.96.3.15", 80), weights(podTCPPort, false, 1, a1, b1))
		ctx := context.Background()
		got, err := c.client.DiscoveryV1().EndpointSlices(namespace).Get(ctx, "evil", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got.Labels[discovery.LabelServiceName] = "elsewhere"
		if _, err := c.client.DiscoveryV1().EndpointSlices(namespace).Update(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitIPVS(t, tcpKey("10.96.3.15", 80), weights(podTCPPort, false, 1, a1))
		c.deleteSlice(t, "evil")
		c.settle()
		check(t, "pod → victim after the relabel and delete", cl.ns.askN("tcp", ap("10.96.3.15", 80), 6), expect{only: []*pod{a1}})
		c.waitIPVS(t, tcpKey("10.96.3.15", 80), weights(podTCPPort, false, 1, a1))
		c.deleteService(t, "rl-victim")
	})

	t.Run("4 1,000 refused addresses make one Event per change", func(t *testing.T) {
		loopbacks := func(first int) []string {
			var ips []string
			for i := first; i < first+1000; i++ {
				ips = append(ips, fmt.Sprintf("127.1.%d.%d", i/250, 1+i%250))
			}
			return ips
		}
		for change := range 3 {
			svc := service("noisy", "10.96.3.16", externalIPs(loopbacks(change)...))
			c.apply(t, svc, slice4(svc, readyEP(a1)))
			c.eventually(t, fmt.Sprintf("Event %d", change+1), func() error {
				if n := len(warnedFor("e2e/noisy")); n < change+1 {
					return fmt.Errorf("%d Events", n)
				}
				return nil
			})
		}
		c.settle()
		check(t, "pod → noisy ClusterIP (the rest of the Service works)", cl.ns.askN("tcp", ap("10.96.3.16", 80), 2), expect{only: []*pod{a1}})
		ws := warnedFor("e2e/noisy")
		if len(ws) != 3 {
			t.Errorf("%d Events for 3 changes of 1,000 refused addresses, want 3", len(ws))
		}
		for _, w := range ws {
			if !strings.HasPrefix(w, "RefusedAddress: 1000 fields not programmed") || len(w) > 1100 {
				t.Errorf("Event %q", truncateLog(w))
			}
		}
		if got := command("ip", "-br", "addr", "show", "dev", ipvs.DummyName); strings.Contains(got, "127.1.") {
			t.Errorf("a loopback address is on %s: %s", ipvs.DummyName, got)
		}
		others(t)
		c.deleteService(t, "noisy")
	})

	t.Run("5 a Service beyond a bound is refused whole", func(t *testing.T) {
		var ips []string
		for i := range 150 {
			ips = append(ips, fmt.Sprintf("203.0.113.%d", 100+i))
		}
		wide := service("wide", "10.96.3.17", externalIPs(ips...))
		c.apply(t, wide, slice4(wide, readyEP(a1)))
		c.eventually(t, "a ServiceTooLarge warning", func() error { return warned("e2e/wide", "ServiceTooLarge") })
		// Others' changes keep flowing.
		c.apply(t, np, slice4(np, readyEP(b1)))
		c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30090}, weights(podTCPPort, false, 1, b1))
		if got, _, ok, _ := c.realServers(tcpKey("10.96.3.17", 80)); ok {
			t.Errorf("the Service above the bound has a virtual server: %s", got)
		}
		if got := command("ip", "-br", "addr", "show", "dev", ipvs.DummyName); strings.Contains(got, "10.96.3.17") {
			t.Errorf("the refused Service's ClusterIP is on %s: %s", ipvs.DummyName, got)
		}
		check(t, "out1 → node:30090", out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30090), 2), expect{only: []*pod{b1}})
		c.apply(t, np, slice4(np, readyEP(b2)))
		c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30090}, weights(podTCPPort, false, 1, b2))
		c.deleteService(t, "wide")
	})

	t.Run("6 an address the node gains or loses is served or let go at once", func(t *testing.T) {
		extra := netip.MustParseAddr("192.168.100.77")
		l := node.link(t, "ext0")
		start := time.Now()
		node.addAddr(t, l, netip.PrefixFrom(extra, 24))
		c.waitIPVS(t, ipvs.VSKey{Address: extra, Protocol: ipvs.TCP, Port: 30090}, weights(podTCPPort, false, 1, b2))
		gained := time.Since(start)
		check(t, "out1 → the new address:30090", out1.askN("tcp", netip.AddrPortFrom(extra, 30090), 2), expect{only: []*pod{b2}})
		start = time.Now()
		if err := node.NL.AddrDel(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(extra, 24))}); err != nil {
			t.Fatal(err)
		}
		c.waitGone(t, ipvs.VSKey{Address: extra, Protocol: ipvs.TCP, Port: 30090})
		lost := time.Since(start)
		t.Logf("an added address served in %v, a removed one let go in %v (--ipvs-sync-period 1h)", gained.Round(time.Millisecond), lost.Round(time.Millisecond))
		// Seconds, not the sync period: the bound leaves room for an
		// emulated VM, the period is an hour.
		if gained > 10*time.Second || lost > 10*time.Second {
			t.Errorf("address changes took %v and %v", gained, lost)
		}
	})

	t.Run("7a a port renamed to another protocol keeps working", func(t *testing.T) {
		dns := func(proto v1.Protocol) *v1.Service {
			return service("proto", "10.96.3.18", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{{Name: "dns", Port: 53, Protocol: proto}}
			})
		}
		c.apply(t, dns(v1.ProtocolTCP), slice4(dns(v1.ProtocolTCP), readyEP(a1)))
		c.waitIPVS(t, tcpKey("10.96.3.18", 53), rs{})
		c.apply(t, dns(v1.ProtocolUDP))
		c.waitIPVS(t, udpKey("10.96.3.18", 53), weights(podUDPPort, false, 1, a1))
		c.settle()
		check(t, "pod → 10.96.3.18:53/UDP after the rename", cl.ns.askN("udp", ap("10.96.3.18", 53), 3), expect{only: []*pod{a1}})
		// The ClusterIP keeps its filter: a host service is not exposed
		// on it (the renamed port's elements, ipvs-addresses among them,
		// were dropped with the old protocol's before).
		expectFailure(t, "pod → 10.96.3.18:2223 (a host service, not a Service port)", cl.ns, "tcp", ap("10.96.3.18", 2223), "refused")
		c.deleteService(t, "proto")
	})

	t.Run("7b keepalived's fwmark virtual server survives IPVS resyncs", func(t *testing.T) {
		// The first sync dumped IPVS and deleted what it did not want;
		// another full sync (a Node change) does it again.
		mu.Lock()
		before := resyncs
		mu.Unlock()
		if before == 0 {
			t.Fatal("the first sync did not resync IPVS")
		}
		time.Sleep(2 * time.Second) // ipvsResync
		c.setNodeIPs(t, tb.ext0IP4)
		c.eventually(t, "an IPVS resync", func() error {
			mu.Lock()
			defer mu.Unlock()
			if resyncs <= before {
				return fmt.Errorf("%d resyncs", resyncs)
			}
			return nil
		})
		got, vs, ok, err := c.realServers(ipvs.VSKey{FWMark: 7})
		if err != nil || !ok || got.String() != (rs{netip.AddrPortFrom(b1.v4, podTCPPort): 3}).String() || vs.Scheduler != "wrr" {
			t.Errorf("keepalived's fwmark 7 is %v %s %s %v", ok, got, vs.Scheduler, err)
		}
		check(t, "out1 → keepalived's address (fwmark 7)", out1.askN("tcp", netip.AddrPortFrom(kaAddr, 80), 2), expect{only: []*pod{b1}})
		c.setNodeIPs(t, tb.ext0IP4, tb.ext0IP6)
	})

	t.Run("7c an IPv4-mapped source range closes, with an Event", func(t *testing.T) {
		lb := service("mapped", "10.96.3.19", loadBalancer(0, "192.0.2.80"), sourceRanges("::ffff:192.168.100.0/120"))
		c.apply(t, lb, slice4(lb, readyEP(a1)))
		c.eventually(t, "an InvalidSourceRange warning", func() error { return warned("e2e/mapped", "InvalidSourceRange") })
		c.waitIPVS(t, tcpKey("192.0.2.80", 80), weights(podTCPPort, false, 1, a1))
		expectFailure(t, "out1 → 192.0.2.80:80 (no usable range: closed)", out1, "tcp", ap("192.0.2.80", 80), "no answer")
		c.deleteService(t, "mapped")
	})

	t.Run("7d the API server's address is refused", func(t *testing.T) {
		api := netip.MustParseAddr("10.0.2.100") // e2e/controlplane.GuestServer
		if _, err := net.InterfaceByName("eth0"); err != nil {
			t.Fatalf("no eth0: the VM tests run under with-apiserver (make test-vm), which gives the guest its way to the API server")
		}
		kubernetes := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes"},
			Spec: v1.ServiceSpec{ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1"}, Ports: []v1.ServicePort{{Name: "https", Port: 443, Protocol: v1.ProtocolTCP}}}}
		port, tcp, name := int32(6443), v1.ProtocolTCP, "https"
		ready := true
		eps := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "kubernetes", Labels: map[string]string{discovery.LabelServiceName: "kubernetes"}},
			AddressType: discovery.AddressTypeIPv4,
			Endpoints:   []discovery.Endpoint{{Addresses: []string{api.String()}, Conditions: discovery.EndpointConditions{Ready: &ready}}},
			Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &tcp}},
		}
		c.apply(t, kubernetes, eps)
		c.waitIPVS(t, tcpKey("10.96.0.1", 443), rs{netip.AddrPortFrom(api, 6443): 1})
		evil := service("api-thief", "10.96.3.20", externalIPs(api.String()), func(s *v1.Service) { s.Spec.Ports[0].Port = 6443 })
		c.apply(t, evil, slice4(evil, readyEP(b1)))
		c.eventually(t, "a RefusedAddress warning", func() error { return warned("e2e/api-thief", "RefusedAddress") })
		c.waitIPVS(t, tcpKey("10.96.3.20", 6443), weights(podTCPPort, false, 1, b1))
		if got, _, ok, _ := c.realServers(tcpKey(api.String(), 6443)); ok {
			t.Errorf("a virtual server on the API server's address: %s", got)
		}
		if got := command("ip", "-br", "addr", "show", "dev", ipvs.DummyName); strings.Contains(got, api.String()) {
			t.Errorf("the API server's address is on %s: %s", ipvs.DummyName, got)
		}
		// The node still reaches its API server.
		if err := node.do(func() error {
			conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(api, 6443).String(), 5*time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		}); err != nil {
			t.Errorf("node → API server %s:6443: %v", api, err)
		}
		c.deleteService(t, "api-thief")
	})

	if s := c.syncErrors(); s != "" {
		t.Errorf("syncs failed while hostile objects were around:%s", s)
	}
}

// keepalived makes what keepalived would: addr on a dummy link of its
// own, an nftables table marking traffic to addr:80 with mark, and an
// IPVS fwmark virtual server for mark (wrr) with one real server of
// weight 3.
func keepalived(t *testing.T, node *netNS, addr netip.Addr, mark uint32, real netip.AddrPort) {
	t.Helper()
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "keepalived0"}}
	if err := node.NL.LinkAdd(link); err != nil {
		t.Fatalf("dummy link: %v", err)
	}
	t.Cleanup(func() { _ = node.NL.LinkDel(link) })
	l := node.link(t, "keepalived0")
	node.addAddr(t, l, hostPrefix(addr))
	node.up(t, l)
	table := fmt.Sprintf("table inet keepalived {\n\tchain pre {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n"+
		"\t\tip daddr %s tcp dport 80 meta mark set %d\n\t}\n}\n", addr, mark)
	nftRun := exec.Command("nft", "-f", "-")
	nftRun.Stdin = strings.NewReader(table)
	if out, err := nftRun.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("nft", "delete", "table", "inet", "keepalived").Run() })
	for _, args := range [][]string{
		{"-A", "-f", fmt.Sprint(mark), "-s", "wrr"},
		{"-a", "-f", fmt.Sprint(mark), "-r", real.String(), "-m", "-w", "3"},
	} {
		if out, err := exec.Command("ipvsadm", args...).CombinedOutput(); err != nil {
			t.Fatalf("ipvsadm %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ipvsadm", "-D", "-f", fmt.Sprint(mark)).Run() })
}

func truncateLog(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}
