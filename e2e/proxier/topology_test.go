//go:build vmtest

package proxier_test

// The topology: the VM's root network namespace is the node; pods and
// outside clients are network namespaces on veth pairs.
//
//	 out1 eth0 192.168.100.2/24 fd00:100::2/64 ── ext0 192.168.100.1/24 fd00:100::1/64 ┐
//	 out2 eth0 192.168.101.2/24 fd00:101::2/64 ── ext1 192.168.101.1/24 fd00:101::1/64 │
//	                                                                                   │ node (root ns):
//	 pod-X eth0 10.244.N.X/32 fd00:244:N::X/128 ── vp-X (no IPv4; fe80::1)             ├ IPVS, kube-ipvs0,
//	   default via 169.254.1.1 onlink, ::/0 via fe80::1                                │ inet nftvs
//	   (static neighbours both ways: no ARP or ND needed)                              ┘
//
// Pods of 10.244.1.0/24 are this node's ("local": EndpointSlice nodeName
// node-a, and the table's pod CIDR), pods of 10.244.2.0/24 belong to
// another node ("remote": nodeName node-b) but are attached here too, so
// that they are reachable. Every pod answers TCP on 8080 and UDP on 8053
// with its name and the source address it saw. Every address is in a
// namespace this test made; every request is bounded in time.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nftvs/nftvs/internal/netnstest"
	"golang.org/x/sys/unix"
)

const (
	// ioTimeout bounds the dial and the read of a request expected to be
	// answered; dropTimeout those of a request expected to get nothing.
	ioTimeout   = 3 * time.Second
	dropTimeout = 2 * time.Second

	podTCPPort = 8080
	podUDPPort = 8053
)

var (
	podGW4 = netip.MustParseAddr("169.254.1.1")
	podGW6 = netip.MustParseAddr("fe80::1")
)

func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("NFTVS_IN_VM") != "1" {
		t.Skip("KERNEL TEST SKIPPED: runs only inside the test VM (go test -tags vmtest -exec $PWD/e2e/vm/vmexec ./e2e/proxier/); nothing was checked")
	}
}

// netNS is a test host (internal/netnstest.Host) with this suite's
// helpers on it.
type netNS struct{ *netnstest.Host }

// rootNS is the node: the namespace PID 1 lives in.
func rootNS(t *testing.T) *netNS { return &netNS{netnstest.Root(t)} }

// newNetNS makes a named namespace, gone when the test ends.
func newNetNS(t *testing.T, name string) *netNS { return &netNS{netnstest.NewHost(t, name)} }

// do runs fn on a fresh OS thread inside n; sockets made by fn stay in n.
func (n *netNS) do(fn func() error) error { return n.Go(fn) }

func (n *netNS) sysctls(t *testing.T, kv ...string) { n.Sysctls(t, kv...) }

func (n *netNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.NL.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: link %s: %v", n.Name, name, err)
	}
	return l
}

func (n *netNS) addAddr(t *testing.T, l netlink.Link, p netip.Prefix) {
	t.Helper()
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := n.NL.AddrAdd(l, a); err != nil {
		t.Fatalf("%s: add %s to %s: %v", n.Name, p, l.Attrs().Name, err)
	}
}

func (n *netNS) up(t *testing.T, l netlink.Link) {
	t.Helper()
	if err := n.NL.LinkSetUp(l); err != nil {
		t.Fatalf("%s: %s up: %v", n.Name, l.Attrs().Name, err)
	}
}

func (n *netNS) addRoute(t *testing.T, r *netlink.Route) {
	t.Helper()
	if err := n.NL.RouteAdd(r); err != nil {
		t.Fatalf("%s: route %s: %v", n.Name, r, err)
	}
}

func (n *netNS) addNeigh(t *testing.T, l netlink.Link, ip netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	err := n.NL.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT,
		IP: ip.AsSlice(), HardwareAddr: mac})
	if err != nil {
		t.Fatalf("%s: neighbour %s on %s: %v", n.Name, ip, l.Attrs().Name, err)
	}
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// pod is a pod namespace serving TCP and UDP.
type pod struct {
	name   string
	node   string // EndpointSlice nodeName
	ns     *netNS
	v4, v6 netip.Addr
}

// testbed is the node and everything attached to it.
type testbed struct {
	node       *netNS
	out1, out2 *netNS
	// out1IP4 etc. are the outside clients' addresses; ext0IP4 etc. the
	// node's ends of their links.
	out1IP4, out1IP6, out2IP4 netip.Addr
	ext0IP4, ext0IP6, ext1IP4 netip.Addr
	pods                      map[string]*pod
}

