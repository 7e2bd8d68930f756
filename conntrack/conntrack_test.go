package conntrack

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestIndexMatch(t *testing.T) {
	fe := []netip.AddrPort{ap("10.96.0.10:80"), ap("172.18.0.2:30080"), ap("[fd00:96::10]:80")}
	ix, err := newIndex([]Stale{
		{Protocol: ProtocolTCP, Frontends: fe[:2], Endpoint: ap("10.244.1.5:8080")},
		{Protocol: ProtocolTCP, Frontends: fe[:1], Endpoint: ap("10.244.1.7:8080")},
		{Protocol: ProtocolSCTP, Frontends: fe[2:], Endpoint: ap("[fd00:244::5]:8080")},
		{Protocol: ProtocolUDP, Frontends: []netip.AddrPort{ap("10.96.0.53:53")}},
		// IPv4-mapped spellings match the kernel's IPv4 tuples.
		{Protocol: ProtocolUDP, Frontends: []netip.AddrPort{ap("[::ffff:10.96.0.54]:53")}, Endpoint: ap("[::ffff:10.244.3.3]:53")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ix.v4 || !ix.v6 {
		t.Errorf("families v4=%v v6=%v, want both", ix.v4, ix.v6)
	}
	for _, c := range []struct {
		name          string
		proto         uint8
		dst, replySrc string
		want          bool
	}{
		{"cluster IP, removed endpoint", protoTCP, "10.96.0.10:80", "10.244.1.5:8080", true},
		{"node port, removed endpoint", protoTCP, "172.18.0.2:30080", "10.244.1.5:8080", true},
		{"second endpoint of the same frontend", protoTCP, "10.96.0.10:80", "10.244.1.7:8080", true},
		{"second endpoint is not stale on the node port", protoTCP, "172.18.0.2:30080", "10.244.1.7:8080", false},
		{"another endpoint", protoTCP, "10.96.0.10:80", "10.244.1.6:8080", false},
		{"another port of the endpoint", protoTCP, "10.96.0.10:80", "10.244.1.5:9090", false},
		{"another protocol", protoUDP, "10.96.0.10:80", "10.244.1.5:8080", false},
		{"endpoint reached directly", protoTCP, "10.244.1.5:8080", "10.244.1.5:8080", false},
		{"IPv6 SCTP", protoSCTP, "[fd00:96::10]:80", "[fd00:244::5]:8080", true},
		{"any reply source", protoUDP, "10.96.0.53:53", "10.96.0.53:53", true},
		{"any reply source, TCP", protoTCP, "10.96.0.53:53", "10.96.0.53:53", false},
		{"mapped", protoUDP, "10.96.0.54:53", "10.244.3.3:53", true},
	} {
		got := ix.match(c.proto, ap(c.dst), ap(c.replySrc))
		if got != c.want {
			t.Errorf("%s: match(%d, %s, %s) = %v, want %v", c.name, c.proto, c.dst, c.replySrc, got, c.want)
		}
	}
}

func TestIndexInvalid(t *testing.T) {
	for _, s := range []Stale{
		{Protocol: "ICMP", Frontends: []netip.AddrPort{ap("10.96.0.10:80")}},
		{Protocol: "tcp", Frontends: []netip.AddrPort{ap("10.96.0.10:80")}},
		{Protocol: ProtocolTCP},
		{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{{}}},
		{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{ap("10.96.0.10:0")}},
		{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{ap("0.0.0.0:80")}},
		{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{ap("10.96.0.10:80")}, Endpoint: ap("10.244.0.1:0")},
		{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{ap("10.96.0.10:80")}, Endpoint: ap("[fd00::1]:80")},
	} {
		ix, err := newIndex([]Stale{s})
		if err == nil || !ix.empty() {
			t.Errorf("%v: index %v, error %v; want an empty index and an error", s, ix.frontends, err)
		}
	}
}

func TestFake(t *testing.T) {
	doomed := Flow{Protocol: ProtocolTCP, OrigSrc: ap("192.0.2.1:1000"), OrigDst: ap("10.96.0.10:80"), ReplySrc: ap("10.244.1.5:8080")}
	kept := Flow{Protocol: ProtocolTCP, OrigSrc: ap("192.0.2.2:1000"), OrigDst: ap("10.96.0.10:80"), ReplySrc: ap("10.244.1.6:8080")}
	f := NewFake(doomed, kept)
	stale := []Stale{{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{ap("10.96.0.10:80")}, Endpoint: ap("10.244.1.5:8080")}}

	if res, err := f.Clean(nil); err != nil || res != (Result{}) {
		t.Errorf("empty Clean: %+v, %v", res, err)
	}
	res, err := f.Clean(stale)
	if err != nil || res.Walks != 1 || res.Scanned != 2 || res.Deleted != 1 {
		t.Errorf("Clean: %+v, %v", res, err)
	}
	if got := f.Flows(); !slices.Equal(got, []Flow{kept}) {
		t.Errorf("flows %v, want %v", got, []Flow{kept})
	}
	// The recording is a copy: the caller may reuse its slices.
	stale[0].Frontends[0] = ap("10.96.0.99:80")
	calls := f.Calls()
	if len(calls) != 2 || len(calls[0]) != 0 || calls[1][0].Frontends[0] != ap("10.96.0.10:80") {
		t.Errorf("calls %v", calls)
	}
	if got := f.Stale(); len(got) != 1 {
		t.Errorf("Stale() = %v", got)
	}

	boom := errors.New("boom")
	f.Err = boom
	f.AddFlows(doomed)
	if _, err := f.Clean([]Stale{{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{ap("10.96.0.10:80")}}}); !errors.Is(err, boom) {
		t.Errorf("Clean with Err: %v", err)
	}
	if n := len(f.Flows()); n != 2 {
		t.Errorf("a failed Clean deleted flows: %d left", n)
	}
	f.Reset()
	if len(f.Calls()) != 0 {
		t.Errorf("Reset kept calls")
	}
}

// FuzzParseEntry: no kernel message, however malformed, panics the parser.
func FuzzParseEntry(f *testing.F) {
	var b []byte
	b = append(b, 2, 0, 0, 0)
	b = appendTuple(b, ctaTupleOrig, ProtocolTCP, ap("192.0.2.1:1000"), ap("10.96.0.10:80"))
	b = appendTuple(b, ctaTupleReply, ProtocolTCP, ap("10.244.1.5:8080"), ap("192.0.2.1:1000"))
	b = appendAttr(b, ctaID, []byte{1, 2, 3, 4})
	f.Add(b)
	f.Add(b[:len(b)-3])
	f.Add([]byte{2, 0, 0, 0, 4, 0, 1, 0x80})
	f.Fuzz(func(t *testing.T, p []byte) {
		var e entry
		_ = parseEntry(&e, p)
	})
}

func TestParseEntry(t *testing.T) {
	var b []byte
	b = append(b, 10, 0, 0, 0)
	b = appendTuple(b, ctaTupleOrig, ProtocolSCTP, ap("[2001:db8::1]:1000"), ap("[fd00:96::10]:80"))
	b = appendTuple(b, ctaTupleReply, ProtocolSCTP, ap("[fd00:244::5]:8080"), ap("[2001:db8::1]:1000"))
	b = appendAttr(b, ctaID, []byte{1, 2, 3, 4})
	b = appendAttr(b, ctaZone, []byte{0, 7})
	var e entry
	if err := parseEntry(&e, b); err != nil {
		t.Fatal(err)
	}
	if e.family != 10 || e.proto != protoSCTP || e.origSrc != ap("[2001:db8::1]:1000") || e.origDst != ap("[fd00:96::10]:80") ||
		e.replySrc != ap("[fd00:244::5]:8080") || len(e.id) != 8 || len(e.zone) != 6 {
		t.Errorf("parsed %+v", e)
	}
	d := newDoomed(&e)
	if want := len(e.origTuple) + 8 + 8; len(d.body) != want {
		t.Errorf("delete body %d bytes, want %d (tuple, id, zone)", len(d.body), want)
	}
}

// TestDeleteNeedsTuple: a ctnetlink delete without a tuple flushes the
// whole table, so one is refused before anything is sent.
func TestDeleteNeedsTuple(t *testing.T) {
	s := &socket{fd: -1}
	id := appendAttr(nil, ctaID, []byte{1, 2, 3, 4})
	for _, body := range [][]byte{nil, id} {
		if _, _, err := s.deleteEntries([]doomed{{family: 2, body: body, desc: "test"}}); err == nil || !strings.Contains(err.Error(), "without a tuple") {
			t.Errorf("delete with body %x: %v; want refusal", body, err)
		}
	}
}
