package ipvs

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"
)

// TestWriteBatchWithoutBatcher: an Interface that cannot batch (the Fake)
// gets the requests one call at a time, in order, each error its own;
// Counting counts each request once.
func TestWriteBatchWithoutBatcher(t *testing.T) {
	f := NewFake()
	c := NewCounting(f)
	a := VirtualServer{VSKey: VSKey{Address: netip.MustParseAddr("10.96.0.1"), Protocol: TCP, Port: 80}, Scheduler: "rr"}
	missing := VSKey{Address: netip.MustParseAddr("10.96.0.2"), Protocol: TCP, Port: 80}
	r1 := RealServer{Address: netip.MustParseAddr("10.0.0.1"), Port: 8080, Weight: 1}
	reqs := []Request{
		{Op: OpAddVirtualServer, VirtualServer: a},
		{Op: OpAddRealServer, VirtualServer: VirtualServer{VSKey: missing}, RealServer: r1},
		{Op: OpAddRealServer, VirtualServer: a, RealServer: r1},
		{Op: OpAddRealServer, VirtualServer: a, RealServer: r1},
		{Op: OpDeleteVirtualServer, VirtualServer: VirtualServer{VSKey: missing}},
	}
	errs := WriteBatch(c, reqs)
	for i, want := range []syscall.Errno{0, syscall.ESRCH, 0, syscall.EEXIST, syscall.ESRCH} {
		if (want == 0) != (errs[i] == nil) || (want != 0 && !errors.Is(errs[i], want)) {
			t.Errorf("request %d (%s): %v, want errno %v", i, reqs[i].Op, errs[i], want)
		}
	}
	if got, want := c.Writes(), (WriteCounts{AddVirtualServer: 1, AddRealServer: 3, DeleteVirtualServer: 1}); got != want {
		t.Errorf("counted %+v, want %+v", got, want)
	}
	if got, want := f.String(), Format([]Service{{VirtualServer: a, RealServers: []RealServer{r1}}}); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

// TestRequestWrap: a batched error reads as the single call's.
func TestRequestWrap(t *testing.T) {
	k := VSKey{Address: netip.MustParseAddr("10.96.0.1"), Protocol: TCP, Port: 80}
	r := RealServer{Address: netip.MustParseAddr("10.0.0.1"), Port: 8080, Weight: 3}
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{Op: OpAddRealServer, VirtualServer: VirtualServer{VSKey: k}, RealServer: r}, "add real server 10.0.0.1:8080 to TCP  10.96.0.1:80: no such process"},
		{Request{Op: OpUpdateRealServer, VirtualServer: VirtualServer{VSKey: k}, RealServer: r}, "update real server 10.0.0.1:8080 of TCP  10.96.0.1:80 to weight 3: no such process"},
		{Request{Op: OpDeleteVirtualServer, VirtualServer: VirtualServer{VSKey: k}}, "delete virtual server TCP  10.96.0.1:80: no such process"},
	} {
		err := c.req.wrap(syscall.ESRCH)
		if err.Error() != c.want || !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s: %q, want %q wrapping ESRCH", c.req.Op, err, c.want)
		}
	}
}

// batchingFake is a Fake that takes writes in batches, counting them.
type batchingFake struct {
	*Fake
	batches int
}

func (b *batchingFake) WriteBatch(reqs []Request) []error {
	b.batches++
	return writeEach(b.Fake, reqs)
}

// TestReconcilerWritesInBatches: with a Batcher, a first sync of 250
// Services × 3 real servers costs two batches per group of YieldBatch
// (virtual servers, then real servers), and a refused real server is
// redone alone as the one-at-a-time path does: EEXIST becomes a weight
// update.
func TestReconcilerWritesInBatches(t *testing.T) {
	b := &batchingFake{Fake: NewFake()}
	var services []Service
	for i := range 250 {
		k := VSKey{Address: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Protocol: TCP, Port: 80}
		services = append(services, svc(k, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 1), rs("10.0.1.3:8080", 2)))
	}
	// Someone else added one real server already, with another weight.
	if err := b.AddVirtualServer(services[7].VirtualServer); err != nil {
		t.Fatal(err)
	}
	if err := b.AddRealServer(services[7].VSKey, rs("10.0.1.3:8080", 9)); err != nil {
		t.Fatal(err)
	}
	b.ResetCounts()
	r := NewReconciler(b, nil)
	res, err := r.Apply(services, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.batches != 6 {
		t.Errorf("%d batches, want 6 (3 groups × virtual servers, real servers)", b.batches)
	}
	// services[7]: its add says EEXIST, it is adopted, and its real
	// servers are added, all but the one there already, which is updated;
	// its scheduling, unknown once adopted, is set.
	want := WriteCounts{AddVirtualServer: 250, UpdateVirtualServer: 1, AddRealServer: 749, UpdateRealServer: 1}
	if res.Writes != want || b.Writes != want {
		t.Errorf("result counted %+v, the fake %+v, want %+v", res.Writes, b.Writes, want)
	}
	if got, want := b.String(), Format(services); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	checkCacheTruthful(t, r, b.Fake)
}
