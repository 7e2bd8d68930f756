//go:build vmtest

package takeover_test

// The topology: the VM's root network namespace is the node; pods are
// network namespaces on veth pairs, routed /32 from the node (as a CNI
// would), with static neighbours both ways.
//
//	pod-X eth0 10.244.1.X/32 ── vp-X (no IPv4) ┐ node (root ns): IPVS,
//	  default via 169.254.1.1 onlink           ┘ kube-ipvs0, iptables/nft
//
// Backends answer every line on TCP 8080 with "NAME LINE". Every address
// is in a namespace this test made; every request is bounded in time.

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nftvs/nftvs/internal/netnstest"
)

const (
	backendPort = 8080
	ioTimeout   = 3 * time.Second
)

var podGW4 = netip.MustParseAddr("169.254.1.1")

// netNS is a test host (internal/netnstest.Host).
type netNS struct{ *netnstest.Host }

func rootNS(t *testing.T) *netNS { return &netNS{netnstest.Root(t)} }

// newNetNS makes a named namespace, gone when the test ends.
func newNetNS(t *testing.T, name string) *netNS { return &netNS{netnstest.NewHost(t, name)} }

// do runs fn on a fresh OS thread inside n; sockets made by fn stay in n.
func (n *netNS) do(fn func() error) error { return n.Go(fn) }

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// pod is a pod network namespace.
type pod struct {
	name string
	ns   *netNS
	ip   netip.Addr
}

// addPod makes a pod namespace routed from the node.
func addPod(t *testing.T, node *netNS, name, ip string) *pod {
	t.Helper()
	p := &pod{name: name, ns: newNetNS(t, "pod-"+name), ip: netip.MustParseAddr(ip)}
	hostIf := "vp-" + name
	must(t, "veth "+hostIf, node.NL.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(p.ns.NS))}))
	hl, err := node.NL.LinkByName(hostIf)
	must(t, "link "+hostIf, err)
	// Deleted now, not when the namespace dies: the kernel tears a dead
	// namespace's links down asynchronously.
	t.Cleanup(func() { _ = node.NL.LinkDel(hl) })
	must(t, hostIf+" up", node.NL.LinkSetUp(hl))
	el, err := p.ns.NL.LinkByName("eth0")
	must(t, name+" eth0", err)
	must(t, name+" address", p.ns.NL.AddrAdd(el, &netlink.Addr{IPNet: &net.IPNet{IP: p.ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}))
	must(t, name+" eth0 up", p.ns.NL.LinkSetUp(el))
	neigh := func(h *netlink.Handle, l netlink.Link, ip netip.Addr, mac net.HardwareAddr) error {
		return h.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: mac})
	}
	must(t, name+" neighbour", neigh(p.ns.NL, el, podGW4, hl.Attrs().HardwareAddr))
	must(t, "node neighbour "+name, neigh(node.NL, hl, p.ip, el.Attrs().HardwareAddr))
	must(t, name+" route", p.ns.NL.RouteAdd(&netlink.Route{LinkIndex: el.Attrs().Index, Gw: podGW4.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}))
	must(t, "node route "+name, node.NL.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index,
		Dst: &net.IPNet{IP: p.ip.AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}))
	return p
}

// serveEcho answers every line of every TCP connection with "NAME LINE".
func (p *pod) serveEcho(t *testing.T) {
	t.Helper()
	var ln net.Listener
	must(t, p.name+" listen", p.ns.do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", backendPort))
		return err
	}))
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				// Long-lived connections live as long as the test.
				_ = c.SetDeadline(time.Now().Add(10 * time.Minute))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", p.name, sc.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// conn is a TCP connection from a pod, kept open.
type conn struct {
	c net.Conn
	r *bufio.Reader
}

// dial opens a connection from p to dst.
func (p *pod) dial(dst netip.AddrPort) (*conn, error) {
	var c net.Conn
	err := p.ns.do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), ioTimeout)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &conn{c: c, r: bufio.NewReader(c)}, nil
}

// ask sends one line and returns the backend that answered it.
func (c *conn) ask(line string) (string, error) {
	_ = c.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := fmt.Fprintln(c.c, line); err != nil {
		return "", fmt.Errorf("send %q: %w", line, err)
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read the answer to %q: %w", line, err)
	}
	name, echoed, ok := strings.Cut(strings.TrimSpace(got), " ")
	if !ok || echoed != line {
		return "", fmt.Errorf("answer %q to %q", got, line)
	}
	return name, nil
}

func (c *conn) Close() { c.c.Close() }

// once opens a connection, asks one line and closes it.
func (p *pod) once(dst netip.AddrPort, line string) (string, error) {
	c, err := p.dial(dst)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ask(line)
}
