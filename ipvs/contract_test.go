package ipvs

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
)

// testContract checks the behaviour the Reconciler relies on, against any
// Interface: the Fake here, the kernel in the VM tests. h must be empty.
func testContract(t *testing.T, h Interface) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	wantErrno := func(what string, err error, errno syscall.Errno) {
		t.Helper()
		if !errors.Is(err, errno) {
			t.Errorf("%s: err = %v, want %v (%d)", what, err, errno.Error(), int(errno))
		}
	}
	v4 := VirtualServer{VSKey: key(TCP, "203.0.113.10:80"), Scheduler: "rr"}
	v6 := VirtualServer{VSKey: key(UDP, "[2001:db8::10]:53"), Scheduler: "wrr"}
	missing := key(TCP, "203.0.113.99:80")

	must(h.AddVirtualServer(v4))
	must(h.AddVirtualServer(v6))
	wantErrno("add an existing virtual server", h.AddVirtualServer(v4), syscall.EEXIST)
	wantErrno("update a missing virtual server", h.UpdateVirtualServer(VirtualServer{VSKey: missing, Scheduler: "rr"}), syscall.ESRCH)
	wantErrno("delete a missing virtual server", h.DeleteVirtualServer(missing), syscall.ESRCH)
	wantErrno("add a real server to a missing virtual server", h.AddRealServer(missing, rs("192.0.2.1:80", 1)), syscall.ESRCH)
	wantErrno("unknown scheduler", h.AddVirtualServer(VirtualServer{VSKey: missing, Scheduler: "nosuchsched"}), syscall.ENOENT)

	must(h.AddRealServer(v4.VSKey, rs("192.0.2.1:8080", 1)))
	wantErrno("add an existing real server", h.AddRealServer(v4.VSKey, rs("192.0.2.1:8080", 3)), syscall.EEXIST)
	wantErrno("update a missing real server", h.UpdateRealServer(v4.VSKey, rs("192.0.2.2:8080", 1)), syscall.ENOENT)
	wantErrno("delete a missing real server", h.DeleteRealServer(v4.VSKey, rs("192.0.2.2:8080", 1)), syscall.ENOENT)
	wantErrno("negative weight", h.AddRealServer(v4.VSKey, rs("192.0.2.3:8080", -1)), syscall.ERANGE)
	// moby/ipvs sends no address family for the real server: the kernel
	// takes the virtual server's, so IPv6 real servers just work.
	must(h.AddRealServer(v6.VSKey, rs("[2001:db8::1]:5353", 2)))

	got, err := h.GetRealServers(missing)
	if err != nil || len(got) != 0 {
		t.Errorf("real servers of a missing virtual server: %v, %v; want none, no error", got, err)
	}
	got, err = h.GetRealServers(v6.VSKey)
	must(err)
	if len(got) != 1 || got[0] != rs("[2001:db8::1]:5353", 2) {
		t.Errorf("IPv6 real servers = %v", got)
	}

	// Without traffic every real server is idle; a missing virtual server
	// has none.
	conns, err := h.GetConnections(v6.VSKey)
	must(err)
	if c, ok := conns[rs("[2001:db8::1]:5353", 2).AddrPort()]; len(conns) != 1 || !ok || !c.Idle() {
		t.Errorf("connections of %v = %v, want one idle real server", v6.VSKey, conns)
	}
	if conns, err := h.GetConnections(missing); err != nil || len(conns) != 0 {
		t.Errorf("connections of a missing virtual server: %v, %v; want none, no error", conns, err)
	}

	vss, err := h.GetVirtualServers()
	must(err)
	if len(vss) != 2 {
		t.Fatalf("virtual servers = %v, want 2", vss)
	}
	for _, v := range vss {
		if v.Flags&FlagHashed == 0 {
			t.Errorf("%v: the kernel reports the hashed flag on every virtual server", v)
		}
		if !v.Equal(v4) && !v.Equal(v6) {
			t.Errorf("read back %v, want %v or %v", v, v4, v6)
		}
	}
	// Every real server at once is what each dump says, fwmark virtual
	// servers of both families under one mark included; the IPv6 fwmark
	// one without real servers may be missing (the proc file does not
	// say its family), never wrong.
	fw4, fw6, fw6empty := fwmark(0x4001, false), fwmark(0x4001, true), fwmark(0x4002, true)
	for _, k := range []VSKey{fw4, fw6, fw6empty} {
		must(h.AddVirtualServer(VirtualServer{VSKey: k, Scheduler: "rr"}))
	}
	must(h.AddRealServer(fw4, rs("192.0.2.1:8080", 0)))
	must(h.AddRealServer(fw4, rs("192.0.2.2:8080", 5)))
	must(h.AddRealServer(fw6, rs("[2001:db8::1]:8080", 1)))
	all, err := h.GetAllRealServers()
	must(err)
	if _, ok := all[missing]; ok {
		t.Errorf("every real server: lists a missing virtual server %v", missing)
	}
	for _, k := range []VSKey{v4.VSKey, v6.VSKey, fw4, fw6, fw6empty} {
		one, err := h.GetRealServers(k)
		must(err)
		sortRealServers(one)
		listed, ok := all[k.Key()]
		if !ok && k == fw6empty {
			continue
		}
		var got []RealServer
		for _, x := range listed {
			if !x.Idle() {
				t.Errorf("every real server: %v %v has connections %+v, want none", k, x.AddrPort, x.Connections)
			}
			got = append(got, RealServer{Address: x.AddrPort.Addr(), Port: x.AddrPort.Port(), Weight: x.Weight})
		}
		sortRealServers(got)
		if !ok || fmt.Sprint(got) != fmt.Sprint(one) {
			t.Errorf("every real server: %v has %v (listed %v), its own dump %v", k, got, ok, one)
		}
	}
	for _, k := range []VSKey{fw4, fw6, fw6empty} {
		must(h.DeleteVirtualServer(k))
	}

	must(h.DeleteVirtualServer(v4.VSKey))
	must(h.DeleteVirtualServer(v6.VSKey))
	if vss, _ := h.GetVirtualServers(); len(vss) != 0 {
		t.Errorf("left behind: %v", vss)
	}
}

func TestFakeContract(t *testing.T) {
	f := NewFake()
	f.MissingSchedulers = map[string]bool{"nosuchsched": true}
	testContract(t, f)
}
