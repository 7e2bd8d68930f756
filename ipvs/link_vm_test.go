//go:build vmtest

package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestKernelDummyAddresses(t *testing.T) {
	ns := newNS(t)
	nl := nlHandle(t, ns)
	a, err := NewNetlinkAddresses(nsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	ip := netip.MustParseAddr

	// Another interface holding a LoadBalancer IP that is the node's own.
	other := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "other0"}}
	if err := nl.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(other, &netlink.Addr{IPNet: hostNet(ip("203.0.113.7"))}); err != nil {
		t.Fatal(err)
	}

	for range 2 { // idempotent
		if err := a.EnsureDummy(DummyName); err != nil {
			t.Fatal(err)
		}
	}
	isDown := func() bool {
		l, err := nl.LinkByName(DummyName)
		if err != nil {
			t.Fatal(err)
		}
		if l.Type() != "dummy" {
			t.Errorf("%s is a %s", DummyName, l.Type())
		}
		return l.Attrs().Flags&net.FlagUp == 0
	}
	if !isDown() {
		t.Errorf("%s was created up", DummyName)
	}

	// isLocal: the kernel routes the address as local although the link
	// is down, which is all kube-ipvs0 is for.
	isLocal := func(a netip.Addr) bool {
		routes, err := nl.RouteGet(net.IP(a.AsSlice()))
		if err != nil {
			return false // unreachable: not local
		}
		return len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL
	}

	want := []netip.Addr{ip("10.96.0.1"), ip("10.96.0.2"), ip("fd00:96::1"), ip("203.0.113.7"), ip("10.96.0.1")}
	added, removed, err := a.SyncAddresses(DummyName, want)
	var inUse *AddressInUseError
	if !errors.As(err, &inUse) || fmt.Sprint(inUse.InUse) != fmt.Sprint([]AddressInUse{{ip("203.0.113.7"), "other0"}}) {
		t.Errorf("err = %v, want 203.0.113.7 reported in use on other0", err)
	}
	if fmt.Sprint(added) != "[10.96.0.1 10.96.0.2 fd00:96::1]" || len(removed) != 0 {
		t.Errorf("added %v, removed %v", added, removed)
	}
	got, err := a.ListAddresses(DummyName)
	if err != nil || fmt.Sprint(got) != "[10.96.0.1 10.96.0.2 fd00:96::1]" {
		t.Errorf("addresses %v, %v", got, err)
	}
	for _, x := range []netip.Addr{ip("10.96.0.1"), ip("fd00:96::1"), ip("203.0.113.7")} {
		if !isLocal(x) {
			t.Errorf("%s is not a local address", x)
		}
	}

	// Unchanged: nothing added or removed.
	added, removed, err = a.SyncAddresses(DummyName, want)
	if !errors.As(err, &inUse) || len(added)+len(removed) != 0 {
		t.Errorf("second sync: added %v removed %v err %v", added, removed, err)
	}

	added, removed, err = a.SyncAddresses(DummyName, []netip.Addr{ip("10.96.0.2"), ip("fd00:96::2")})
	if err != nil || fmt.Sprint(added) != "[fd00:96::2]" || fmt.Sprint(removed) != "[10.96.0.1 fd00:96::1]" {
		t.Errorf("added %v removed %v err %v", added, removed, err)
	}
	if isLocal(ip("10.96.0.1")) {
		t.Errorf("10.96.0.1 still local after removal")
	}
	// The other interface's address is untouched.
	if addrs, _ := nl.AddrList(other, netlink.FAMILY_V4); len(addrs) != 1 {
		t.Errorf("other0 addresses: %v", addrs)
	}

	// Set up behind our back: EnsureDummy takes it down (which drops its
	// IPv6 addresses), SyncAddresses puts them back.
	l, _ := nl.LinkByName(DummyName)
	if err := nl.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if err := a.EnsureDummy(DummyName); err != nil {
		t.Fatal(err)
	}
	if !isDown() {
		t.Errorf("EnsureDummy left %s up", DummyName)
	}
	got, _ = a.ListAddresses(DummyName)
	t.Logf("after up and down again: %v", got)
	if _, _, err := a.SyncAddresses(DummyName, []netip.Addr{ip("10.96.0.2"), ip("fd00:96::2")}); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.ListAddresses(DummyName); fmt.Sprint(got) != "[10.96.0.2 fd00:96::2]" {
		t.Errorf("addresses %v", got)
	}

	checkSyncFromAStaleRead(t, a, func(add, del netip.Addr) {
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: hostNet(add)}); err != nil {
			t.Fatal(err)
		}
		if err := nl.AddrDel(l, &netlink.Addr{IPNet: hostNet(del)}); err != nil {
			t.Fatal(err)
		}
	})

	// Not a dummy: never touched.
	if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-test"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.EnsureDummy("br-test"); err == nil {
		t.Errorf("EnsureDummy took a bridge")
	}
	if err := a.DeleteDummy("br-test"); err == nil {
		t.Errorf("DeleteDummy deleted a bridge")
	}

	if err := a.DeleteDummy(DummyName); err != nil {
		t.Fatal(err)
	}
	if _, err := nl.LinkByName(DummyName); err == nil {
		t.Errorf("%s still there", DummyName)
	}
	if err := a.DeleteDummy(DummyName); err != nil {
		t.Errorf("deleting a missing link: %v", err)
	}
	if _, _, err := a.SyncAddresses(DummyName, nil); err == nil {
		t.Errorf("sync on a missing link: no error")
	}
}
