//go:build vmtest

package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func checkKernelHolds(t *testing.T, k Interface, want []Service) {
	t.Helper()
	if got, want := Format(dump(t, k)), Format(normalizedServices(want)); got != want {
		t.Errorf("kernel:\n%s\nwant:\n%s", got, want)
	}
}

func TestKernelReconciler(t *testing.T) {
	k, _ := newKernel(t)
	c := NewCounting(k)
	exclude := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	r := NewReconciler(c, exclude)

	// Somebody else's virtual servers, and leftovers of a previous run.
	theirs := []Service{
		svc(key(TCP, "192.0.2.50:80"), "wlc", rs("192.0.2.100:80", 5)),
		svc(key(UDP, "[2001:db8::50]:53"), "rr", rs("[2001:db8::100]:53", 1)),
	}
	leftovers := []Service{
		svc(key(TCP, "10.96.250.1:80"), "rr", rs("10.250.0.1:80", 1)),
		svc(fwmark(0x7777, false), "rr", rs("10.250.0.1:80", 1)),
	}
	for _, s := range append(theirs, leftovers...) {
		if err := k.AddVirtualServer(s.VirtualServer); err != nil {
			t.Fatal(err)
		}
		for _, x := range s.RealServers {
			if err := k.AddRealServer(s.VSKey, x); err != nil {
				t.Fatal(err)
			}
		}
	}

	desired := manyServices(40, 3)
	res, err := r.Resync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if want := (WriteCounts{AddVirtualServer: 40, AddRealServer: 120, DeleteVirtualServer: 2}); res.Writes != want || c.Writes() != want {
		t.Errorf("first resync: result %+v, counted %+v, want %+v", res.Writes, c.Writes(), want)
	}
	if len(res.Removed) != 2 {
		t.Errorf("removed %v, want the leftovers' 2 real servers", res.Removed)
	}
	checkKernelHolds(t, k, append(append([]Service{}, desired...), theirs...))

	t.Run("nothing changed: zero writes", func(t *testing.T) {
		c.Reset()
		if res, err := r.Resync(desired); err != nil || res.Writes.Total() != 0 || c.Writes().Total() != 0 {
			t.Errorf("resync: %v, result %+v, counted %+v", err, res.Writes, c.Writes())
		}
		// One list of virtual servers and one bulk read of real servers
		// (/proc/net/ip_vs). A virtual server the bulk read missed is
		// dumped alone: 6.1's reader skips records while another network
		// namespace (an earlier test's, still being torn down) holds IPVS
		// services, so only the upper bound is exact here;
		// TestKernelAllRealServersAtScale checks the bulk read itself.
		t.Logf("resync read %d times for %d virtual servers", c.Reads(), len(desired))
		if most := 2 + len(desired); c.Reads() > most {
			t.Errorf("resync read %d times, want at most %d", c.Reads(), most)
		}
		c.Reset()
		if res, err := r.Apply(desired, nil); err != nil || res.Writes.Total() != 0 || c.Writes().Total() != 0 || c.Reads() != 0 {
			t.Errorf("apply: %v, result %+v, counted %+v writes, %d reads", err, res.Writes, c.Writes(), c.Reads())
		}
	})

	t.Run("resync repairs drift", func(t *testing.T) {
		// Behind the Reconciler's back: a virtual server deleted, a real
		// server re-weighted, one deleted, one added, a scheduler changed.
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(k.DeleteVirtualServer(desired[0].VSKey))
		must(k.UpdateRealServer(desired[1].VSKey, RealServer{Address: desired[1].RealServers[0].Address, Port: 8080, Weight: 9}))
		must(k.DeleteRealServer(desired[2].VSKey, desired[2].RealServers[1]))
		extra := desired[3].RealServers[0]
		extra.Port = 9999
		must(k.AddRealServer(desired[3].VSKey, extra))
		must(k.UpdateVirtualServer(VirtualServer{VSKey: desired[4].VSKey, Scheduler: "lc"}))

		// Apply trusts its cache: it does not see the drift.
		c.Reset()
		if res, _ := r.Apply(desired, nil); res.Writes.Total() != 0 {
			t.Errorf("apply saw drift without a dump: %+v", res.Writes)
		}
		c.Reset()
		res, err := r.Resync(desired)
		if err != nil {
			t.Fatal(err)
		}
		want := WriteCounts{AddVirtualServer: 1, AddRealServer: 3 + 1, UpdateRealServer: 1, DeleteRealServer: 1, UpdateVirtualServer: 1}
		if res.Writes != want || c.Writes() != want {
			t.Errorf("repair: result %+v, counted %+v, want %+v", res.Writes, c.Writes(), want)
		}
		checkKernelHolds(t, k, append(append([]Service{}, desired...), theirs...))
		c.Reset()
		if res, _ := r.Resync(desired); res.Writes.Total() != 0 {
			t.Errorf("resync after repair: %+v", res.Writes)
		}
	})

	t.Run("apply changes in place", func(t *testing.T) {
		next := manyServices(40, 3)
		next[5].Scheduler = "wrr"                           // update in place
		next[6].Flags, next[6].Timeout = FlagPersistent, 30 // sessionAffinity
		next[7].RealServers[0].Weight = 0                   // draining
		next[8].RealServers = next[8].RealServers[:2]       // one gone
		next[10].RealServers = append(next[10].RealServers, RealServer{Address: netip.MustParseAddr("10.9.9.9"), Port: 8080, Weight: 1})
		deleted := next[11].VSKey
		next = append(next[:11], next[12:]...)
		c.Reset()
		res, err := r.Apply(next, []VSKey{deleted})
		if err != nil {
			t.Fatal(err)
		}
		want := WriteCounts{UpdateVirtualServer: 2, UpdateRealServer: 1, DeleteRealServer: 1, AddRealServer: 1, DeleteVirtualServer: 1}
		if res.Writes != want || c.Writes() != want {
			t.Errorf("apply: result %+v, counted %+v, want %+v", res.Writes, c.Writes(), want)
		}
		if got := fmt.Sprint(removedStrings(res.Removed)); len(res.Removed) != 4 {
			t.Errorf("removed %s, want 1 real server + the 3 of the deleted virtual server", got)
		}
		checkKernelHolds(t, k, append(append([]Service{}, next...), theirs...))
		desired = next
	})

	t.Run("exclude CIDRs kept, others deleted", func(t *testing.T) {
		c.Reset()
		if _, err := r.Resync(nil); err != nil {
			t.Fatal(err)
		}
		if c.Writes().DeleteVirtualServer != len(desired) {
			t.Errorf("deleted %d virtual servers, want %d", c.Writes().DeleteVirtualServer, len(desired))
		}
		checkKernelHolds(t, k, theirs)
	})
}

