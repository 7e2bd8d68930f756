package servicemetrics

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

// services builds Services from..to-1, each one ClusterIP virtual server
// with two real servers, in h, and names them.
func services(tb testing.TB, h ipvs.Interface, from, to int) owners {
	tb.Helper()
	o := owners{}
	for i := from; i < to; i++ {
		k := ipvs.VSKey{Address: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Protocol: ipvs.TCP, Port: 80}
		if err := h.AddVirtualServer(ipvs.VirtualServer{VSKey: k, Scheduler: "rr"}); err != nil {
			tb.Fatal(err)
		}
		for j := range 2 {
			rs := ipvs.RealServer{Address: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), Port: uint16(8080 + j), Weight: 1}
			if err := h.AddRealServer(k, rs); err != nil {
				tb.Fatal(err)
			}
		}
		o[k.Key()] = proxier.ServicePortName{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i), Port: "http"}
	}
	return o
}

// scrape is one full collection, as the metrics handler does it, without
// the text encoding.
func scrape(b *testing.B, c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 1024)
	n := 0
	go func() { c.Collect(ch); close(ch) }()
	for range ch {
		n++
	}
	return n
}

// BenchmarkCollectFake is the summing and series building over an
// in-memory IPVS table: the collector's own cost, without the kernel.
func BenchmarkCollectFake(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f := ipvs.NewFake()
			c := New(f, services(b, f, 0, n), Options{TTL: -1})
			b.ResetTimer()
			for range b.N {
				if got := scrape(b, c); got != 7*n+2 {
					b.Fatalf("%d series, want %d", got, 7*n+2)
				}
			}
		})
	}
}
