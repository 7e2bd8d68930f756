package proxier

import (
	"fmt"
	goruntime "runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// benchObjects are n Services with a slice of 10 endpoints each, on
// another node, as the benchmarks plan them.
func benchObjects(n int) ([]*v1.Service, []*discovery.EndpointSlice) {
	var svcs []*v1.Service
	var slices []*discovery.EndpointSlice
	for i := range n {
		svc := makeService("ns", fmt.Sprintf("svc-%d", i), clusterIPs(fmt.Sprintf("10.%d.%d.%d", 96+i>>16, (i>>8)&0xff, i&0xff)))
		var eps []ep
		for j := range 10 {
			eps = append(eps, ready(fmt.Sprintf("10.%d.%d.%d", 128+j, (i>>8)&0xff, i&0xff), "node-b"))
		}
		svcs, slices = append(svcs, svc), append(slices, namedSlice(svc.Name, httpSlice(svc, eps...)))
	}
	return svcs, slices
}

// heapObjects is the heap the GC has not freed yet, live and dead: what
// a process's RSS follows (runtime/metrics reads it without stopping the
// world, so it can be sampled often).
const heapObjects = "/memory/classes/heap/objects:bytes"

// peakHeap samples heapObjects every 100 µs while fn runs and returns the
// largest value seen.
func peakHeap(fn func()) uint64 {
	sample := []metrics.Sample{{Name: heapObjects}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	peak := read()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		s := []metrics.Sample{{Name: heapObjects}}
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Microsecond):
			}
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
		}
	})
	fn()
	close(done)
	wg.Wait()
	return max(peak, read())
}

// liveHeap is the heap after a collection.
func liveHeap() uint64 {
	goruntime.GC()
	var m goruntime.MemStats
	goruntime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkProxierPeakHeap reports, per Service (× 10 endpoints), the
// largest heap (live and not yet collected) of each phase a node goes
// through, above the heap of the Services, EndpointSlices and fake
// kernels alone: the first sync, the live heap after it, the periodic
// repair (every SyncPeriod), the repair with an IPVS resync (every
// IPVSResyncPeriod: every real server read back), and a restart (a new
// proxier reading the programmed kernel ahead, then its first sync).
// Peak RSS follows the largest of these. GOGC applies as in nftvs.
func BenchmarkProxierPeakHeap(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				svcs, apiSlices := benchObjects(n)
				// The slices as the informers hold them and hand them over.
				slices := make([]*cachedSlice, n)
				for i, s := range apiSlices {
					c, _ := StripUnread(s)
					slices[i] = c.(*cachedSlice)
				}
				apiSlices = nil
				f := newFakeNode(b)
				addService := func(i int) {
					f.p.OnServiceUpdate(types.NamespacedName{Namespace: svcs[i].Namespace, Name: svcs[i].Name}, svcs[i])
					c := slices[i]
					f.p.updateEndpointSlice(c.Namespace, c.Name, &c.eps, c.service, c.trigger)
				}
				base := liveHeap()
				perService := func(v uint64) float64 { return float64(int64(v)-int64(base)) / float64(n) }
				report := func(name string, v uint64) { b.ReportMetric(perService(v), name+"-B/svc") }

				report("first-sync-peak", peakHeap(func() {
					for i := range svcs {
						addService(i)
					}
					f.sync(b, false)
				}))
				report("live", liveHeap())
				report("repair-peak", peakHeap(func() {
					f.clock.Step(time.Minute)
					if _, err := f.p.Repair(); err != nil {
						b.Fatal(err)
					}
				}))
				// Steady state: changes and periodic repairs, as a node lives
				// after its first sync. Their garbage piles up to the GC's
				// goal (GOGC: by default twice the live heap) before a
				// collection: the heap's sawtooth, which peak RSS sees.
				liveHeap()
				report("steady-peak", peakHeap(func() {
					svc := svcs[7]
					for i := range 200 {
						eps := []ep{ready(fmt.Sprintf("10.200.%d.%d", i>>8&0xff, i&0xff), "node-b")}
						for j := 1; j < 10; j++ {
							eps = append(eps, ready(fmt.Sprintf("10.%d.0.7", 128+j), "node-b"))
						}
						f.p.OnEndpointSliceUpdate("ns", svc.Name, namedSlice(svc.Name, httpSlice(svc, eps...)), svc.Name)
						f.sync(b, false)
						if i%20 == 0 {
							f.clock.Step(30 * time.Second)
							if _, err := f.p.Repair(); err != nil {
								b.Fatal(err)
							}
						}
					}
					addService(7) // as the restart is told
					f.sync(b, false)
				}))
				liveHeap()
				report("resync-peak", peakHeap(func() {
					f.clock.Step(DefaultIPVSResyncPeriod)
					if _, err := f.p.Repair(); err != nil {
						b.Fatal(err)
					}
				}))
				liveHeap()
				// The old proxier is garbage before the restart starts, as
				// in a new process.
				f.restarted(b)
				liveHeap()
				report("restart-peak", peakHeap(func() {
					f.p.ReadAhead()
					for i := range svcs {
						addService(i)
					}
					if res := f.sync(b, false); res.IPVS.Writes.Total() != 0 {
						b.Fatalf("restart wrote: %+v", res)
					}
				}))
				goruntime.KeepAlive(svcs)
				goruntime.KeepAlive(slices)
			}
		})
	}
}
