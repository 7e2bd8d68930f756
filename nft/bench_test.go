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
