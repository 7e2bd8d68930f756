package nft

// Packet tests: real TCP and UDP traffic through the table, in throwaway
// network namespaces on the host. There is no IPVS here, so these prove
// the rules' matching, marks and NAT on their own: a "ClusterIP" is an
// address on a backend namespace's loopback, routed to from the node, and
// an address on the node's loopback stands in for kube-ipvs0.
//
// Topology built by every subtest:
//
//	pod ns  eth0 10.200.1.2  fd00:200:1::2 ── vethpod0 10.200.1.1  fd00:200:1::1 ┐
//	ext ns  eth0 10.200.3.2  fd00:200:3::2 ── vext0    10.200.3.1  fd00:200:3::1 ├ node ns (nftvs table)
//	backend eth0 10.200.2.2  fd00:200:2::2 ── vback0   10.200.2.1  fd00:200:2::1 ┘
//
// The pod client is inside the configured pod CIDR (or behind a "vethpod*"
// interface), the ext client is not. The backend holds the ClusterIP
// (10.96.0.10, fd00:96::10) on its loopback; the node holds a kube-ipvs0
// style VIP (10.96.0.20, fd00:96::20) and a load-balancer IP (192.0.2.10,
// 2001:db8::10) on its own loopback.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftvs/nftvs/internal/netnstest"
)

// pktTimeout bounds every dial and read: a "dropped" connection is one that
// did not succeed within it.
const pktTimeout = 2 * time.Second

// pktFamily holds the topology's addresses of one family.
type pktFamily struct {
	name string
	ip   string // nft payload keyword: "ip" or "ip6"

	pod, ext, backend             netip.Addr   // clients and backend, on their eth0
	nodePod, nodeExt, nodeBackend netip.Addr   // the node's ends of those links
	podCIDR                       netip.Prefix // this node's pods
	clusterCIDR                   netip.Prefix // every node's: covers pod and ext
	clusterIP                     netip.Addr   // on the backend's lo, routed from the node
	vip                           netip.Addr   // on the node's lo: a kube-ipvs0 address
	lb                            netip.Addr   // on the node's lo: a load-balancer IP
	hostBits                      int
}

var pktFamilies = []pktFamily{
	{
		name: "ipv4", ip: "ip",
		pod: pktAddr("10.200.1.2"), ext: pktAddr("10.200.3.2"), backend: pktAddr("10.200.2.2"),
		nodePod: pktAddr("10.200.1.1"), nodeExt: pktAddr("10.200.3.1"), nodeBackend: pktAddr("10.200.2.1"),
		podCIDR: netip.MustParsePrefix("10.200.1.0/24"), clusterCIDR: netip.MustParsePrefix("10.200.0.0/16"),
		clusterIP: pktAddr("10.96.0.10"), vip: pktAddr("10.96.0.20"), lb: pktAddr("192.0.2.10"),
		hostBits: 32,
	},
	{
		name: "ipv6", ip: "ip6",
		pod: pktAddr("fd00:200:1::2"), ext: pktAddr("fd00:200:3::2"), backend: pktAddr("fd00:200:2::2"),
		nodePod: pktAddr("fd00:200:1::1"), nodeExt: pktAddr("fd00:200:3::1"), nodeBackend: pktAddr("fd00:200:2::1"),
		podCIDR: netip.MustParsePrefix("fd00:200:1::/64"), clusterCIDR: netip.MustParsePrefix("fd00:200::/32"),
		clusterIP: pktAddr("fd00:96::10"), vip: pktAddr("fd00:96::20"), lb: pktAddr("2001:db8::10"),
		hostBits: 128,
	},
}

func pktAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func (f pktFamily) host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, f.hostBits) }

// subnet renders a with the /24 or /64 of the veth links.
func (f pktFamily) subnet(a netip.Addr) string {
	if a.Is4() {
		return a.String() + "/24"
	}
	return a.String() + "/64"
}

// pktTopo is the namespaces of one subtest.
type pktTopo struct {
	node, pod, ext, backend *netnstest.NS
}

