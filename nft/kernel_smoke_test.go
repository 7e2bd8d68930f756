package nft

import (
	"net/netip"
	"testing"

	"github.com/nftvs/nftvs/internal/netnstest"
)

func TestKernelSmoke(t *testing.T) {
	ns := netnstest.New(t)
	cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16"), netip.MustParsePrefix("fd00:50::/64")}, DropInvalid: true}
	tbl, err := New(cfg, WithNetNS(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	err = tbl.SetElements("default/web:http", []Element{
		{Set: ClusterIPs, Addr: netip.MustParseAddr("10.96.0.10"), Protocol: TCP, Port: 80},
		{Set: ClusterIPs, Addr: netip.MustParseAddr("fd00::10"), Protocol: TCP, Port: 80},
		{Set: NodePorts, Protocol: TCP, Port: 30080},
		{Set: LoadBalancerFirewall, Addr: netip.MustParseAddr("192.0.2.1"), Protocol: TCP, Port: 80},
		{Set: LoadBalancerSourceRanges, Addr: netip.MustParseAddr("192.0.2.1"), Protocol: TCP, Port: 80, Source: netip.MustParsePrefix("198.51.100.0/24")},
		{Set: Hairpin, Addr: netip.MustParseAddr("10.244.1.5"), Protocol: TCP, Port: 8080},
		{Set: LocalPolicyFWMarks, Addr: netip.MustParseAddr("192.0.2.2"), Protocol: TCP, Port: 80, Mark: 0x10004000},
		{Set: NodePortFWMarks, Protocol: UDP, Port: 30053, Mark: 0x20004000},
		{Set: HealthCheckNodePorts, Port: 32000},
		{Set: IPVSAddresses, Addr: netip.MustParseAddr("10.96.0.10")},
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := tbl.Sync(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	t.Log(ns.Run(t, "nft", "list", "table", "inet", "nftvs"))
	t.Log(Render(tbl.cfg, tbl.Programmed()))
}
