//go:build vmtest

package ipvs

import (
	"errors"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// createRequests are the writes that build services from an empty table:
// each virtual server, then its real servers.
func createRequests(services []Service) []Request {
	var reqs []Request
	for _, s := range services {
		reqs = append(reqs, Request{Op: OpAddVirtualServer, VirtualServer: s.VirtualServer})
		for _, rs := range s.RealServers {
			reqs = append(reqs, Request{Op: OpAddRealServer, VirtualServer: s.VirtualServer, RealServer: rs})
		}
	}
	return reqs
}

// checkSameErrors: the batch answered each request as the single calls did.
func checkSameErrors(t *testing.T, reqs []Request, single, batched []error) {
	t.Helper()
	if len(single) != len(reqs) || len(batched) != len(reqs) {
		t.Fatalf("%d requests, %d single answers, %d batched", len(reqs), len(single), len(batched))
	}
	for i := range reqs {
		var s, b string
		if single[i] != nil {
			s = single[i].Error()
		}
		if batched[i] != nil {
			b = batched[i].Error()
		}
		if s != b {
			t.Errorf("request %d (%s %s %s): single %q, batched %q", i, reqs[i].Op, reqs[i].VirtualServer.VSKey, reqs[i].RealServer.AddrPort(), s, b)
		}
	}
}

// TestKernelWriteBatchSameState: the same writes, one at a time in one
// namespace and batched in another, more than one batch of them (IPv4,
// IPv6, fwmark; adds, weight and scheduling updates, deletes), leave the
// same table and the same (no) errors.
func TestKernelWriteBatchSameState(t *testing.T) {
	services := manyServices(60, 10) // 660 adds: three sendmsgs
	reqs := createRequests(services)
	for i, s := range services {
		switch i % 4 {
		case 0:
			rs := s.RealServers[3]
			rs.Weight = 7
			reqs = append(reqs, Request{Op: OpUpdateRealServer, VirtualServer: s.VirtualServer, RealServer: rs})
			services[i].RealServers[3] = rs
		case 1:
			reqs = append(reqs, Request{Op: OpDeleteRealServer, VirtualServer: s.VirtualServer, RealServer: s.RealServers[0]})
			services[i].RealServers = s.RealServers[1:]
		case 2:
			v := s.VirtualServer
			v.Scheduler, v.Flags, v.Timeout = "sh", FlagPersistent, 600
			reqs = append(reqs, Request{Op: OpUpdateVirtualServer, VirtualServer: v})
			services[i].VirtualServer = v
		}
	}
	var kept []Service
	for i, s := range services {
		if i%7 == 3 {
			reqs = append(reqs, Request{Op: OpDeleteVirtualServer, VirtualServer: VirtualServer{VSKey: s.VSKey}})
			continue
		}
		kept = append(kept, s)
	}

	single, _ := newKernel(t)
	batched, _ := newKernel(t)
	if batched.batch == nil {
		t.Fatal("the kernel opened no batch socket: WriteBatch would test the single path against itself")
	}
	checkSameErrors(t, reqs, writeEach(single, reqs), batched.WriteBatch(reqs))
	got, want := dump(t, batched), dump(t, single)
	if Format(got) != Format(want) {
		t.Errorf("batched table differs from the single one:\n%s\nwant:\n%s", Format(got), Format(want))
	}
	if exp := normalizedServices(kept); Format(want) != Format(exp) {
		t.Errorf("single table is not what the writes meant:\n%s\nwant:\n%s", Format(want), Format(exp))
	}
}

// TestKernelWriteBatchRefused: requests the kernel refuses, among good
// ones in the same sendmsg, are refused each alone, with the errno and
// message of the single call, and the others are applied.
func TestKernelWriteBatchRefused(t *testing.T) {
	a := VirtualServer{VSKey: VSKey{Address: netip.MustParseAddr("10.96.0.1"), Protocol: TCP, Port: 80}, Scheduler: "rr"}
	missing := VirtualServer{VSKey: VSKey{Address: netip.MustParseAddr("10.96.0.2"), Protocol: TCP, Port: 80}, Scheduler: "rr"}
	badSched := VirtualServer{VSKey: VSKey{Address: netip.MustParseAddr("10.96.0.3"), Protocol: UDP, Port: 53}, Scheduler: "nosuch"}
	r1 := RealServer{Address: netip.MustParseAddr("10.0.0.1"), Port: 8080, Weight: 1}
	r2 := RealServer{Address: netip.MustParseAddr("10.0.0.2"), Port: 8080, Weight: 1}
	r3 := RealServer{Address: netip.MustParseAddr("10.0.0.3"), Port: 8080, Weight: 1}
	reqs := []Request{
		{Op: OpAddVirtualServer, VirtualServer: a},
		{Op: OpAddRealServer, VirtualServer: missing, RealServer: r1}, // no such virtual server
		{Op: OpAddRealServer, VirtualServer: a, RealServer: r1},
		{Op: OpAddVirtualServer, VirtualServer: a},                 // duplicate
		{Op: OpAddRealServer, VirtualServer: a, RealServer: r1},    // duplicate
		{Op: OpUpdateRealServer, VirtualServer: a, RealServer: r3}, // no such real server
		{Op: OpDeleteRealServer, VirtualServer: a, RealServer: r3}, // no such real server
		{Op: OpAddVirtualServer, VirtualServer: badSched},          // no such scheduler
		{Op: OpDeleteVirtualServer, VirtualServer: missing},        // no such virtual server
		{Op: OpAddRealServer, VirtualServer: a, RealServer: r2},    // still applied
	}
	wantErrno := []syscall.Errno{0, syscall.ESRCH, 0, syscall.EEXIST, syscall.EEXIST, syscall.ENOENT, syscall.ENOENT, syscall.ENOENT, syscall.ESRCH, 0}

	single, _ := newKernel(t)
	batched, _ := newKernel(t)
	if batched.batch == nil {
		t.Fatal("the kernel opened no batch socket")
	}
	serrs, berrs := writeEach(single, reqs), batched.WriteBatch(reqs)
	checkSameErrors(t, reqs, serrs, berrs)
	for i, want := range wantErrno {
		switch {
		case want == 0 && berrs[i] != nil:
			t.Errorf("request %d (%s): %v, want accepted", i, reqs[i].Op, berrs[i])
		case want != 0 && !errors.Is(berrs[i], want):
			t.Errorf("request %d (%s): %v, want %v", i, reqs[i].Op, berrs[i], want)
		}
	}
	got, wantTable := dump(t, batched), dump(t, single)
	if Format(got) != Format(wantTable) {
		t.Errorf("batched table differs from the single one:\n%s\nwant:\n%s", Format(got), Format(wantTable))
	}
	exp := normalizedServices([]Service{{VirtualServer: a, RealServers: []RealServer{r1, r2}}})
	if Format(got) != Format(exp) {
		t.Errorf("table:\n%s\nwant:\n%s", Format(got), Format(exp))
	}
}

// BenchmarkKernelWriteBatch: N virtual servers × 10 real servers written
// into an empty table one request at a time and batched, side by side in
// each iteration (fresh namespaces); batched-vs-single is the ratio.
func BenchmarkKernelWriteBatch(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run("N="+strconv.Itoa(n), func(b *testing.B) {
			reqs := createRequests(manyServices(n, 10))
			var single, batched time.Duration
			for range b.N {
				b.StopTimer()
				ks, _ := newKernel(b)
				kb, _ := newKernel(b)
				b.StartTimer()
				t0 := time.Now()
				for _, err := range writeEach(ks, reqs) {
					if err != nil {
						b.Fatal(err)
					}
				}
				t1 := time.Now()
				for _, err := range kb.WriteBatch(reqs) {
					if err != nil {
						b.Fatal(err)
					}
				}
				single, batched = single+t1.Sub(t0), batched+time.Since(t1)
			}
			b.ReportMetric(single.Seconds()*1e3/float64(b.N), "single-ms")
			b.ReportMetric(batched.Seconds()*1e3/float64(b.N), "batched-ms")
			b.ReportMetric(single.Seconds()/batched.Seconds(), "speedup")
			b.ReportMetric(float64(len(reqs)), "writes")
		})
	}
}