func newPktTopo(t *testing.T) *pktTopo {
	t.Helper()
	tp := &pktTopo{node: netnstest.New(t), pod: netnstest.New(t), ext: netnstest.New(t), backend: netnstest.New(t)}
	// Settings first, so that the links created next inherit them. IPv4
	// settings of a new namespace are copied from the host's: pin those
	// that matter. No DAD anywhere: addresses (link-local ones included,
	// which neighbour discovery needs) are usable at once.
	common := [][2]string{
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_dad", "0"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
	}
	for _, ns := range []*netnstest.NS{tp.pod, tp.ext, tp.backend} {
		pktSysctl(t, ns, common...)
	}
	pktSysctl(t, tp.node, append(common,
		[2]string{"net/ipv4/ip_forward", "1"},
		[2]string{"net/ipv6/conf/all/forwarding", "1"},
		// The hairpin case forwards out of the interface a packet came in
		// on: no redirects.
		[2]string{"net/ipv4/conf/all/send_redirects", "0"},
		[2]string{"net/ipv4/conf/default/send_redirects", "0"},
	)...)

	type link struct {
		nodeIf string
		peer   *netnstest.NS
		client func(pktFamily) (peer, node netip.Addr)
	}
	links := []link{
		{"vethpod0", tp.pod, func(f pktFamily) (netip.Addr, netip.Addr) { return f.pod, f.nodePod }},
		{"vext0", tp.ext, func(f pktFamily) (netip.Addr, netip.Addr) { return f.ext, f.nodeExt }},
		{"vback0", tp.backend, func(f pktFamily) (netip.Addr, netip.Addr) { return f.backend, f.nodeBackend }},
	}
	var node []string
	for _, l := range links {
		node = append(node, fmt.Sprintf("link add %s type veth peer name eth0 netns %s", l.nodeIf, l.peer.Name))
		var peer []string
		for _, f := range pktFamilies {
			p, n := l.client(f)
			node = append(node, "addr add "+f.subnet(n)+" dev "+l.nodeIf+pktNodad(n))
			peer = append(peer, "addr add "+f.subnet(p)+" dev eth0"+pktNodad(p))
		}
		node = append(node, "link set "+l.nodeIf+" up")
		peer = append(peer, "link set eth0 up")
		for _, f := range pktFamilies {
			_, n := l.client(f)
			def := "default"
			if n.Is6() {
				def = "::/0"
			}
			peer = append(peer, fmt.Sprintf("route add %s via %s", def, n))
		}
		if l.peer == tp.backend {
			for _, f := range pktFamilies {
				peer = append(peer, "addr add "+f.host(f.clusterIP).String()+" dev lo"+pktNodad(f.clusterIP))
			}
		}
		// The peer's eth0 exists once the node's side of this link is
		// made: node batch first, then the peer's.
		pktIPBatch(t, tp.node, node...)
		node = nil
		pktIPBatch(t, l.peer, peer...)
	}
	for _, f := range pktFamilies {
		for _, a := range []netip.Addr{f.vip, f.lb} {
			node = append(node, "addr add "+f.host(a).String()+" dev lo"+pktNodad(a))
		}
		node = append(node, fmt.Sprintf("route add %s via %s", f.host(f.clusterIP), f.backend))
	}
	pktIPBatch(t, tp.node, node...)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := tp.node.Try("nft", "list", "ruleset")
			t.Logf("node ruleset at failure:\n%s", out)
		}
	})
	return tp
}

func pktNodad(a netip.Addr) string {
	if a.Is6() {
		return " nodad"
	}
	return ""
}

// pktIPBatch runs `ip -batch` inside ns.
func pktIPBatch(t *testing.T, ns *netnstest.NS, lines ...string) {
	t.Helper()
	if len(lines) == 0 {
		return
	}
	file := filepath.Join(t.TempDir(), "ip.batch")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "ip", "-batch", file)
}

// pktNft loads an nft script inside ns.
func pktNft(t *testing.T, ns *netnstest.NS, script string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "rules.nft")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "-f", file)
}

// pktSysctl writes /proc/sys entries of ns (the calling thread's netns
// decides which namespace /proc/sys/net shows).
func pktSysctl(t *testing.T, ns *netnstest.NS, kv ...[2]string) {
	t.Helper()
	ns.Do(t, func() {
		for _, e := range kv {
			if err := os.WriteFile("/proc/sys/"+e[0], []byte(e[1]), 0o644); err != nil {
				t.Fatalf("sysctl %s=%s in %s: %v", e[0], e[1], ns.Name, err)
			}
		}
	})
}

// pktServeTCP listens on port (every address, both families) in ns and
// answers each connection with the address of the peer it saw.
func pktServeTCP(t *testing.T, ns *netnstest.NS, ports ...int) {
	t.Helper()
	for _, port := range ports {
		var ln net.Listener
		ns.Do(t, func() {
			var err error
			if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
				t.Fatalf("listen tcp :%d in %s: %v", port, ns.Name, err)
			}
		})
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(pktTimeout))
					fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				}()
			}
		}()
	}
}

// pktServeUDP is pktServeTCP for UDP: every datagram is answered with the
// peer's address.
func pktServeUDP(t *testing.T, ns *netnstest.NS, ports ...int) {
	t.Helper()
	for _, port := range ports {
		var pc net.PacketConn
		ns.Do(t, func() {
			var err error
			if pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port)); err != nil {
				t.Fatalf("listen udp :%d in %s: %v", port, ns.Name, err)
			}
		})
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 1500)
			for {
				_, addr, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(addr.String()+"\n"), addr)
			}
		}()
	}
}

func pktParsePeer(line string) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("bad reply %q: %w", line, err)
	}
	return ap.Addr().Unmap(), nil
}

