package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/nftvs/nftvs/internal/netnstest"
)

// TestKernelAddressDump: nftvs's own reading of the namespace's
// addresses (dumpAddresses) says what the netlink package's AddrList
// says — link, address, prefix length — for every kind of address a
// node has: host routes, a subnet, IPv6, a point-to-point address with a
// peer, loopback; and an address read that way is deleted by its prefix.
func TestKernelAddressDump(t *testing.T) {
	ns := netnstest.New(t)
	ns.Run(t, "ip", "link", "add", DummyName, "type", "bridge") // as in BenchmarkKernelAddresses
	ns.Run(t, "ip", "link", "add", "other", "type", "bridge")
	for _, args := range [][]string{
		{"10.96.0.1/32", "dev", DummyName},
		{"10.96.0.2/32", "dev", DummyName},
		{"10.1.2.3/24", "dev", DummyName},
		{"fd00::1/128", "dev", DummyName, "nodad"},
		{"192.168.7.1", "peer", "192.168.7.2/32", "dev", "other"},
		{"fd00:1::5/64", "dev", "other", "nodad"},
	} {
		ns.Run(t, "ip", append([]string{"addr", "add"}, args...)...)
	}
	a, err := NewNetlinkAddresses("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	got, err := a.dumpAddresses()
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ref, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	str := func(index int, ip netip.Addr, bits int) string { return fmt.Sprintf("%d %s/%d", index, ip, bits) }
	var gotS, wantS []string
	for _, g := range got {
		gotS = append(gotS, str(int(g.index), g.addr, int(g.prefixLen)))
	}
	for _, r := range ref {
		ip, _ := netip.AddrFromSlice(r.IP)
		ones, _ := r.Mask.Size()
		wantS = append(wantS, str(r.LinkIndex, ip.Unmap(), ones))
	}
	slices.Sort(gotS)
	slices.Sort(wantS)
	if !slices.Equal(gotS, wantS) || len(gotS) < 7 {
		t.Errorf("dump:\n%v\nAddrList:\n%v", gotS, wantS)
	}
	// Read, then deleted by what was read: the /24 too.
	if _, removed, err := a.SyncAddresses(DummyName, []netip.Addr{netip.MustParseAddr("10.96.0.1")}); err != nil || len(removed) != 3 {
		t.Errorf("removed %v: %v", removed, err)
	}
	if left, err := a.ListAddresses(DummyName); err != nil || fmt.Sprint(left) != "[10.96.0.1]" {
		t.Errorf("left %v: %v", left, err)
	}
}
