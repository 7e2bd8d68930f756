package conntrack

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nftvs/nftvs/internal/netnstest"
)

func newKernelCleaner(t testing.TB, ns *netnstest.NS) *Cleaner {
	t.Helper()
	c, err := New(WithNetNS(ns.FD()))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// TestKernelClean creates, in a fresh netns, the entries IPVS leaves for
// Service flows (original: client → frontend; reply: endpoint → client or
// node) next to entries that must survive, cleans once, and reads the
// table back from /proc/net/nf_conntrack.
func TestKernelClean(t *testing.T) {
	ns := netnstest.New(t)
	const (
		client   = "192.0.2.10:40001"
		client6  = "[2001:db8::10]:40001"
		gone     = "10.244.1.5:8080"
		kept     = "10.244.1.6:8080"
		gone6    = "[fd00:244::5]:8080"
		kept6    = "[fd00:244::6]:8080"
		cluster  = "10.96.0.10:80"
		external = "203.0.113.7:80"
		lb       = "198.51.100.7:80"
		nodePort = "172.18.0.2:30080"
		other    = "10.96.0.11:80" // another Service, same endpoint
		dns      = "10.96.0.53:53"
		cluster6 = "[fd00:96::10]:80"
		node6    = "[fd00:18::2]:30080"
	)
	masq := func(f ctFlow, node string) ctFlow { f.ReplyDst = ap(node); return f }
	zoned := func(f ctFlow, z uint16) ctFlow { f.Zone = z; return f }
	var doomed, survivors []ctFlow
	for _, p := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolSCTP} {
		doomed = append(doomed,
			natFlow(p, client, cluster, gone),
			natFlow(p, "192.0.2.11:40002", external, gone),
			natFlow(p, "192.0.2.12:40003", lb, gone),
			// NodePort traffic is masqueraded: the reply goes to the node.
			masq(natFlow(p, "192.0.2.13:40004", nodePort, gone), "172.18.0.2:61000"),
			zoned(natFlow(p, "192.0.2.14:40005", cluster, gone), 7),
			natFlow(p, client6, cluster6, gone6),
			masq(natFlow(p, "[2001:db8::11]:40002", node6, gone6), "[fd00:18::2]:61000"),
		)
		survivors = append(survivors,
			natFlow(p, "192.0.2.20:40001", cluster, kept),              // another endpoint
			natFlow(p, "192.0.2.21:40001", other, gone),                // another frontend
			natFlow(p, "192.0.2.22:40001", gone, gone),                 // the endpoint reached directly
			natFlow(p, "192.0.2.23:40001", cluster, "10.244.1.5:9090"), // same IP, other port
			natFlow(p, "[2001:db8::20]:40001", cluster6, kept6),
			natFlow(p, "[2001:db8::22]:40001", gone6, gone6),
		)
	}
	// UDP only: a TCP Stale for the same frontend and endpoint must not
	// touch them.
	survivors = append(survivors, natFlow(ProtocolTCP, "192.0.2.30:40001", "10.96.0.12:80", gone))
	doomed = append(doomed, natFlow(ProtocolUDP, "192.0.2.30:40001", "10.96.0.12:80", gone))
	// "Any reply source": every UDP entry to the DNS frontend goes, answered
	// or not (an entry made while there was no endpoint replies from the
	// frontend itself); TCP to the same frontend stays.
	doomed = append(doomed,
		natFlow(ProtocolUDP, "192.0.2.40:5353", dns, "10.244.2.1:53"),
		natFlow(ProtocolUDP, "192.0.2.41:5353", dns, "10.244.2.2:53"),
		natFlow(ProtocolUDP, "192.0.2.42:5353", dns, dns),
	)
	survivors = append(survivors, natFlow(ProtocolTCP, "192.0.2.40:5353", dns, "10.244.2.1:53"))

	createFlows(t, ns, append(slices.Clone(doomed), survivors...))
	if got, want := len(procFlows(t, ns)), len(doomed)+len(survivors); got != want {
		t.Fatalf("created %d entries, table holds %d", want, got)
	}

	var stale []Stale
	for _, p := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolSCTP} {
		stale = append(stale,
			Stale{Protocol: p, Endpoint: ap(gone), Frontends: []netip.AddrPort{ap(cluster), ap(external), ap(lb), ap(nodePort)}},
			Stale{Protocol: p, Endpoint: ap(gone6), Frontends: []netip.AddrPort{ap(cluster6), ap(node6)}},
		)
	}
	stale = append(stale,
		Stale{Protocol: ProtocolUDP, Endpoint: ap(gone), Frontends: []netip.AddrPort{ap("10.96.0.12:80")}},
		Stale{Protocol: ProtocolUDP, Frontends: []netip.AddrPort{ap(dns)}},
	)
	c := newKernelCleaner(t, ns)
	res, err := c.Clean(stale)
	if err != nil {
		t.Fatalf("Clean: %v", err)
	}
	t.Logf("result: %+v", res)
	if res.Walks != 1 || res.Deleted != len(doomed) || res.Vanished != 0 || res.Scanned != len(doomed)+len(survivors) {
		t.Errorf("result %+v, want 1 walk, %d scanned, %d deleted", res, len(doomed)+len(survivors), len(doomed))
	}
	got, want := flowKeys(procFlows(t, ns)), flowKeys(survivors)
	if !slices.Equal(got, want) {
		t.Errorf("table after Clean:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// Again: nothing left to delete, still one walk.
	res, err = c.Clean(stale)
	if err != nil || res.Walks != 1 || res.Deleted != 0 || res.Scanned != len(survivors) {
		t.Errorf("second Clean: %+v, %v", res, err)
	}
}

// TestKernelCleanEmpty: nothing to clean means no walk at all.
func TestKernelCleanEmpty(t *testing.T) {
	ns := netnstest.New(t)
	createFlows(t, ns, []ctFlow{natFlow(ProtocolTCP, "192.0.2.1:1000", "10.96.0.1:443", "172.18.0.2:6443")})
	c := newKernelCleaner(t, ns)
	for _, stale := range [][]Stale{nil, {}} {
		res, err := c.Clean(stale)
		if err != nil || res != (Result{}) {
			t.Errorf("Clean(%v) = %+v, %v; want zero result (no walk)", stale, res, err)
		}
	}
	if n := len(procFlows(t, ns)); n != 1 {
		t.Errorf("table holds %d entries, want 1", n)
	}
}

// TestKernelCleanInvalid: invalid Stale entries are reported, the valid
// ones still cleaned, and a list with nothing valid walks nothing.
func TestKernelCleanInvalid(t *testing.T) {
	ns := netnstest.New(t)
	createFlows(t, ns, []ctFlow{natFlow(ProtocolTCP, "192.0.2.1:1000", "10.96.0.1:80", "10.244.0.1:80")})
	c := newKernelCleaner(t, ns)
	res, err := c.Clean([]Stale{{Protocol: "ICMP", Frontends: []netip.AddrPort{ap("10.96.0.1:80")}}})
	if err == nil || res.Walks != 0 {
		t.Errorf("unknown protocol: %+v, %v; want an error and no walk", res, err)
	}
	res, err = c.Clean([]Stale{
		{Protocol: ProtocolTCP, Endpoint: ap("10.244.0.1:80"), Frontends: []netip.AddrPort{{}, ap("[fd00::1]:80"), ap("10.96.0.1:80")}},
	})
	if err == nil || res.Walks != 1 || res.Deleted != 1 {
		t.Errorf("mixed valid/invalid frontends: %+v, %v; want an error and 1 deleted", res, err)
	}
	t.Logf("error: %v", err)
}

// TestKernelDeleteVanished: an entry deleted between the dump and the
// delete is counted as vanished and is not an error; a delete names the
// dumped entry's id, so an entry with the same tuple but another id (a new
// connection that reused the tuple) is not deleted.
func TestKernelDeleteVanished(t *testing.T) {
	ns := netnstest.New(t)
	a := natFlow(ProtocolTCP, "192.0.2.1:1000", "10.96.0.1:80", "10.244.0.1:80")
	b := natFlow(ProtocolTCP, "192.0.2.2:1000", "10.96.0.1:80", "10.244.0.1:80")
	c := natFlow(ProtocolTCP, "192.0.2.3:1000", "10.96.0.1:80", "10.244.0.1:80")
	createFlows(t, ns, []ctFlow{a, b, c})
	ix, err := newIndex([]Stale{{Protocol: ProtocolTCP, Endpoint: ap("10.244.0.1:80"), Frontends: []netip.AddrPort{ap("10.96.0.1:80")}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := openSocket(ns.FD(), defaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	byClient := map[netip.AddrPort]doomed{}
	if _, err := s.dump(0, nil, func(e *entry) {
		if ix.match(e.proto, e.origDst, e.replySrc) {
			byClient[e.origSrc] = newDoomed(e)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(byClient) != 3 {
		t.Fatalf("matched %d entries, want 3", len(byClient))
	}
	// a goes away on its own.
	if _, _, err := s.deleteEntries([]doomed{byClient[a.OrigSrc]}); err != nil {
		t.Fatal(err)
	}
	// c's delete carries another id: what a new connection with c's tuple
	// would have.
	dc := byClient[c.OrigSrc]
	dc.body = slices.Clone(dc.body)
	flipped := false
	_ = forEachAttr(dc.body, func(typ uint16, v, _ []byte) {
		if typ == ctaID && len(v) == 4 {
			v[0] ^= 0xff // v aliases dc.body
			flipped = true
		}
	})
	if !flipped {
		t.Fatalf("no CTA_ID in delete body %x", dc.body)
	}
	deleted, vanished, err := s.deleteEntries([]doomed{byClient[a.OrigSrc], byClient[b.OrigSrc], dc})
	if err != nil || deleted != 1 || vanished != 2 {
		t.Errorf("deleteEntries: deleted %d vanished %d err %v; want 1, 2, nil", deleted, vanished, err)
	}
	got, want := flowKeys(procFlows(t, ns)), flowKeys([]ctFlow{c})
	if !slices.Equal(got, want) {
		t.Errorf("table: %v, want %v", got, want)
	}
}

// TestKernelRealTraffic checks the cleaner against entries the kernel made
// itself: UDP sent over a veth pair through a DNAT rule (the same tuples
// IPVS leaves), not crafted over netlink.
func TestKernelRealTraffic(t *testing.T) {
	ns := netnstest.New(t)
	ns.Run(t, "ip", "link", "add", "c0", "type", "veth", "peer", "name", "c1")
	ns.Run(t, "ip", "addr", "add", "10.0.0.1/24", "dev", "c0")
	ns.Run(t, "ip", "link", "set", "c0", "up")
	ns.Run(t, "ip", "link", "set", "c1", "up")
	ns.Run(t, "ip", "route", "add", "10.96.0.0/16", "dev", "c0")
	out, err := ns.TryStdin(strings.NewReader(`table ip t {
	chain out { type nat hook output priority -100; ip daddr 10.96.0.10 udp dport 53 dnat to 10.0.0.2:5353; }
}`), "nft", "-f", "-")
	if err != nil {
		t.Skipf("nft unavailable here (%v: %s); the netlink-created cases cover the kernel", err, out)
	}
	// No neighbour answers, but the first packet is enough to confirm
	// the entry.
	ns.Run(t, "ip", "neigh", "add", "10.0.0.2", "lladdr", "02:00:00:00:00:02", "dev", "c0")
	for _, port := range []string{"41001", "41002"} {
		if out, err := ns.TryStdin(strings.NewReader("x"), "socat", "-u", "STDIO", "UDP4-SENDTO:10.96.0.10:53,sourceport="+port); err != nil {
			t.Skipf("socat unavailable here (%v: %s)", err, out)
		}
	}
	before := procFlows(t, ns)
	if len(before) < 2 {
		t.Skipf("traffic made %d entries : %v", len(before), flowKeys(before))
	}
	c := newKernelCleaner(t, ns)
	res, err := c.Clean([]Stale{{Protocol: ProtocolUDP, Endpoint: ap("10.0.0.2:5353"), Frontends: []netip.AddrPort{ap("10.96.0.10:53")}}})
	if err != nil || res.Deleted != 2 {
		t.Errorf("Clean: %+v, %v; want 2 deleted of %v", res, err, flowKeys(before))
	}
	if after := procFlows(t, ns); len(after) != 0 {
		t.Errorf("left: %v", flowKeys(after))
	}
}

// TestKernelCleanFiltered: whatever kernel-side filter a stale list
// allows, the cleaner deletes exactly what the Fake (the same matching,
// no kernel) deletes, and with the filter off the result is the same.
func TestKernelCleanFiltered(t *testing.T) {
	var flows []ctFlow
	for _, p := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolSCTP} {
		for fi, fe := range []string{"10.96.0.10:80", "172.18.0.2:30080", "10.96.0.11:80", "10.244.1.5:8080"} {
			for ei, ep := range []string{"10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:9090"} {
				client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(fi*16 + ei)}), 40000)
				f := natFlow(p, client.String(), fe, ep)
				flows = append(flows, f)
				f.Zone = 3
				flows = append(flows, f)
			}
		}
		for fi, fe := range []string{"[fd00:96::10]:80", "[fd00:18::2]:30080"} {
			for ei, ep := range []string{"[fd00:244::5]:8080", "[fd00:244::6]:8080"} {
				client := netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(fi*16 + ei)}), 40000)
				flows = append(flows, natFlow(p, client.String(), fe, ep))
			}
		}
	}
	fes := func(s ...string) []netip.AddrPort {
		out := make([]netip.AddrPort, len(s))
		for i, x := range s {
			out[i] = ap(x)
		}
		return out
	}
	for _, c := range []struct {
		name     string
		stale    []Stale
		filtered bool
	}{
		{"one endpoint, two frontends", []Stale{{Protocol: ProtocolTCP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80", "172.18.0.2:30080")}}, true},
		{"one endpoint, one frontend", []Stale{{Protocol: ProtocolTCP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80")}}, true},
		{"two endpoints, one port", []Stale{
			{Protocol: ProtocolUDP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80", "172.18.0.2:30080")},
			{Protocol: ProtocolUDP, Endpoint: ap("10.244.1.6:8080"), Frontends: fes("10.96.0.10:80", "172.18.0.2:30080")},
		}, true},
		{"endpoints on different ports", []Stale{
			{Protocol: ProtocolTCP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80")},
			{Protocol: ProtocolTCP, Endpoint: ap("10.244.1.7:9090"), Frontends: fes("10.96.0.11:80")},
		}, true},
		{"any reply source", []Stale{{Protocol: ProtocolUDP, Frontends: fes("10.96.0.10:80")}}, true},
		{"any reply source and an endpoint", []Stale{
			{Protocol: ProtocolUDP, Frontends: fes("10.96.0.11:80")},
			{Protocol: ProtocolUDP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80")},
		}, true},
		{"SCTP", []Stale{{Protocol: ProtocolSCTP, Endpoint: ap("10.244.1.6:8080"), Frontends: fes("10.96.0.10:80", "172.18.0.2:30080")}}, true},
		{"IPv6, one endpoint", []Stale{{Protocol: ProtocolTCP, Endpoint: ap("[fd00:244::5]:8080"), Frontends: fes("[fd00:96::10]:80", "[fd00:18::2]:30080")}}, true},
		{"IPv6 SCTP", []Stale{{Protocol: ProtocolSCTP, Endpoint: ap("[fd00:244::6]:8080"), Frontends: fes("[fd00:96::10]:80")}}, true},
		{"two protocols", []Stale{
			{Protocol: ProtocolTCP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80")},
			{Protocol: ProtocolUDP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80")},
		}, false},
		{"two families", []Stale{
			{Protocol: ProtocolTCP, Endpoint: ap("10.244.1.5:8080"), Frontends: fes("10.96.0.10:80")},
			{Protocol: ProtocolTCP, Endpoint: ap("[fd00:244::5]:8080"), Frontends: fes("[fd00:96::10]:80")},
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			fake := NewFake()
			for _, f := range flows {
				fake.AddFlows(f.Flow)
			}
			want, err := fake.Clean(c.stale)
			if err != nil {
				t.Fatal(err)
			}
			var wantLeft []string
			for _, f := range fake.Flows() {
				wantLeft = append(wantLeft, f.String())
			}
			slices.Sort(wantLeft)
			for _, filter := range []bool{true, false} {
				ns := netnstest.New(t)
				createFlows(t, ns, flows)
				cl, err := New(WithNetNS(ns.FD()), WithKernelFilter(filter))
				if err != nil {
					t.Fatal(err)
				}
				res, err := cl.Clean(c.stale)
				if err != nil {
					t.Fatalf("filter=%v: %v", filter, err)
				}
				if res.Deleted != want.Deleted || res.Filtered != (filter && c.filtered) {
					t.Errorf("filter=%v: %+v; want %d deleted, filtered=%v", filter, res, want.Deleted, filter && c.filtered)
				}
				if res.Filtered && res.Scanned >= len(flows) {
					t.Errorf("filter=%v: filtered dump returned %d of %d entries", filter, res.Scanned, len(flows))
				}
				var left []string
				for _, f := range procFlows(t, ns) {
					left = append(left, f.Flow.String())
				}
				slices.Sort(left)
				if !slices.Equal(left, wantLeft) {
					t.Errorf("filter=%v: table after Clean:\n  %s\nwant:\n  %s", filter, strings.Join(left, "\n  "), strings.Join(wantLeft, "\n  "))
				}
				t.Logf("filter=%v: scanned %d of %d, deleted %d", filter, res.Scanned, len(flows), res.Deleted)
			}
		})
	}
}
