package netnstest

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host is a network namespace used as a test host — a pod, a client
// outside the cluster, or the node itself (the root namespace) — with an
// rtnetlink handle bound to it. The VM suites build their topologies from
// Hosts; the host-kernel tests use the lighter NS.
type Host struct {
	Name string
	NS   netns.NsHandle
	NL   *netlink.Handle
}

// Root is the node: the namespace PID 1 lives in (inside the test VM).
func Root(t testing.TB) *Host {
	t.Helper()
	h, err := netns.GetFromPath("/proc/1/ns/net")
	if err != nil {
		t.Fatalf("open the root network namespace: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("rtnetlink in the root namespace: %v", err)
	}
	t.Cleanup(nl.Close)
	return &Host{Name: "node", NS: h, NL: nl}
}

// NewHost makes a named namespace (visible to `ip netns exec NAME`) with
// its loopback up, no IPv6 duplicate address detection (addresses are
// usable at once) and no reverse-path filter (test hosts route
// asymmetrically on purpose), gone when the test ends.
func NewHost(t testing.TB, name string) *Host {
	t.Helper()
	hc := make(chan netns.NsHandle, 1)
	errc := make(chan error, 1)
	go func() {
		// This thread ends in the new namespace: it is never handed back
		// to the scheduler (the goroutine exits while locked).
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		hc <- h
	}()
	var h netns.NsHandle
	select {
	case err := <-errc:
		t.Fatalf("new netns %s: %v", name, err)
	case h = <-hc:
	}
	t.Cleanup(func() {
		h.Close()
		_ = netns.DeleteNamed(name)
	})
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("rtnetlink in %s: %v", name, err)
	}
	t.Cleanup(nl.Close)
	n := &Host{Name: name, NS: h, NL: nl}
	n.Sysctls(t,
		"net/ipv6/conf/all/accept_dad=0", "net/ipv6/conf/default/accept_dad=0",
		"net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0")
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("%s: loopback up: %v", name, err)
	}
	return n
}

// Go runs fn on a fresh OS thread inside n and waits for it. The thread
// dies with its goroutine, so no goroutine ever runs in a namespace it did
// not ask for; sockets made by fn stay in n.
func (n *Host) Go(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.NS); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Sysctls writes "path=value" settings under /proc/sys, which shows the
// namespace of the thread that opens the file.
func (n *Host) Sysctls(t testing.TB, kv ...string) {
	t.Helper()
	err := n.Go(func() error {
		for _, s := range kv {
			k, v, _ := strings.Cut(s, "=")
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s: %w", s, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
}
