package nft

import (
	"net/netip"
	"testing"
	"unsafe"
)

// TestPackKeyRoundTrip: every kind of element the mirror keys comes back
// from its packed key as its kernel key, and two elements share a packed
// key exactly when they share a kernel key.
func TestPackKeyRoundTrip(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::a")
	elems := []Element{
		{Set: ClusterIPs, Addr: v4, Protocol: TCP, Port: 80},
		{Set: ClusterIPs, Addr: v4, Protocol: UDP, Port: 80},
		{Set: ClusterIPs, Addr: v6, Protocol: SCTP, Port: 80},
		{Set: Hairpin, Addr: v6, Protocol: TCP, Port: 8080},
		{Set: IPVSAddresses, Addr: v4},
		{Set: IPVSAddresses, Addr: v6},
		{Set: HealthCheckNodePorts, Port: 30000},
		{Set: NodePorts, Protocol: TCP, Port: 30080},
		{Set: NodePortFWMarks, Protocol: TCP, Port: 30080, Mark: 0x4001},
		{Set: LocalPolicyFWMarks, Addr: v4, Protocol: TCP, Port: 443, Mark: 0x4002},
		{Set: LoadBalancerSourceRanges, Addr: v4, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("10.0.0.0/8")},
		{Set: LoadBalancerSourceRanges, Addr: v4, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("10.0.0.0/16")},
		{Set: LoadBalancerSourceRanges, Addr: v4, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("0.0.0.0/0")},
		{Set: LoadBalancerSourceRanges, Addr: v6, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("::ffff:10.0.0.0/104")},
		{Set: LoadBalancerSourceRanges, Addr: v6, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("::/0")},
	}
	seen := map[elemKey]Element{}
	for _, e := range elems {
		k := packKey(e)
		if got := k.element(); got != e.kernelKey() {
			t.Errorf("packKey(%+v).element() = %+v", e, got)
		}
		if e.Mark != 0 && packKey(e.kernelKey()) != k {
			t.Errorf("%+v: the mark changed the key", e)
		}
		if prev, ok := seen[k]; ok {
			t.Errorf("%+v and %+v share a packed key", prev, e)
		}
		seen[k] = e
		if fe := k.frontend().element(); fe != frontend(e) {
			t.Errorf("%+v: frontend %+v, want %+v", e, fe, frontend(e))
		}
	}
	if size := unsafe.Sizeof(elemKey{}); size > 40 {
		t.Errorf("elemKey is %d bytes", size)
	}
}