// BenchmarkKernelReconcilerCreate: from an empty table to 5,000 virtual
// servers × 10 real servers, in one Apply: in batches (WriteBatch) and
// one write per round trip, side by side.
func BenchmarkKernelReconcilerCreate(b *testing.B) {
	services := manyServices(5000, 10)
	for _, mode := range []string{"batched", "one-by-one"} {
		b.Run(mode, func(b *testing.B) {
			var writes int
			for range b.N {
				b.StopTimer()
				k, _ := newKernel(b) // a fresh namespace: an empty table
				c := NewCounting(k)
				var h Interface = c
				if mode == "one-by-one" {
					h = unbatched{c}
				}
				r := NewReconciler(h, nil)
				b.StartTimer()
				if _, err := r.Apply(services, nil); err != nil {
					b.Fatal(err)
				}
				writes += c.Writes().Total()
			}
			b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(writes), "ns/write")
		})
	}
}

// BenchmarkKernelReconcilerOneChange: with 5,000 × 10 in place, one
// Service loses one real server and gains another.
func BenchmarkKernelReconcilerOneChange(b *testing.B) {
	services := manyServices(5000, 10)
	k, _ := newKernel(b)
	c := NewCounting(k)
	r := NewReconciler(c, nil)
	if _, err := r.Apply(services, nil); err != nil {
		b.Fatal(err)
	}
	c.Reset()
	s := services[2500]
	base := s.RealServers
	b.ResetTimer()
	for i := range b.N {
		s.RealServers = append(base[:9:9], RealServer{Address: netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), Port: 8080, Weight: 1})
		if _, err := r.Apply([]Service{s}, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(c.Writes().Total())/float64(b.N), "writes/op")
}

