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
