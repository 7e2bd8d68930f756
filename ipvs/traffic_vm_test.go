//go:build vmtest

package ipvs

// Real traffic through IPVS: a client namespace reaches backends in
// another namespace through a VIP on the node's kube-ipvs0, as a pod on
// another node reaches a Service.
//
//	client ns                node ns                           backend ns
//	198.18.0.2 ── veth ── 198.18.0.1   kube-ipvs0 (down)   192.0.2.1 ── veth ── 192.0.2.2, 192.0.2.3
//	2001:db8:18::2        2001:db8:18::1  203.0.113.10     2001:db8:2::1        2001:db8:2::2, ::3
//	                                      2001:db8:113::10
//
// Every address lives in a namespace this test made; every loop is
// bounded in count and time.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const ioTimeout = 3 * time.Second

type testbed struct {
	node, backend, client netns.NsHandle
	k                     *Kernel
	r                     *Reconciler
	vip4, vip6            netip.Addr
	backends4, backends6  [2]netip.Addr
	client4, client6      netip.Addr
	udpPort               atomic.Uint32 // fresh client source ports
}

func newTestbed(t *testing.T) *testbed {
	t.Helper()
	tb := &testbed{
		vip4:      netip.MustParseAddr("203.0.113.10"),
		vip6:      netip.MustParseAddr("2001:db8:113::10"),
		backends4: [2]netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")},
		backends6: [2]netip.Addr{netip.MustParseAddr("2001:db8:2::2"), netip.MustParseAddr("2001:db8:2::3")},
		client4:   netip.MustParseAddr("198.18.0.2"),
		client6:   netip.MustParseAddr("2001:db8:18::2"),
	}
	tb.udpPort.Store(20000)
	tb.k, tb.node = newKernel(t)
	tb.backend, tb.client = newNS(t), newNS(t)
	tb.r = NewReconciler(tb.k, nil)

	node := nlHandle(t, tb.node)
	veth(t, node, "to-backend", tb.backend,
		[]string{"192.0.2.1/24", "2001:db8:2::1/64"},
		[]string{"192.0.2.2/24", "192.0.2.3/24", "2001:db8:2::2/64", "2001:db8:2::3/64"},
		[]string{"192.0.2.1", "2001:db8:2::1"})
	veth(t, node, "to-client", tb.client,
		[]string{"198.18.0.1/24", "2001:db8:18::1/64"},
		[]string{"198.18.0.2/24", "2001:db8:18::2/64"},
		[]string{"198.18.0.1", "2001:db8:18::1"})

	addrs, err := NewNetlinkAddresses(nsPath(tb.node))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(addrs.Close)
	if err := addrs.EnsureDummy(DummyName); err != nil {
		t.Fatal(err)
	}
	if _, _, err := addrs.SyncAddresses(DummyName, []netip.Addr{tb.vip4, tb.vip6}); err != nil {
		t.Fatal(err)
	}
	// IPv6 forwarding is the node's own set-up (nftvs leaves it alone).
	if err := inNS(tb.node, func() error {
		return errors.Join(EnsureSysctls(ProcSys, SysctlOptions{}), ProcSys.Set(SysctlIPv6Forward, 1))
	}); err != nil {
		t.Fatal(err)
	}
	for _, b := range append(tb.backends4[:], tb.backends6[:]...) {
		serveBackend(t, tb.backend, b)
	}
	return tb
}

// veth links the node to peer: the node's end gets nodeAddrs, the peer's
// end (eth0) peerAddrs and default routes via gateways.
func veth(t *testing.T, node *netlink.Handle, name string, peer netns.NsHandle, nodeAddrs, peerAddrs, gateways []string) {
	t.Helper()
	err := node.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(peer))})
	if err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
	up := func(h *netlink.Handle, link string, addrs []string) netlink.Link {
		t.Helper()
		l, err := h.LinkByName(link)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				t.Fatal(err)
			}
			addr.Flags = unix.IFA_F_NODAD // usable at once, no 1-2 s of DAD
			if err := h.AddrAdd(l, addr); err != nil {
				t.Fatalf("%s: add %s: %v", link, a, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	up(node, name, nodeAddrs)
	ph := nlHandle(t, peer)
	l := up(ph, "eth0", peerAddrs)
	for _, gw := range gateways {
		if err := ph.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
}

// serveBackend answers on addr: TCP port 8080 writes the backend's address
// and closes, UDP port 5353 echoes the backend's address.
func serveBackend(t *testing.T, ns netns.NsHandle, addr netip.Addr) {
	t.Helper()
	var (
		ln net.Listener
		pc net.PacketConn
	)
	err := inNS(ns, func() error {
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 8080).String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, 5353).String())
		return err
	})
	if err != nil {
		t.Fatalf("backend %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		wg.Wait()
	})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(ioTimeout))
			_, _ = io.WriteString(c, addr.String())
			c.Close()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(addr.String()), from)
		}
	}()
}

// tcp opens one connection from the client to vip:80 and returns which
// backend answered.
func (tb *testbed) tcp(vip netip.Addr) (string, error) {
	var c net.Conn
	err := inNS(tb.client, func() error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(vip, 80).String(), ioTimeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// udp sends one datagram to vip:53 from a source port never used before
// (an IPVS UDP connection lives 300 s and would pin the old backend) and
// returns which backend answered.
func (tb *testbed) udp(vip netip.Addr) (string, error) {
	src := tb.client4
	if vip.Is6() {
		src = tb.client6
	}
	laddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, uint16(tb.udpPort.Add(1))))
	var c *net.UDPConn
	err := inNS(tb.client, func() error {
		var err error
		c, err = net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(vip, 53)))
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// hits makes n requests (bounded: each has its own timeout) and counts
// the answers per backend.
func hits(t *testing.T, n int, do func() (string, error)) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		who, err := do()
		if err != nil {
			t.Fatalf("request %d of %d: %v", i+1, n, err)
		}
		got[who]++
	}
	return got
}