// pktDialTCP connects from ns (from src, when valid) to dst and returns the
// source address the server saw.
func pktDialTCP(t *testing.T, ns *netnstest.NS, src netip.Addr, dst netip.AddrPort) (netip.Addr, error) {
	t.Helper()
	var conn net.Conn
	var err error
	ns.Do(t, func() {
		d := net.Dialer{Timeout: pktTimeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		conn, err = d.Dial("tcp", dst.String())
	})
	if err != nil {
		return netip.Addr{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(pktTimeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return netip.Addr{}, fmt.Errorf("connected, but no reply: %w", err)
	}
	return pktParsePeer(line)
}

// pktUDP sends a datagram from ns to dst (at most three tries) and returns
// the source address the server saw.
func pktUDP(t *testing.T, ns *netnstest.NS, dst netip.AddrPort) (netip.Addr, error) {
	t.Helper()
	var conn net.Conn
	var err error
	ns.Do(t, func() { conn, err = net.DialTimeout("udp", dst.String(), pktTimeout) })
	if err != nil {
		return netip.Addr{}, err
	}
	defer conn.Close()
	buf := make([]byte, 256)
	for range 3 {
		if _, err = conn.Write([]byte("ping\n")); err != nil {
			return netip.Addr{}, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(pktTimeout / 3))
		var n int
		if n, err = conn.Read(buf); err == nil {
			return pktParsePeer(string(buf[:n]))
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return netip.Addr{}, err
		}
	}
	return netip.Addr{}, err
}

// pktExpectPeer: the TCP connection succeeds and the server sees want as
// its source.
func pktExpectPeer(t *testing.T, what string, ns *netnstest.NS, src netip.Addr, dst netip.AddrPort, want netip.Addr) {
	t.Helper()
	got, err := pktDialTCP(t, ns, src, dst)
	switch {
	case err != nil:
		t.Errorf("%s: %s → %v: %v, want a connection seen from %v", what, pktSrc(ns, src), dst, err, want)
	case got != want:
		t.Errorf("%s: %s → %v: server saw source %v, want %v", what, pktSrc(ns, src), dst, got, want)
	}
}

// pktExpectConnect: the TCP connection succeeds.
func pktExpectConnect(t *testing.T, what string, ns *netnstest.NS, src netip.Addr, dst netip.AddrPort) netip.Addr {
	t.Helper()
	got, err := pktDialTCP(t, ns, src, dst)
	if err != nil {
		t.Errorf("%s: %s → %v: %v, want a connection", what, pktSrc(ns, src), dst, err)
	}
	return got
}

// pktExpectRefused: the TCP connection is refused (a reject, not a drop).
func pktExpectRefused(t *testing.T, what string, ns *netnstest.NS, src netip.Addr, dst netip.AddrPort) {
	t.Helper()
	got, err := pktDialTCP(t, ns, src, dst)
	switch {
	case err == nil:
		t.Errorf("%s: %s → %v: connected (server saw %v), want connection refused", what, pktSrc(ns, src), dst, got)
	case !errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("%s: %s → %v: %v, want connection refused", what, pktSrc(ns, src), dst, err)
	}
}

// pktExpectDropped: the TCP connection does not succeed within pktTimeout,
// and is not refused either (a drop is silent).
func pktExpectDropped(t *testing.T, what string, ns *netnstest.NS, src netip.Addr, dst netip.AddrPort) {
	t.Helper()
	got, err := pktDialTCP(t, ns, src, dst)
	switch {
	case err == nil:
		t.Errorf("%s: %s → %v: connected (server saw %v), want it dropped", what, pktSrc(ns, src), dst, got)
	case errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("%s: %s → %v: connection refused, want it silently dropped", what, pktSrc(ns, src), dst)
	}
}

func pktSrc(ns *netnstest.NS, src netip.Addr) string {
	if src.IsValid() {
		return fmt.Sprintf("%s from %v", ns.Name, src)
	}
	return ns.Name
}

// pktProgram creates the table in the node namespace and syncs the
// elements of owner.
func pktProgram(t *testing.T, ns *netnstest.NS, cfg Config, owner string, elems ...Element) *Table {
	t.Helper()
	tbl, err := New(cfg, WithNetNS(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	pktSync(t, tbl, owner, elems...)
	return tbl
}

// pktSync replaces the elements of owner and syncs (incrementally after
// the first sync).
func pktSync(t *testing.T, tbl *Table, owner string, elems ...Element) SyncResult {
	t.Helper()
	if err := tbl.SetElements(owner, elems); err != nil {
		t.Fatal(err)
	}
	res, err := tbl.Sync(false)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// pktCounters reads the packet counters of a table's rules, by rule
// comment.
func pktCounters(t *testing.T, ns *netnstest.NS, family, table string) map[string]uint64 {
	t.Helper()
	out := ns.Run(t, "nft", "-j", "list", "table", family, table)
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Comment string                       `json:"comment"`
				Expr    []map[string]json.RawMessage `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j list table %s %s: %v\n%s", family, table, err, out)
	}
	counters := map[string]uint64{}
	for _, o := range doc.Nftables {
		if o.Rule == nil || o.Rule.Comment == "" {
			continue
		}
		for _, e := range o.Rule.Expr {
			if raw, ok := e["counter"]; ok {
				var c struct {
					Packets uint64 `json:"packets"`
				}
				if err := json.Unmarshal(raw, &c); err != nil {
					t.Fatalf("counter of %q: %v", o.Rule.Comment, err)
				}
				counters[o.Rule.Comment] = c.Packets
			}
		}
	}
	return counters
}

func pktPort(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func TestPacket(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Run("masquerade", testPacketMasquerade)
	t.Run("hairpin", testPacketHairpin)
	t.Run("service-filter", testPacketServiceFilter)
	t.Run("lb-source-ranges", testPacketLBSourceRanges)
	t.Run("nodeport-mark", testPacketNodePortMark)
	t.Run("etp-local-fwmarks", testPacketETPLocalFWMarks)
	t.Run("foreign-tables-untouched", testPacketForeignTablesUntouched)
	t.Run("foreign-mark-bits", testPacketForeignMarkBits)
}

// testPacketMasquerade: ClusterIP traffic forwarded by the node is
// masqueraded (to the node's address towards the backend) according to
// local-traffic detection, --masquerade-all and --ipvs-exclude-cidrs; the
// node's own traffic to a ClusterIP always is, unless excluded.
func testPacketMasquerade(t *testing.T) {
	podCIDRs := []netip.Prefix{pktFamilies[0].podCIDR, pktFamilies[1].podCIDR}
	excluded := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/24"), netip.MustParsePrefix("fd00:96::/64")}
	cases := []struct {
		name         string
		cfg          Config
		noClusterIP  bool // leave the ClusterIP out of the set
		podMasq      bool // traffic from the pod client is masqueraded
		extMasq      bool // traffic from the outside client is masqueraded
		nodeMasq     bool // the node's own traffic is masqueraded
		nodeExcluded bool
	}{
		{name: "pod-cidr", cfg: Config{LocalTraffic: LocalTraffic{PodCIDRs: podCIDRs}},
			extMasq: true, nodeMasq: true},
		{name: "interface-prefix", cfg: Config{LocalTraffic: LocalTraffic{Interface: "vethpod*"}},
			extMasq: true, nodeMasq: true},
		{name: "masquerade-all", cfg: Config{MasqueradeAll: true, LocalTraffic: LocalTraffic{PodCIDRs: podCIDRs}},
			podMasq: true, extMasq: true, nodeMasq: true},
		{name: "exclude-cidrs", cfg: Config{LocalTraffic: LocalTraffic{PodCIDRs: podCIDRs}, ExcludeCIDRs: excluded}},
		{name: "exclude-cidrs-masquerade-all", cfg: Config{MasqueradeAll: true, LocalTraffic: LocalTraffic{PodCIDRs: podCIDRs}, ExcludeCIDRs: excluded}},
		{name: "not-a-cluster-ip", cfg: Config{LocalTraffic: LocalTraffic{PodCIDRs: podCIDRs}}, noClusterIP: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, f := range pktFamilies {
				t.Run(f.name, func(t *testing.T) {
					tp := newPktTopo(t)
					pktServeTCP(t, tp.backend, 80)
					var elems []Element
					if !c.noClusterIP {
						// Both families' ClusterIPs: each family's rule must
						// match only its own.
						for _, g := range pktFamilies {
							elems = append(elems, Element{Set: ClusterIPs, Addr: g.clusterIP, Protocol: TCP, Port: 80})
						}
					}
					pktProgram(t, tp.node, c.cfg, "default/web:http", elems...)
					dst := pktPort(f.clusterIP, 80)
					want := func(masq bool, src netip.Addr) netip.Addr {
						if masq {
							return f.nodeBackend
						}
						return src
					}
					pktExpectPeer(t, "pod client", tp.pod, netip.Addr{}, dst, want(c.podMasq, f.pod))
					pktExpectPeer(t, "outside client", tp.ext, netip.Addr{}, dst, want(c.extMasq, f.ext))
					// Bound to another node address, so that masquerade
					// (to nodeBackend) is visible.
					pktExpectPeer(t, "node", tp.node, f.nodeExt, dst, want(c.nodeMasq, f.nodeExt))
					// A port that is not the Service's is never marked.
					pktServeTCP(t, tp.backend, 81)
					pktExpectPeer(t, "outside client, other port", tp.ext, netip.Addr{}, pktPort(f.clusterIP, 81), f.ext)
				})
			}
		})
	}
}

// testPacketHairpin: a pod reaching itself through a Service is
// masqueraded by the hairpin set. IPVS's destination NAT is simulated by a
// foreign nat table; the pod is in the pod CIDR, so nothing else
// masquerades it.
func testPacketHairpin(t *testing.T) {
	f := pktFamilies[0]
	tp := newPktTopo(t)
	pktServeTCP(t, tp.pod, 8080)
	svc := pktAddr("10.96.0.30")
	pktNft(t, tp.node, fmt.Sprintf(`table ip ipvs-sim {
	chain pre { type nat hook prerouting priority dstnat + 1; ip daddr %v tcp dport 80 dnat to %v:8080; }
}
`, svc, f.pod))
	cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{f.podCIDR}}}
	pktProgram(t, tp.node, cfg, "default/self:http",
		Element{Set: ClusterIPs, Addr: svc, Protocol: TCP, Port: 80},
		Element{Set: Hairpin, Addr: f.pod, Protocol: TCP, Port: 8080})
	pktExpectPeer(t, "pod to itself through the Service", tp.pod, netip.Addr{}, pktPort(svc, 80), f.nodePod)
}

// testPacketServiceFilter: new connections to a kube-ipvs0 address on a
// port that is no Service port are rejected; the node's other addresses
// are not filtered; health check node ports are let through.
func testPacketServiceFilter(t *testing.T) {
	for _, f := range pktFamilies {
		t.Run(f.name, func(t *testing.T) {
			tp := newPktTopo(t)
			pktServeTCP(t, tp.node, 80, 9999)
			pktServeUDP(t, tp.node, 9999)
			cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{f.podCIDR}}}
			tbl := pktProgram(t, tp.node, cfg, "default/web:http",
				Element{Set: ClusterIPs, Addr: f.vip, Protocol: TCP, Port: 80},
				Element{Set: IPVSAddresses, Addr: f.vip})

			for _, c := range []struct {
				name string
				ns   *netnstest.NS
			}{{"outside client", tp.ext}, {"pod client", tp.pod}} {
				pktExpectConnect(t, c.name+", Service port", c.ns, netip.Addr{}, pktPort(f.vip, 80))
				pktExpectRefused(t, c.name+", not a Service port", c.ns, netip.Addr{}, pktPort(f.vip, 9999))
			}
			pktExpectConnect(t, "outside client, node address, port 9999", tp.ext, netip.Addr{}, pktPort(f.nodeExt, 9999))
			if _, err := pktUDP(t, tp.ext, pktPort(f.vip, 9999)); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("UDP outside client → %v: %v, want connection refused", pktPort(f.vip, 9999), err)
			}
			if _, err := pktUDP(t, tp.ext, pktPort(f.nodeExt, 9999)); err != nil {
				t.Errorf("UDP outside client → %v: %v, want an answer", pktPort(f.nodeExt, 9999), err)
			}

			pktSync(t, tbl, "node", Element{Set: HealthCheckNodePorts, Port: 9999})
			pktExpectConnect(t, "outside client, health check node port", tp.ext, netip.Addr{}, pktPort(f.vip, 9999))
			pktSync(t, tbl, "node")
			pktExpectRefused(t, "outside client, health check node port removed", tp.ext, netip.Addr{}, pktPort(f.vip, 9999))
		})
	}
}

// testPacketLBSourceRanges: loadBalancerSourceRanges let listed sources
// in and drop others, for traffic from the network (prerouting) and from
// the node itself (output); updates apply to live traffic.
func testPacketLBSourceRanges(t *testing.T) {
	for _, f := range pktFamilies {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel() // most of the time goes in waiting for drops
			tp := newPktTopo(t)
			pktServeTCP(t, tp.node, 80)
			cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{f.podCIDR}}}
			lb := pktPort(f.lb, 80)
			service := []Element{
				{Set: LoadBalancerIPs, Addr: f.lb, Protocol: TCP, Port: 80},
				{Set: IPVSAddresses, Addr: f.lb},
				{Set: LoadBalancerFirewall, Addr: f.lb, Protocol: TCP, Port: 80},
			}
			ranges := func(ps ...netip.Prefix) []Element {
				var es []Element
				for _, p := range ps {
					es = append(es, Element{Set: LoadBalancerSourceRanges, Addr: f.lb, Protocol: TCP, Port: 80, Source: p})
				}
				return es
			}
			tbl := pktProgram(t, tp.node, cfg, "default/lb:http", append(service, ranges(f.podCIDR)...)...)

			pktExpectConnect(t, "client in range", tp.pod, netip.Addr{}, lb)
			pktExpectDropped(t, "client out of range", tp.ext, netip.Addr{}, lb)
			pktExpectDropped(t, "node, source address out of range", tp.node, f.nodeBackend, lb)
			// With no source given, the node picks the LB IP itself.
			pktExpectDropped(t, "node, source LB IP out of range", tp.node, netip.Addr{}, lb)

			// The node's own traffic to an LB IP (ETP Cluster) carries the
			// masquerade mark: even delivered locally it is masqueraded, so
			// the server does not tell the node's sources apart; the drops
			// before and after each update do.
			res := pktSync(t, tbl, "default/lb:http", append(service, ranges(f.podCIDR, f.host(f.lb))...)...)
			if res.Rebuilt {
				t.Errorf("adding a source range rebuilt the table: %+v", res)
			}
			pktExpectConnect(t, "node, source LB IP now in range", tp.node, netip.Addr{}, lb)
			pktExpectDropped(t, "node, source address still out of range", tp.node, f.nodeBackend, lb)
			pktSync(t, tbl, "default/lb:http", append(service, ranges(f.podCIDR, f.host(f.lb), f.host(f.nodeBackend))...)...)
			pktExpectConnect(t, "node, source address now in range", tp.node, f.nodeBackend, lb)
			pktExpectConnect(t, "client in range, after updates", tp.pod, netip.Addr{}, lb)

			// Drop the firewall element (the ranges stay): everyone is in.
			res = pktSync(t, tbl, "default/lb:http", append(service[:2:2], ranges(f.podCIDR)...)...)
			if res.Rebuilt || res.Deleted == 0 {
				t.Errorf("removing the firewall element: %+v, want an incremental delete", res)
			}
			pktExpectPeer(t, "client out of range, firewall removed", tp.ext, netip.Addr{}, lb, f.ext)
			pktExpectConnect(t, "node, firewall removed", tp.node, f.nodeBackend, lb)
		})
	}
}

// testPacketNodePortMark: traffic to a local address on a listed node port
// carries the masquerade mark (seen by a foreign table's input chain);
// other ports, and the same port on a forwarded address, do not.
func testPacketNodePortMark(t *testing.T) {
	for _, f := range pktFamilies {
		t.Run(f.name, func(t *testing.T) {
			tp := newPktTopo(t)
			pktServeTCP(t, tp.node, 30080, 30081)
			pktServeUDP(t, tp.node, 30053)
			pktServeTCP(t, tp.backend, 30080)
			pktNft(t, tp.node, `table inet observer {
	chain in {
		type filter hook input priority filter + 10; policy accept;
		tcp dport 30080 meta mark & 0x4000 == 0x4000 counter comment "tcp-30080-marked"
		tcp dport 30081 counter comment "tcp-30081-all"
		tcp dport 30081 meta mark & 0x4000 == 0x4000 counter comment "tcp-30081-marked"
		udp dport 30053 meta mark & 0x4000 == 0x4000 counter comment "udp-30053-marked"
	}
}
`)
			cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{f.podCIDR}}}
			tbl := pktProgram(t, tp.node, cfg, "default/np:http",
				Element{Set: NodePorts, Protocol: TCP, Port: 30080},
				Element{Set: NodePorts, Protocol: UDP, Port: 30053})
			pktSync(t, tbl, "node", Element{Set: NodePortAddresses, Addr: f.nodeExt})

			pktExpectPeer(t, "outside client, node port", tp.ext, netip.Addr{}, pktPort(f.nodeExt, 30080), f.ext)
			pktExpectPeer(t, "outside client, other port", tp.ext, netip.Addr{}, pktPort(f.nodeExt, 30081), f.ext)
			if _, err := pktUDP(t, tp.ext, pktPort(f.nodeExt, 30053)); err != nil {
				t.Errorf("UDP outside client → %v: %v", pktPort(f.nodeExt, 30053), err)
			}
			// Port 30080 of an address that is not the node's: forwarded,
			// not marked, so not masqueraded.
			pktExpectPeer(t, "outside client, node port number on the backend", tp.ext, netip.Addr{}, pktPort(f.backend, 30080), f.ext)

			got := pktCounters(t, tp.node, "inet", "observer")
			for name, wantSome := range map[string]bool{
				"tcp-30080-marked": true, "tcp-30081-all": true, "tcp-30081-marked": false, "udp-30053-marked": true,
			} {
				if (got[name] > 0) != wantSome {
					t.Errorf("observer counter %s = %d packets, want %s", name, got[name], map[bool]string{true: "> 0", false: "0"}[wantSome])
				}
			}
		})
	}
}

// testPacketETPLocalFWMarks: the fwmark maps of externalTrafficPolicy
// Local frontends set the exact mark (right byte order) on the node's own
// traffic (output) and on traffic from its pods (prerouting), never on
// traffic from outside, even from inside the cluster CIDR (detect-local-mode
// ClusterCIDR): a pod on another node reaching this node's node port
// unmasqueraded, as the outside client here, is external to it. A node
// port without a local endpoint drops it and still serves this node's pods
// (upstream's e2e "should fallback to local terminating endpoints … Local"
// failed on three nodes when every cluster pod was internal).
func testPacketETPLocalFWMarks(t *testing.T) {
	const lbMark, npMark, noLocalMark = 0x12344000, 0x56784000, 0x9abc4000
	for _, f := range pktFamilies {
		t.Run(f.name, func(t *testing.T) {
			tp := newPktTopo(t)
			pktServeTCP(t, tp.node, 80, 30090, 30091)
			pktNft(t, tp.node, fmt.Sprintf(`table inet observer {
	chain out {
		type filter hook output priority -90; policy accept;
		%[1]s daddr %[2]v tcp dport 80 meta mark 0x%08[3]x counter comment "node-lb"
		%[1]s daddr %[4]v tcp dport 30090 meta mark 0x%08[5]x counter comment "node-np"
	}
	chain in {
		type filter hook input priority filter + 10; policy accept;
		%[1]s saddr %[6]v tcp dport 80 meta mark 0x%08[3]x counter comment "pod-lb"
		%[1]s saddr %[6]v tcp dport 30090 meta mark 0x%08[5]x counter comment "pod-np"
		%[1]s saddr %[6]v tcp dport 30091 meta mark 0x%08[8]x counter comment "pod-np-no-local"
		%[1]s saddr %[7]v tcp dport { 80, 30090, 30091 } counter comment "ext-all"
		%[1]s saddr %[7]v tcp dport { 80, 30090, 30091 } meta mark != 0 counter comment "ext-marked"
		%[1]s daddr %[2]v tcp dport 30090 meta mark != 0 counter comment "lb-np-marked"
		%[1]s daddr %[2]v tcp dport 30090 counter comment "lb-np-all"
	}
}
`, f.ip, f.lb, lbMark, f.nodeExt, npMark, f.pod, f.ext, noLocalMark))
			cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{f.clusterCIDR}, NodePodCIDRs: []netip.Prefix{f.podCIDR}}}
			tbl := pktProgram(t, tp.node, cfg, "default/local:http",
				Element{Set: LoadBalancerIPsLocal, Addr: f.lb, Protocol: TCP, Port: 80},
				Element{Set: LocalPolicyFWMarks, Addr: f.lb, Protocol: TCP, Port: 80, Mark: lbMark},
				Element{Set: NodePortsLocal, Protocol: TCP, Port: 30090},
				Element{Set: NodePortFWMarks, Protocol: TCP, Port: 30090, Mark: npMark})
			pktSync(t, tbl, "default/no-local:http",
				Element{Set: NodePortsLocal, Protocol: TCP, Port: 30091},
				Element{Set: NodePortsNoLocalEndpoints, Protocol: TCP, Port: 30091},
				Element{Set: NodePortFWMarks, Protocol: TCP, Port: 30091, Mark: noLocalMark})
			pktSync(t, tbl, "node", Element{Set: NodePortAddresses, Addr: f.nodeExt})

			pktExpectConnect(t, "node → LB", tp.node, netip.Addr{}, pktPort(f.lb, 80))
			pktExpectConnect(t, "node → node port", tp.node, netip.Addr{}, pktPort(f.nodeExt, 30090))
			pktExpectPeer(t, "pod → LB", tp.pod, netip.Addr{}, pktPort(f.lb, 80), f.pod)
			pktExpectPeer(t, "pod → node port", tp.pod, netip.Addr{}, pktPort(f.nodeExt, 30090), f.pod)
			pktExpectPeer(t, "outside → LB", tp.ext, netip.Addr{}, pktPort(f.lb, 80), f.ext)
			pktExpectPeer(t, "outside → node port", tp.ext, netip.Addr{}, pktPort(f.nodeExt, 30090), f.ext)
			pktExpectPeer(t, "pod → node port without local endpoint", tp.pod, netip.Addr{}, pktPort(f.nodeExt, 30091), f.pod)
			pktExpectDropped(t, "outside (another node's pod) → node port without local endpoint", tp.ext, netip.Addr{}, pktPort(f.nodeExt, 30091))
			// The node port's number on another local address (the LB
			// IP, as a ClusterIP on kube-ipvs0 would be) is not a node
			// port: never steered to the node port's fwmark (issue 26).
			pktExpectConnect(t, "node → LB address, node port number", tp.node, netip.Addr{}, pktPort(f.lb, 30090))
			pktExpectPeer(t, "pod → LB address, node port number", tp.pod, netip.Addr{}, pktPort(f.lb, 30090), f.pod)

			got := pktCounters(t, tp.node, "inet", "observer")
			for name, wantSome := range map[string]bool{
				"node-lb": true, "node-np": true, "pod-lb": true, "pod-np": true, "pod-np-no-local": true, "ext-all": true, "ext-marked": false,
				"lb-np-all": true, "lb-np-marked": false,
			} {
				if (got[name] > 0) != wantSome {
					t.Errorf("observer counter %s = %d packets, want %s", name, got[name], map[bool]string{true: "> 0", false: "0"}[wantSome])
				}
			}
		})
	}
}

// testPacketForeignMarkBits: a CNI-style table sets a bit of its own
// (0x10000000, in Calico's 0xffff0000) on every packet before nftvs's
// chains run. With a non-default masquerade bit (--iptables-masquerade-bit
// 3): traffic marked for masquerade keeps the foreign bit, is masqueraded,
// and no packet carries kube-proxy's default bit 0x4000; internal traffic
// to an externalTrafficPolicy Local frontend carries exactly the fwmark on
// its first packet (IPVS matches the whole mark) and the foreign bit, not
// the fwmark, on the later ones.
func testPacketForeignMarkBits(t *testing.T) {
	const foreign, masq, lbMark = 0x10000000, 0x8, 0x12340008
	for _, f := range pktFamilies {
		t.Run(f.name, func(t *testing.T) {
			tp := newPktTopo(t)
			pktServeTCP(t, tp.backend, 80)
			pktServeTCP(t, tp.node, 80)
			pktNft(t, tp.node, fmt.Sprintf(`table inet cni {
	chain early { type filter hook prerouting priority mangle; policy accept; meta mark set meta mark | 0x%08[1]x; }
	chain forwarded {
		type filter hook forward priority filter + 10; policy accept;
		meta mark & 0x%08[2]x == 0x%08[2]x counter comment "forwarded-foreign-and-masquerade"
		meta mark & 0x00004000 != 0 counter comment "forwarded-default-bit"
	}
	chain leaving {
		type filter hook postrouting priority srcnat + 10; policy accept;
		%[3]s daddr %[4]v meta mark & 0x%08[1]x == 0x%08[1]x counter comment "postrouting-foreign"
	}
	chain arriving {
		type filter hook input priority filter + 10; policy accept;
		%[3]s saddr %[5]v ct state new meta mark 0x%08[6]x counter comment "first-fwmark"
		%[3]s saddr %[5]v ct state established meta mark 0x%08[1]x counter comment "later-foreign"
		%[3]s saddr %[5]v ct state established meta mark != 0x%08[1]x counter comment "later-other"
	}
}
`, foreign, foreign|masq, f.ip, f.clusterIP, f.pod, lbMark))
			cfg := Config{MasqueradeMark: masq, LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{f.podCIDR}, NodePodCIDRs: []netip.Prefix{f.podCIDR}}}
			tbl := pktProgram(t, tp.node, cfg, "default/web:http",
				Element{Set: ClusterIPs, Addr: f.clusterIP, Protocol: TCP, Port: 80},
				Element{Set: LoadBalancerIPsLocal, Addr: f.lb, Protocol: TCP, Port: 80},
				Element{Set: LocalPolicyFWMarks, Addr: f.lb, Protocol: TCP, Port: 80, Mark: lbMark})
			if err := tbl.SetElements("default/other:http", []Element{
				{Set: NodePortFWMarks, Protocol: TCP, Port: 30080, Mark: 0x12344000},
			}); err == nil {
				t.Error("an fwmark without the configured masquerade bit was accepted")
			}

			pktExpectPeer(t, "outside → ClusterIP", tp.ext, netip.Addr{}, pktPort(f.clusterIP, 80), f.nodeBackend)
			pktExpectPeer(t, "pod → LB", tp.pod, netip.Addr{}, pktPort(f.lb, 80), f.pod)

			got := pktCounters(t, tp.node, "inet", "cni")
			for name, wantSome := range map[string]bool{
				"forwarded-foreign-and-masquerade": true, "forwarded-default-bit": false, "postrouting-foreign": true,
				"first-fwmark": true, "later-foreign": true, "later-other": false,
			} {
				if (got[name] > 0) != wantSome {
					t.Errorf("cni counter %s = %d packets, want %s", name, got[name], map[bool]string{true: "> 0", false: "0"}[wantSome])
				}
			}
		})
	}
}

// testPacketForeignTablesUntouched: other tables in the node (including
// one named like ours in another family) are byte-identical after our
// syncs, a drift-repairing rebuild and our cleanup.
func testPacketForeignTablesUntouched(t *testing.T) {
	ns := netnstest.New(t)
	pktNft(t, ns, `table inet observer {
	set watched { type ipv4_addr; flags interval; elements = { 10.96.0.0/12 } }
	chain in { type filter hook input priority filter + 10; policy accept; meta mark & 0x4000 == 0x4000 counter; ip daddr @watched counter; }
	chain out { type filter hook output priority -90; policy accept; meta mark 0x12344000 counter; }
}
table ip nftvs {
	chain post { type nat hook postrouting priority srcnat; policy accept; meta mark & 0x4000 == 0x4000 masquerade; }
}
table inet nftvs-other {
	chain forward_drop { type filter hook forward priority filter; policy drop; }
}
`)
	list := func() string {
		return ns.Run(t, "nft", "list", "table", "inet", "observer") +
			ns.Run(t, "nft", "list", "table", "ip", "nftvs") +
			ns.Run(t, "nft", "list", "table", "inet", "nftvs-other")
	}
	want := list()
	check := func(step string) {
		t.Helper()
		if got := list(); got != want {
			t.Fatalf("foreign tables changed by %s:\nbefore:\n%s\nafter:\n%s", step, want, got)
		}
	}
	f := pktFamilies[0]
	cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{f.podCIDR}}, ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")}}
	tbl := pktProgram(t, ns, cfg, "default/web:http",
		Element{Set: ClusterIPs, Addr: f.clusterIP, Protocol: TCP, Port: 80},
		Element{Set: LocalPolicyFWMarks, Addr: f.lb, Protocol: TCP, Port: 80, Mark: 0x12344000})
	check("the first sync")
	pktSync(t, tbl, "default/web:http", Element{Set: ClusterIPs, Addr: f.clusterIP, Protocol: TCP, Port: 443})
	check("an incremental sync")
	ns.Run(t, "nft", "add", "table", "inet", "drift") // moves the ruleset generation
	res, err := tbl.Sync(true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Rebuilt {
		t.Errorf("full sync after someone else's commit did not rebuild: %+v", res)
	}
	check("a rebuild")
	if err := tbl.Cleanup(); err != nil {
		t.Fatal(err)
	}
	check("cleanup")
	if out, err := ns.Try("nft", "list", "table", "inet", "nftvs"); err == nil {
		t.Errorf("table inet nftvs still there after cleanup:\n%s", out)
	}
}