func newTestbed(t *testing.T) *testbed {
	t.Helper()
	tb := &testbed{
		node:    rootNS(t),
		out1IP4: netip.MustParseAddr("192.168.100.2"), out1IP6: netip.MustParseAddr("fd00:100::2"),
		out2IP4: netip.MustParseAddr("192.168.101.2"),
		ext0IP4: netip.MustParseAddr("192.168.100.1"), ext0IP6: netip.MustParseAddr("fd00:100::1"),
		ext1IP4: netip.MustParseAddr("192.168.101.1"),
		pods:    map[string]*pod{},
	}
	// Before any link exists, so that new links inherit the defaults.
	// The hairpin case forwards out of the interface a packet came in on:
	// no redirects.
	tb.node.sysctls(t,
		"net/ipv6/conf/all/accept_dad=0", "net/ipv6/conf/default/accept_dad=0",
		"net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0",
		"net/ipv4/conf/all/send_redirects=0", "net/ipv4/conf/default/send_redirects=0")
	tb.out1 = tb.addOutside(t, "out1", "ext0",
		netip.MustParsePrefix("192.168.100.1/24"), netip.MustParsePrefix("fd00:100::1/64"),
		netip.MustParsePrefix("192.168.100.2/24"), netip.MustParsePrefix("fd00:100::2/64"))
	tb.out2 = tb.addOutside(t, "out2", "ext1",
		netip.MustParsePrefix("192.168.101.1/24"), netip.MustParsePrefix("fd00:101::1/64"),
		netip.MustParsePrefix("192.168.101.2/24"), netip.MustParsePrefix("fd00:101::2/64"))
	return tb
}

// addOutside links a client namespace to the node on its own subnet, with
// default routes via the node (so LoadBalancer and external IPs are
// reached through it).
func (tb *testbed) addOutside(t *testing.T, name, nodeIf string, node4, node6, cl4, cl6 netip.Prefix) *netNS {
	t.Helper()
	n := newNetNS(t, name)
	if err := tb.node.NL.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nodeIf}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(n.NS))}); err != nil {
		t.Fatalf("veth %s: %v", nodeIf, err)
	}
	hl := tb.node.link(t, nodeIf)
	// Deleting the node's end now, not when the namespace dies: the
	// kernel tears a dead namespace's links down asynchronously, and the
	// next test makes a link of the same name.
	t.Cleanup(func() { _ = tb.node.NL.LinkDel(hl) })
	tb.node.addAddr(t, hl, node4)
	tb.node.addAddr(t, hl, node6)
	tb.node.up(t, hl)
	el := n.link(t, "eth0")
	n.addAddr(t, el, cl4)
	n.addAddr(t, el, cl6)
	n.up(t, el)
	n.addRoute(t, &netlink.Route{LinkIndex: el.Attrs().Index, Gw: node4.Addr().AsSlice()})
	n.addRoute(t, &netlink.Route{LinkIndex: el.Attrs().Index, Gw: node6.Addr().AsSlice()})
	return n
}

// addPod makes a pod namespace, routed /32 and /128 from the node, serving
// TCP and UDP.
func (tb *testbed) addPod(t *testing.T, name, nodeName, v4, v6 string) *pod {
	t.Helper()
	p := &pod{name: name, node: nodeName, ns: newNetNS(t, "pod-"+name),
		v4: netip.MustParseAddr(v4), v6: netip.MustParseAddr(v6)}
	hostIf := "vp-" + name
	node := tb.node
	if err := node.NL.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(p.ns.NS))}); err != nil {
		t.Fatalf("veth %s: %v", hostIf, err)
	}
	hl := node.link(t, hostIf)
	t.Cleanup(func() { _ = node.NL.LinkDel(hl) }) // see addOutside
	node.up(t, hl)
	node.addAddr(t, hl, netip.PrefixFrom(podGW6, 64))
	el := p.ns.link(t, "eth0")
	p.ns.addAddr(t, el, hostPrefix(p.v4))
	p.ns.addAddr(t, el, hostPrefix(p.v6))
	p.ns.up(t, el)
	// Static neighbours both ways: the node's end has no IPv4 address to
	// answer ARP for the gateway with.
	p.ns.addNeigh(t, el, podGW4, hl.Attrs().HardwareAddr)
	p.ns.addNeigh(t, el, podGW6, hl.Attrs().HardwareAddr)
	node.addNeigh(t, hl, p.v4, el.Attrs().HardwareAddr)
	node.addNeigh(t, hl, p.v6, el.Attrs().HardwareAddr)
	p.ns.addRoute(t, &netlink.Route{LinkIndex: el.Attrs().Index, Gw: podGW4.AsSlice(), Flags: int(netlink.FLAG_ONLINK)})
	p.ns.addRoute(t, &netlink.Route{LinkIndex: el.Attrs().Index, Gw: podGW6.AsSlice()})
	node.addRoute(t, &netlink.Route{LinkIndex: hl.Attrs().Index, Dst: ipNet(hostPrefix(p.v4)), Scope: netlink.SCOPE_LINK})
	node.addRoute(t, &netlink.Route{LinkIndex: hl.Attrs().Index, Dst: ipNet(hostPrefix(p.v6))})
	serve(t, p.ns, name, "tcp", fmt.Sprintf(":%d", podTCPPort))
	serve(t, p.ns, name, "udp", fmt.Sprintf(":%d", podUDPPort))
	tb.pods[name] = p
	return p
}

