//go:build vmtest

package servicemetrics

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nftvs/nftvs/ipvs"
)

// BenchmarkCollectKernel is the cost of one scrape against the VM's real
// IPVS: one netlink dump of every virtual server's counters, one read of
// /proc/net/ip_vs, the summing. Run inside the test VM:
//
//	go test -tags vmtest -run XXX -bench CollectKernel -benchtime 20x -exec $PWD/e2e/vm/vmexec ./servicemetrics/
func BenchmarkCollectKernel(b *testing.B) {
	if os.Getenv("NFTVS_IN_VM") != "1" {
		b.Skip("KERNEL BENCHMARK SKIPPED: runs only inside the test VM")
	}
	k, err := ipvs.NewKernel("")
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c := New(k, vmServices(b, k, n), Options{TTL: -1})
			b.ResetTimer()
			for range b.N {
				if got := scrape(b, c); got != 7*n+2 {
					b.Fatalf("%d series, want %d", got, 7*n+2)
				}
			}
			b.StopTimer()
			b.ReportMetric(c.took.Seconds()*1000, "ms/read")
		})
	}
}

// BenchmarkReadParts splits one read into its two kernel reads, to say
// which one a scrape's cost is.
func BenchmarkReadParts(b *testing.B) {
	if os.Getenv("NFTVS_IN_VM") != "1" {
		b.Skip("KERNEL BENCHMARK SKIPPED: runs only inside the test VM")
	}
	k, err := ipvs.NewKernel("")
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	for _, n := range []int{1000, 10000} {
		vmServices(b, k, n)
		b.Run(fmt.Sprintf("netlink-dump/%d", n), func(b *testing.B) {
			for range b.N {
				if vs, err := k.GetVirtualServers(); err != nil || len(vs) != n {
					b.Fatalf("%d virtual servers, %v", len(vs), err)
				}
			}
		})
		b.Run(fmt.Sprintf("proc-ip_vs/%d", n), func(b *testing.B) {
			for range b.N {
				f, err := os.Open(ipvs.ProcIPVS)
				if err != nil {
					b.Fatal(err)
				}
				m, err := ipvs.ParseProcIPVS(f)
				f.Close()
				if err != nil || len(m) != n {
					b.Fatalf("%d virtual servers, %v", len(m), err)
				}
			}
		})
	}
}

// vmBuilt are the Services built in the VM's IPVS so far, shared by the
// benchmarks of one run: they are added, never removed, between sizes.
var vmBuilt = owners{}

// vmServices makes the VM's IPVS hold n Services, building the
// difference.
func vmServices(b *testing.B, k *ipvs.Kernel, n int) owners {
	if have := len(vmBuilt); have < n {
		start := time.Now()
		for key, v := range services(b, k, have, n) {
			vmBuilt[key] = v
		}
		b.Logf("built %d virtual servers × 2 real servers in %v", n, time.Since(start).Round(time.Millisecond))
	}
	return vmBuilt
}