// BenchmarkKernelResyncUnchanged: the full repair pass over 5,000 × 10
// when nothing drifted: one dump of virtual servers and one of real
// servers per virtual server, no writes.
func BenchmarkKernelResyncUnchanged(b *testing.B) {
	services := manyServices(5000, 10)
	k, _ := newKernel(b)
	c := NewCounting(k)
	r := NewReconciler(c, nil)
	if _, err := r.Apply(services, nil); err != nil {
		b.Fatal(err)
	}
	c.Reset()
	b.ResetTimer()
	for range b.N {
		if _, err := r.Resync(services); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(c.Writes().Total())/float64(b.N), "writes/op")
	b.ReportMetric(float64(c.Reads())/float64(b.N), "dumps/op")
}

// BenchmarkKernelResyncUnchangedPerVS is BenchmarkKernelResyncUnchanged
// as it was before GetAllRealServers: one real-server dump per virtual
// server (what Resync falls back to when the proc file cannot be read).
func BenchmarkKernelResyncUnchangedPerVS(b *testing.B) {
	services := manyServices(5000, 10)
	k, _ := newKernel(b)
	c := NewCounting(noBulkRead{k})
	r := NewReconciler(c, nil)
	if _, err := r.Apply(services, nil); err != nil {
		b.Fatal(err)
	}
	c.Reset()
	b.ResetTimer()
	for range b.N {
		if _, err := r.Resync(services); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(c.Writes().Total())/float64(b.N), "writes/op")
	b.ReportMetric(float64(c.Reads())/float64(b.N), "dumps/op")
}

// noBulkRead is an Interface whose read of every real server fails.
type noBulkRead struct{ Interface }

func (noBulkRead) GetAllRealServers() (map[VSKey][]RealServerConnections, error) {
	return nil, errors.New("no bulk read")
}

// BenchmarkKernelRepairUnchanged: what every periodic full sync adds at
// 10k Services of a ClusterIP and a node port each (20,000 virtual
// servers) when nothing drifted: one dump of the virtual servers, no real
// server read, no write. BenchmarkKernelResyncUnchanged20k is the whole
// dump it stands in for, at the same size.
func BenchmarkKernelRepairUnchanged(b *testing.B) {
	benchmarkUnchanged(b, 20000, (*Reconciler).Repair)
}

func BenchmarkKernelResyncUnchanged20k(b *testing.B) {
	services := manyServices(20000, 1)
	benchmarkUnchanged(b, 20000, func(r *Reconciler) (Result, error) { return r.Resync(services) })
}

func benchmarkUnchanged(b *testing.B, n int, pass func(*Reconciler) (Result, error)) {
	k, _ := newKernel(b)
	c := NewCounting(k)
	r := NewReconciler(c, nil)
	if _, err := r.Apply(manyServices(n, 1), nil); err != nil {
		b.Fatal(err)
	}
	c.Reset()
	b.ResetTimer()
	for range b.N {
		if _, err := pass(r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(c.Writes().Total())/float64(b.N), "writes/op")
	b.ReportMetric(float64(c.Reads())/float64(b.N), "dumps/op")
}
