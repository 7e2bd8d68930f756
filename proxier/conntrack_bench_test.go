package proxier

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/internal/netnstest"
)

// BenchmarkKernelOneChangeSyncConntrack: a one-change sync, a pod of a
// Service replaced (one endpoint out, a new one in), against the size of
// the conntrack table. The table is the host kernel's, in a throwaway
// netns, holding `entries` UDP flows of other Services plus 16 flows of
// the endpoint that goes; IPVS and nftables are fakes, so the kernel work
// timed is the conntrack clean's alone.
//
//	clean=inline: the sync, then the clean of the removed endpoint's
//	              flows, as nftvs did before cleanqueue.go: what a change
//	              waited for, under the sync lock.
//	clean=queued: the sync alone, the clean queued (cleanqueue.go): what
//	              a change waits for now. The clean still runs, beside.
//
// Compare the two at each size, in one run (b.ReportMetric cleans/op
// says the cleans were done).
func BenchmarkKernelOneChangeSyncConntrack(b *testing.B) {
	netnstest.RequireRoot(b)
	for _, n := range []int{10_000, 100_000, 500_000} {
		for _, mode := range []string{"inline", "queued"} {
			b.Run(fmt.Sprintf("entries=%dk/clean=%s", n/1000, mode), func(b *testing.B) {
				netnstest.RaiseConntrackMax(b, n+n/4)
				ns := netnstest.New(b)
				fillConntrack(b, ns, n)
				c, err := conntrack.New(conntrack.WithNetNS(ns.FD()))
				if err != nil {
					b.Fatal(err)
				}
				f := newFakeNode(b)
				f.p.k.Conntrack = c
				svc := makeService("ns", "web", nodePort(30080))
				pod := func(i int) string { return fmt.Sprintf("10.244.%d.%d", 2+i/250, 1+i%250) }
				f.addService(svc, namedSlice("web-1", httpSlice(svc, ready("10.244.1.1", "node-b"), ready(pod(0), "node-b"))))
				f.sync(b, false)
				b.ResetTimer()
				for i := range b.N {
					// pod(i) goes, pod(i+1) comes: a rolling update. Its
					// flows are in the table for the clean to find.
					b.StopTimer()
					addPodFlows(b, ns, pod(i))
					f.p.OnEndpointSliceUpdate("ns", "web-1", httpSlice(svc, ready("10.244.1.1", "node-b"), ready(pod(i+1), "node-b")), "web")
					b.StartTimer()
					res, err := f.p.Sync(false)
					if err != nil {
						b.Fatal(err)
					}
					if len(res.Stale) == 0 {
						b.Fatal("the sync found nothing to clean")
					}
					if mode == "inline" {
						f.p.cleans.flush()
					}
				}
				b.StopTimer()
				f.p.cleans.flush()
			})
		}
	}
}

// fillConntrack creates n UDP entries in ns, none of them the benchmark
// Service's.
func fillConntrack(b *testing.B, ns *netnstest.NS, n int) {
	b.Helper()
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	start := time.Now()
	for k := range n {
		client := net.IPv4(100, byte(64+k>>16), byte(k>>8), byte(k))
		frontend := net.IPv4(10, 97, byte((k>>8)%64), byte(k))
		ep := net.IPv4(10, 200, byte(k>>8), byte(k))
		if err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, udpFlow(client, frontend, ep, uint16(10000+k%50000))); err != nil {
			b.Fatalf("create entry %d: %v", k, err)
		}
	}
	b.Logf("created %d conntrack entries in %v", n, time.Since(start).Round(time.Millisecond))
}

// addPodFlows creates 16 entries of clients talking to the Service's
// ClusterIP, answered by the pod at ip.
func addPodFlows(b *testing.B, ns *netnstest.NS, ip string) {
	b.Helper()
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	for k := range 16 {
		f := udpFlow(net.IPv4(100, 1, 0, byte(k)), net.IPv4(10, 96, 0, 10), net.ParseIP(ip), uint16(20000+k))
		f.Forward.Protocol, f.Reverse.Protocol = unix.IPPROTO_TCP, unix.IPPROTO_TCP
		f.Forward.DstPort, f.Reverse.SrcPort = 80, 8080
		f.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // ESTABLISHED
		if err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
			b.Fatalf("create a flow of %s: %v", ip, err)
		}
	}
}

// udpFlow is client:port → frontend:53, answered by ep:53.
func udpFlow(client, frontend, ep net.IP, port uint16) *netlink.ConntrackFlow {
	return &netlink.ConntrackFlow{
		FamilyType: unix.AF_INET,
		Forward:    netlink.IPTuple{SrcIP: client, DstIP: frontend, SrcPort: port, DstPort: 53, Protocol: unix.IPPROTO_UDP},
		Reverse:    netlink.IPTuple{SrcIP: ep, DstIP: client, SrcPort: 53, DstPort: port, Protocol: unix.IPPROTO_UDP},
		TimeOut:    3600,
	}
}
