package nft

import (
	"net/netip"
	"testing"

	"github.com/nftvs/nftvs/internal/netnstest"
)

// TestKernelReadElements: what one owner programmed is found in the
// kernel with its comment, an element never programmed is not, source
// ranges are not matched one for one.
func TestKernelReadElements(t *testing.T) {
	ns := netnstest.New(t)
	tbl := kernelTable(t, ns, Config{})
	a := netip.MustParseAddr("10.96.0.10")
	mine := []Element{
		{Set: ClusterIPs, Addr: a, Protocol: TCP, Port: 80},
		{Set: IPVSAddresses, Addr: a},
		{Set: NodePorts, Protocol: TCP, Port: 30080},
		{Set: LoadBalancerSourceRanges, Addr: a, Protocol: TCP, Port: 80, Source: netip.MustParsePrefix("192.0.2.0/24")},
	}
	if err := tbl.SetElements("ns/web:http", mine); err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Sync(false); err != nil {
		t.Fatal(err)
	}
	missing := Element{Set: ClusterIPs, Addr: netip.MustParseAddr("fd00::10"), Protocol: TCP, Port: 80}
	got, err := ReadElements("", append(mine, missing), WithNetNS(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range got[:3] {
		if !st.Checked || !st.InKernel || st.Comment != "ns/web:http" {
			t.Errorf("%d %s: %+v, want in the kernel with comment ns/web:http", i, st.Element, st)
		}
	}
	if st := got[3]; st.Checked {
		t.Errorf("source range checked: %+v", st)
	}
	if st := got[4]; !st.Checked || st.InKernel || st.KernelSet != "cluster-ips-v6" {
		t.Errorf("never programmed: %+v", st)
	}
}