// serve answers every TCP connection or UDP datagram on addr in n with
// "NAME SOURCE\n": who answered, and the source address it saw.
func serve(t *testing.T, n *netNS, name, network, addr string) {
	t.Helper()
	var (
		ln net.Listener
		pc net.PacketConn
	)
	err := n.do(func() error {
		var err error
		if strings.HasPrefix(network, "udp") {
			pc, err = net.ListenPacket(network, addr)
		} else {
			ln, err = net.Listen(network, addr)
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s: listen %s %s: %v", n.Name, network, addr, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	if pc != nil {
		t.Cleanup(func() { pc.Close(); wg.Wait() })
		go func() {
			defer wg.Done()
			buf := make([]byte, 512)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(answerLine(name, from)), from)
			}
		}()
		return
	}
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(ioTimeout))
			_, _ = io.WriteString(c, answerLine(name, c.RemoteAddr()))
			c.Close()
		}
	}()
}

func answerLine(name string, from net.Addr) string {
	ap, err := netip.ParseAddrPort(from.String())
	if err != nil {
		return fmt.Sprintf("%s %s\n", name, from)
	}
	return fmt.Sprintf("%s %s\n", name, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}

// answer is who answered a request, and the source address it saw.
type answer struct {
	Pod string
	Src netip.Addr
}

func (a answer) String() string { return a.Pod + " (saw " + a.Src.String() + ")" }

func parseAnswer(b []byte) (answer, error) {
	name, src, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	if !ok {
		return answer{}, fmt.Errorf("malformed answer %q", b)
	}
	ap, err := netip.ParseAddrPort(src)
	if err != nil {
		return answer{}, fmt.Errorf("malformed answer %q: %w", b, err)
	}
	return answer{Pod: name, Src: ap.Addr().Unmap()}, nil
}

// tcp opens one connection from n to dst and reads the answer, all within
// timeout.
func (n *netNS) tcp(dst netip.AddrPort, timeout time.Duration) (answer, error) {
	var c net.Conn
	err := n.do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	})
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return answer{}, fmt.Errorf("connected, but no answer: %w", err)
	}
	if len(b) == 0 {
		return answer{}, errors.New("connected, but the connection closed without an answer")
	}
	return parseAnswer(b)
}

// udp sends a datagram from n to dst from a fresh ephemeral port (a new
// IPVS connection), at most three times within timeout, and reads the
// answer.
func (n *netNS) udp(dst netip.AddrPort, timeout time.Duration) (answer, error) {
	var c net.Conn
	err := n.do(func() error {
		var err error
		c, err = net.Dial("udp", dst.String())
		return err
	})
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	buf := make([]byte, 512)
	for range 3 {
		if _, err = c.Write([]byte("ping\n")); err != nil {
			return answer{}, err
		}
		_ = c.SetReadDeadline(time.Now().Add(timeout / 3))
		var k int
		if k, err = c.Read(buf); err == nil {
			return parseAnswer(buf[:k])
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return answer{}, err
		}
	}
	return answer{}, fmt.Errorf("no answer to 3 datagrams: %w", err)
}

// ask sends one request of proto ("tcp" or "udp").
func (n *netNS) ask(proto string, dst netip.AddrPort, timeout time.Duration) (answer, error) {
	if proto == "udp" {
		return n.udp(dst, timeout)
	}
	return n.tcp(dst, timeout)
}

// tally is the outcome of several requests.
type tally struct {
	answers []answer
	errs    []error
}

// askN makes count requests, one after the other, each bounded by ioTimeout.
func (n *netNS) askN(proto string, dst netip.AddrPort, count int) tally {
	var tl tally
	for range count {
		a, err := n.ask(proto, dst, ioTimeout)
		if err != nil {
			tl.errs = append(tl.errs, err)
			continue
		}
		tl.answers = append(tl.answers, a)
	}
	return tl
}

func (tl tally) pods() map[string]int {
	m := map[string]int{}
	for _, a := range tl.answers {
		m[a.Pod]++
	}
	return m
}

// String is "a1×3 b1×3 (sources seen: 10.244.1.99×6); 1 failed: …".
func (tl tally) String() string {
	var parts []string
	pods := tl.pods()
	names := make([]string, 0, len(pods))
	for p := range pods {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		parts = append(parts, fmt.Sprintf("%s×%d", p, pods[p]))
	}
	srcs := map[netip.Addr]int{}
	for _, a := range tl.answers {
		srcs[a.Src]++
	}
	var ss []string
	for s, k := range srcs {
		ss = append(ss, fmt.Sprintf("%s×%d", s, k))
	}
	sort.Strings(ss)
	s := "answered by [" + strings.Join(parts, " ") + "] seeing sources [" + strings.Join(ss, " ") + "]"
	if len(tl.errs) > 0 {
		s += fmt.Sprintf("; %d failed, first: %v", len(tl.errs), tl.errs[0])
	}
	return s
}

// failure classifies a failed request: "refused" (ICMP unreachable or a
// reset) or "no answer" (a silent drop).
func failure(err error) string {
	switch {
	case err == nil:
		return "answered"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return "no answer"
	}
	return "failed (" + err.Error() + ")"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
