package nft

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nftvs/nftvs/internal/netnstest"
)

// Benchmarks against the real kernel in a throwaway netns. Each Service
// port is 4 elements (ClusterIP, VIP, two hairpin endpoints).
//
//	full:        the whole table rebuilt in one transaction
//	incremental: one endpoint of one Service replaced (1 delete + 1 add)
//
// The goal is incremental cost independent of table size: compare
// incremental/50000 with incremental/1000 from the same run.
var benchSizes = []int{1000, 10000, 50000}

func benchTable(b *testing.B, services int) (*Table, *netnstest.NS) {
	ns := netnstest.New(b)
	tbl := kernelTable(b, ns, Config{})
	for i := range services {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), bigSvc(i))
	}
	mustSync(b, tbl, false)
	return tbl, ns
}

func BenchmarkKernelFullSync(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			tbl, _ := benchTable(b, n)
			b.ResetTimer()
			for range b.N {
				tbl.mu.Lock()
				tbl.needsBuild = true
				tbl.mu.Unlock()
				mustSync(b, tbl, false)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(4*n), "ns/element")
		})
	}
}

func BenchmarkKernelIncrementalSync(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			tbl, _ := benchTable(b, n)
			b.ResetTimer()
			for i := range b.N {
				es := bigSvc(7)
				es[3].Addr = netip.AddrFrom4([4]byte{10, 246, byte(i >> 8), byte(i)})
				_ = tbl.SetElements("ns/svc-7:http", es)
				res := mustSync(b, tbl, false)
				if res.Rebuilt || res.Added != 1 || res.Deleted != 1 {
					b.Fatalf("unexpected sync %+v", res)
				}
			}
		})
	}
}

// BenchmarkMirrorSetElements is the in-memory cost of declaring one
// Service's elements (no kernel).
func BenchmarkMirrorSetElements(b *testing.B) {
	tbl, _ := mustFake(b, Config{})
	for i := range 10000 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), bigSvc(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		_ = tbl.SetElements("ns/svc-7:http", bigSvc(i%10000))
	}
}

// rangesSvc is one LoadBalancer port with n source ranges (distinct /32s
// and /24s).
func rangesSvc(n int) []Element {
	lb := netip.MustParseAddr("192.0.2.1")
	es := []Element{
		{Set: LoadBalancerIPs, Addr: lb, Protocol: TCP, Port: 443},
		{Set: LoadBalancerFirewall, Addr: lb, Protocol: TCP, Port: 443},
	}
	for i := range n {
		src := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		if i%2 == 1 {
			src = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)}), 32)
		}
		es = append(es, Element{Set: LoadBalancerSourceRanges, Addr: lb, Protocol: TCP, Port: 443, Source: src})
	}
	return es
}

var rangeSizes = []int{500, 1000, 5000, 10000}

// BenchmarkSourceRanges declares and syncs one Service port with many
// loadBalancerSourceRanges, from nothing, on the fake: the mirror's work
// (normalisation, overlap checks). ns/range should stay flat.
func BenchmarkSourceRanges(b *testing.B) {
	for _, n := range rangeSizes {
		b.Run(fmt.Sprintf("ranges=%d", n), func(b *testing.B) {
			es := rangesSvc(n)
			for range b.N {
				tbl, _ := mustFake(b, Config{})
				if err := tbl.SetElements("ns/lb:https", es); err != nil {
					b.Fatal(err)
				}
				mustSync(b, tbl, false)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/range")
		})
	}
}

// BenchmarkKernelSourceRanges is the same against the kernel in a netns:
// a table of 1000 other Service ports, then the LoadBalancer with n
// ranges added in one incremental transaction (timed) and removed again
// (not timed).
func BenchmarkKernelSourceRanges(b *testing.B) {
	for _, n := range rangeSizes {
		b.Run(fmt.Sprintf("ranges=%d", n), func(b *testing.B) {
			tbl, _ := benchTable(b, 1000)
			es := rangesSvc(n)
			b.ResetTimer()
			for range b.N {
				if err := tbl.SetElements("ns/lb:https", es); err != nil {
					b.Fatal(err)
				}
				if res := mustSync(b, tbl, false); res.Added != n+2 {
					b.Fatalf("added %d, want %d", res.Added, n+2)
				}
				b.StopTimer()
				_ = tbl.SetElements("ns/lb:https", nil)
				mustSync(b, tbl, false)
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/range")
		})
	}
}

// BenchmarkKernelSourceRangesOtherChange: with one LoadBalancer of n
// source ranges programmed, another Service's firewall changes (one range
// added or removed in the same kernel set): the cost others pay for the
// big one.
func BenchmarkKernelSourceRangesOtherChange(b *testing.B) {
	for _, n := range rangeSizes {
		b.Run(fmt.Sprintf("ranges=%d", n), func(b *testing.B) {
			tbl, _ := benchTable(b, 1000)
			_ = tbl.SetElements("ns/lb:https", rangesSvc(n))
			mustSync(b, tbl, false)
			other := netip.MustParseAddr("192.0.2.2")
			small := []Element{
				{Set: LoadBalancerFirewall, Addr: other, Protocol: TCP, Port: 443},
				{Set: LoadBalancerSourceRanges, Addr: other, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("198.51.100.0/24")},
			}
			b.ResetTimer()
			for i := range b.N {
				es := small
				if i%2 == 1 {
					es = nil
				}
				_ = tbl.SetElements("ns/other:https", es)
				mustSync(b, tbl, false)
			}
		})
	}
}

// BenchmarkKernelRestart: a new Table over a programmed table (a
// restarted nftvs) declares the same elements and syncs: the table is
// read back and nothing is written. Against BenchmarkKernelFullSync, the
// rebuild it replaces.
func BenchmarkKernelRestart(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			_, ns := benchTable(b, n)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				tbl := kernelTable(b, ns, Config{})
				for i := range n {
					_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), bigSvc(i))
				}
				b.StartTimer()
				res := mustSync(b, tbl, true)
				if !res.Adopted || res.Added+res.Deleted != 0 {
					b.Fatalf("restart: %+v, want the table adopted and nothing written", res)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(4*n), "ns/element")
		})
	}
}
