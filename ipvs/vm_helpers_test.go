//go:build vmtest

package ipvs

// Kernel tests: they need a kernel with IPVS and run inside the test VM
// (go test -tags vmtest -exec e2e/vm/vmexec ./ipvs/). Each test makes its
// own network namespaces, so tests neither see each other's IPVS tables
// nor touch the VM's own.

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func requireVM(t testing.TB) {
	t.Helper()
	if os.Getenv("NFTVS_IN_VM") != "1" {
		t.Skip("KERNEL TEST SKIPPED: runs only inside the test VM (go test -tags vmtest -exec e2e/vm/vmexec ./ipvs/); nothing was checked")
	}
}

// inNS runs fn on a fresh OS thread that has entered ns. The thread is
// never given back to the Go scheduler (it ends with its goroutine), so no
// other goroutine can ever run in a namespace it did not ask for.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// newNS makes a network namespace with its loopback up, gone when the
// test ends and the last socket in it is closed.
func newNS(t testing.TB) netns.NsHandle {
	t.Helper()
	requireVM(t)
	nsc := make(chan netns.NsHandle, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // this thread ends in the new namespace
		ns, err := netns.New()
		if err != nil {
			errc <- err
			return
		}
		nsc <- ns
	}()
	var ns netns.NsHandle
	select {
	case err := <-errc:
		t.Fatalf("new netns: %v", err)
	case ns = <-nsc:
	}
	t.Cleanup(func() { ns.Close() })
	nl := nlHandle(t, ns)
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("loopback up: %v", err)
	}
	return ns
}

// nsPath names ns as a path, for the constructors that take one.
func nsPath(ns netns.NsHandle) string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
}

func nlHandle(t testing.TB, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("rtnetlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// newKernel opens IPVS in a fresh namespace.
func newKernel(t testing.TB) (*Kernel, netns.NsHandle) {
	t.Helper()
	ns := newNS(t)
	k, err := NewKernel(nsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	// The test's virtual servers go with it, not with its namespace's
	// asynchronous teardown: 6.1's /proc/net/ip_vs reader skips records
	// while another namespace holds IPVS services (see
	// TestKernelAllRealServersAtScale), so leftovers of one test would
	// fail the next one's bulk read.
	t.Cleanup(func() {
		vss, _ := k.GetVirtualServers()
		for _, v := range vss {
			_ = k.DeleteVirtualServer(v.VSKey)
		}
	})
	return k, ns
}

// dump reads the whole IPVS table, sorted, hashed flag masked.
func dump(t testing.TB, h Interface) []Service {
	t.Helper()
	vss, err := h.GetVirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Service, 0, len(vss))
	for _, v := range vss {
		rss, err := h.GetRealServers(v.VSKey)
		if err != nil {
			t.Fatal(err)
		}
		sortRealServers(rss)
		v.Flags &^= FlagHashed
		out = append(out, Service{VirtualServer: v, RealServers: rss})
	}
	slices.SortFunc(out, func(a, b Service) int { return a.VSKey.Compare(b.VSKey) })
	return out
}

// normalizedServices is what dump should return for services.
func normalizedServices(services []Service) []Service {
	out := make([]Service, 0, len(services))
	for _, s := range services {
		s.VirtualServer = s.VirtualServer.normalized()
		s.RealServers = slices.Clone(s.RealServers)
		sortRealServers(s.RealServers)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Service) int { return a.VSKey.Compare(b.VSKey) })
	return out
}
