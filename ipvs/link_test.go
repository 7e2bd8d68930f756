package ipvs

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestFakeAddresses(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	f := NewFakeAddresses()
	f.AddLink("eth0", a("203.0.113.7"))
	if _, _, err := f.SyncAddresses(DummyName, nil); err == nil {
		t.Errorf("sync without the link: no error")
	}
	if err := f.EnsureDummy(DummyName); err != nil {
		t.Fatal(err)
	}
	added, removed, err := f.SyncAddresses(DummyName, []netip.Addr{a("10.96.0.1"), a("fd00::1"), a("203.0.113.7"), a("10.96.0.1")})
	var inUse *AddressInUseError
	if !errors.As(err, &inUse) || len(inUse.InUse) != 1 || inUse.InUse[0] != (AddressInUse{a("203.0.113.7"), "eth0"}) {
		t.Errorf("err = %v, want 203.0.113.7 in use on eth0", err)
	}
	if !strings.Contains(err.Error(), "203.0.113.7 (on eth0)") {
		t.Errorf("err = %q", err)
	}
	if len(added) != 2 || len(removed) != 0 {
		t.Errorf("added %v removed %v", added, removed)
	}
	added, removed, err = f.SyncAddresses(DummyName, []netip.Addr{a("10.96.0.2"), a("fd00::1")})
	if err != nil || len(added) != 1 || added[0] != a("10.96.0.2") || len(removed) != 1 || removed[0] != a("10.96.0.1") {
		t.Errorf("added %v removed %v err %v", added, removed, err)
	}
	f.SetUp(DummyName, true)
	if err := f.EnsureDummy(DummyName); err != nil || f.IsUp(DummyName) {
		t.Errorf("EnsureDummy left it up: %v", err)
	}
	if got, _ := f.ListAddresses(DummyName); len(got) != 1 || got[0] != a("10.96.0.2") {
		t.Errorf("down dropped IPv6 but kept IPv4: got %v", got)
	}
	if err := f.EnsureDummy("eth0"); err == nil {
		t.Errorf("EnsureDummy on a non-dummy: no error")
	}
	if err := f.DeleteDummy("eth0"); err == nil || !f.Exists("eth0") {
		t.Errorf("DeleteDummy on a non-dummy: %v", err)
	}
	if err := f.DeleteDummy(DummyName); err != nil || f.Exists(DummyName) {
		t.Errorf("DeleteDummy: %v", err)
	}
	if err := f.DeleteDummy(DummyName); err != nil {
		t.Errorf("DeleteDummy of a missing link: %v", err)
	}
}

// checkSyncFromAStaleRead: SyncAddressesFrom on a read older than the
// link — an address added since and one deleted since — converges to
// want without an error, and reports only what it really wrote. The
// contract for FakeAddresses and NetlinkAddresses alike.
func checkSyncFromAStaleRead(t *testing.T, a Addresses, behind func(add, del netip.Addr)) {
	t.Helper()
	ip := netip.MustParseAddr
	if _, _, err := a.SyncAddresses(DummyName, []netip.Addr{ip("10.96.1.1"), ip("10.96.1.2")}); err != nil {
		t.Fatal(err)
	}
	have, err := a.ReadAddresses(DummyName)
	if err != nil {
		t.Fatal(err)
	}
	behind(ip("10.96.1.3"), ip("10.96.1.2")) // a sync since the read
	added, removed, err := a.SyncAddressesFrom(DummyName, []netip.Addr{ip("10.96.1.1"), ip("10.96.1.3"), ip("10.96.1.4")}, have)
	if err != nil {
		t.Fatalf("sync from a stale read: %v", err)
	}
	if len(added) != 1 || added[0] != ip("10.96.1.4") || len(removed) != 0 {
		t.Errorf("sync from a stale read: added %v removed %v, want 10.96.1.4 added alone", added, removed)
	}
	// The read saw 10.96.1.2, since deleted: deleting it again is a no-op.
	if _, removed, err := a.SyncAddressesFrom(DummyName, []netip.Addr{ip("10.96.1.1"), ip("10.96.1.3"), ip("10.96.1.4")}, have); err != nil || len(removed) != 0 {
		t.Errorf("deleting what is gone: removed %v, err %v", removed, err)
	}
	if got, _ := a.ListAddresses(DummyName); len(got) != 3 || got[0] != ip("10.96.1.1") || got[1] != ip("10.96.1.3") || got[2] != ip("10.96.1.4") {
		t.Errorf("after syncs from a stale read: %v, want 10.96.1.1 10.96.1.3 10.96.1.4", got)
	}
}

func TestFakeAddressesSyncFromAStaleRead(t *testing.T) {
	f := NewFakeAddresses()
	if err := f.EnsureDummy(DummyName); err != nil {
		t.Fatal(err)
	}
	checkSyncFromAStaleRead(t, f, func(add, del netip.Addr) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.links[DummyName].addrs[add] = true
		delete(f.links[DummyName].addrs, del)
	})
}
