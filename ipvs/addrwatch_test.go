package ipvs

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The address watch, in a network namespace of its own on the host's
// kernel: a change on another link reaches onChange; kube-ipvs0's own
// addresses do not, and after its first one they are dropped in the
// kernel (the socket filter), not received and skipped.
func TestWatchAddressesDropsTheDummysInTheKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("KERNEL TEST SKIPPED: needs root (a network namespace of its own); nothing was checked")
	}
	errc := make(chan error, 1)
	go func() {
		// This thread ends in the new namespace: never given back.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("new netns: %w", err)
			return
		}
		defer ns.Close()
		errc <- watchInThisNamespace(t)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func watchInThisNamespace(t *testing.T) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	links := map[string]netlink.Link{}
	for _, name := range []string{DummyName, "eth9"} {
		// Bridges: the host of make test has no dummy module, and the
		// watch looks only at the link's name.
		l := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(l); err != nil {
			return fmt.Errorf("add %s: %w", name, err)
		}
		if links[name], err = h.LinkByName(name); err != nil {
			return err
		}
	}
	add := func(link, cidr string) error {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		return h.AddrAdd(links[link], a)
	}
	w, err := newAddrWatch(DummyName)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var changes atomic.Int64
	changed := make(chan struct{}, 100)
	go w.run(ctx, func() {
		changes.Add(1)
		changed <- struct{}{}
	})
	waitFor := func(what string, ok func() bool) error {
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("after 10 s: %s", what)
			}
		}
		return nil
	}

	// The dummy's first address: skipped, and the filter goes on.
	if err := add(DummyName, "10.96.0.1/32"); err != nil {
		return err
	}
	if err := waitFor("no filter on the dummy's index", func() bool { return int(w.filtered.Load()) == links[DummyName].Attrs().Index }); err != nil {
		return err
	}
	// 300 more, then one on another link: by the time that one is seen,
	// the 300 would have been received before it.
	for i := range 300 {
		if err := add(DummyName, fmt.Sprintf("10.96.1.%d/32", i%250+1)); err != nil && i < 250 {
			return err
		}
	}
	if err := add("eth9", "192.0.2.1/24"); err != nil {
		return err
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("an address added to eth9: onChange not called within 10 s")
	}
	if n := w.ignoredAfter.Load(); n != 0 {
		t.Errorf("%d of the dummy's notifications were received after its filter went on, want 0", n)
	}
	if n := changes.Load(); n != 1 {
		t.Errorf("onChange called %d times, want once (eth9's address only)", n)
	}

	// A removal is a change too; a link-local address is not one.
	if err := add("eth9", "fe80::99/64"); err != nil {
		return err
	}
	a, _ := netlink.ParseAddr("192.0.2.1/24")
	if err := h.AddrDel(links["eth9"], a); err != nil {
		return err
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("an address removed from eth9: onChange not called within 10 s")
	}
	time.Sleep(200 * time.Millisecond)
	if n := changes.Load(); n != 2 {
		t.Errorf("onChange called %d times, want twice (eth9's address added and removed; not its link-local)", n)
	}
	if ip := net.ParseIP("fe80::99"); serviceable(ip) {
		t.Errorf("serviceable(%s)", ip)
	}
	cancel()

	// Notifications lost to an overflowing socket are a change: a
	// watch with the smallest receive buffer, 200 of the dummy's
	// addresses (never a change themselves) added before it reads
	// anything.
	small, err := newAddrWatch(DummyName)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(small.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 0); err != nil {
		return err
	}
	for i := range 200 {
		if err := add(DummyName, fmt.Sprintf("10.97.0.%d/32", i+1)); err != nil {
			return err
		}
	}
	var lost atomic.Int64
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go small.run(ctx2, func() { lost.Add(1) })
	// Whatever fitted is read first, then the overflow (ENOBUFS) is.
	if err := waitFor("no change after the socket overflowed", func() bool { return lost.Load() > 0 }); err != nil {
		return err
	}
	return nil
}
