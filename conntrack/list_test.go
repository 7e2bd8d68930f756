package conntrack

import (
	"net/netip"
	"testing"

	"github.com/nftvs/nftvs/internal/netnstest"
)

// TestKernelList: the entries of a Service's frontends, and only those,
// in one dump; nothing deleted.
func TestKernelList(t *testing.T) {
	ns := netnstest.New(t)
	flows := []ctFlow{
		natFlow(ProtocolTCP, "192.0.2.10:40001", "10.96.0.10:80", "10.244.1.5:8080"),
		natFlow(ProtocolUDP, "192.0.2.10:40002", "10.96.0.10:80", "10.244.1.6:8080"),
		natFlow(ProtocolTCP, "[2001:db8::10]:40001", "[fd00:96::10]:80", "[fd00:244::5]:8080"),
		natFlow(ProtocolTCP, "192.0.2.11:40001", "10.96.0.11:80", "10.244.1.5:8080"),
	}
	createFlows(t, ns, flows)
	c := newKernelCleaner(t, ns)
	got, err := c.List([]netip.AddrPort{ap("10.96.0.10:80"), ap("[fd00:96::10]:80")})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("listed %v, want the 3 flows to 10.96.0.10:80 and [fd00:96::10]:80", got)
	}
	for i, want := range []Flow{flows[0].Flow, flows[1].Flow, flows[2].Flow} {
		if got[i] != want {
			t.Errorf("flow %d: %v, want %v", i, got[i], want)
		}
	}
	if n := len(procFlows(t, ns)); n != len(flows) {
		t.Errorf("%d entries left after List, want %d", n, len(flows))
	}
}