func (tb *testbed) apply(t *testing.T, services ...Service) {
	t.Helper()
	if _, err := tb.r.Apply(services, nil); err != nil {
		t.Fatal(err)
	}
}

func backendsOf(bs [2]netip.Addr, port uint16, weights [2]int) []RealServer {
	return []RealServer{
		{Address: bs[0], Port: port, Weight: weights[0]},
		{Address: bs[1], Port: port, Weight: weights[1]},
	}
}

func TestKernelTraffic(t *testing.T) {
	tb := newTestbed(t)
	web4, dns4 := VSKey{Address: tb.vip4, Protocol: TCP, Port: 80}, VSKey{Address: tb.vip4, Protocol: UDP, Port: 53}
	web6, dns6 := VSKey{Address: tb.vip6, Protocol: TCP, Port: 80}, VSKey{Address: tb.vip6, Protocol: UDP, Port: 53}
	services := func(weights [2]int, flags Flags, timeout uint32) []Service {
		var out []Service
		for _, s := range []struct {
			k    VSKey
			bs   [2]netip.Addr
			port uint16
		}{{web4, tb.backends4, 8080}, {dns4, tb.backends4, 5353}, {web6, tb.backends6, 8080}, {dns6, tb.backends6, 5353}} {
			out = append(out, Service{
				VirtualServer: VirtualServer{VSKey: s.k, Scheduler: "rr", Flags: flags, Timeout: timeout},
				RealServers:   backendsOf(s.bs, s.port, weights),
			})
		}
		return out
	}
	b4 := func(i int) string { return tb.backends4[i].String() }
	b6 := func(i int) string { return tb.backends6[i].String() }

	t.Run("round robin", func(t *testing.T) {
		tb.apply(t, services([2]int{1, 1}, 0, 0)...)
		for _, c := range []struct {
			name string
			do   func() (string, error)
			want map[string]int
		}{
			{"TCP IPv4", func() (string, error) { return tb.tcp(tb.vip4) }, map[string]int{b4(0): 3, b4(1): 3}},
			{"UDP IPv4", func() (string, error) { return tb.udp(tb.vip4) }, map[string]int{b4(0): 3, b4(1): 3}},
			{"TCP IPv6", func() (string, error) { return tb.tcp(tb.vip6) }, map[string]int{b6(0): 3, b6(1): 3}},
			{"UDP IPv6", func() (string, error) { return tb.udp(tb.vip6) }, map[string]int{b6(0): 3, b6(1): 3}},
		} {
			if got := hits(t, 6, c.do); fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("%s: backends hit %v, want %v", c.name, got, c.want)
			}
		}
	})

	t.Run("weight 0 takes no new connections", func(t *testing.T) {
		tb.apply(t, services([2]int{0, 1}, 0, 0)...)
		if got := hits(t, 6, func() (string, error) { return tb.tcp(tb.vip4) }); got[b4(1)] != 6 {
			t.Errorf("TCP IPv4: backends hit %v, want all on %s", got, b4(1))
		}
		if got := hits(t, 6, func() (string, error) { return tb.udp(tb.vip4) }); got[b4(1)] != 6 {
			t.Errorf("UDP IPv4: backends hit %v, want all on %s", got, b4(1))
		}
		if got := hits(t, 4, func() (string, error) { return tb.tcp(tb.vip6) }); got[b6(1)] != 4 {
			t.Errorf("TCP IPv6: backends hit %v, want all on %s", got, b6(1))
		}
	})

	t.Run("persistence keeps a client on one backend", func(t *testing.T) {
		tb.apply(t, services([2]int{1, 1}, FlagPersistent, 60)...)
		for _, c := range []struct {
			name string
			do   func() (string, error)
		}{
			{"TCP IPv4", func() (string, error) { return tb.tcp(tb.vip4) }},
			{"UDP IPv4", func() (string, error) { return tb.udp(tb.vip4) }},
			{"TCP IPv6", func() (string, error) { return tb.tcp(tb.vip6) }},
		} {
			if got := hits(t, 6, c.do); len(got) != 1 {
				t.Errorf("%s: backends hit %v, want one backend for all", c.name, got)
			}
		}
	})

	t.Run("removed real server takes no new connections", func(t *testing.T) {
		s := services([2]int{1, 1}, 0, 0)
		for i := range s {
			s[i].RealServers = s[i].RealServers[1:]
		}
		res, err := tb.r.Apply(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Removed) != 4 {
			t.Errorf("removed %v, want one real server of each of 4 virtual servers", res.Removed)
		}
		// Persistence templates of the removed real server expire with
		// expire_quiescent_template / expire_nodest_conn.
		if got := hits(t, 4, func() (string, error) { return tb.tcp(tb.vip4) }); got[b4(1)] != 4 {
			t.Errorf("TCP IPv4: backends hit %v, want all on %s", got, b4(1))
		}
	})

	t.Run("no real server: refused, not hung", func(t *testing.T) {
		tb.apply(t, Service{VirtualServer: VirtualServer{VSKey: web4, Scheduler: "rr"}})
		_, err := tb.tcp(tb.vip4)
		if err == nil {
			t.Fatal("connection to a virtual server without real servers succeeded")
		}
		if !errors.Is(err, unix.ECONNREFUSED) {
			t.Logf("no real server: %v (IPVS drops; the host answers nothing on port 80)", err)
		}
	})
}
