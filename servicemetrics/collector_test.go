package servicemetrics

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

type owners map[ipvs.VSKey]proxier.ServicePortName

func (o owners) VirtualServerOwner(k ipvs.VSKey) (proxier.ServicePortName, bool) {
	n, ok := o[k.Key()]
	return n, ok
}

func key(s string) ipvs.VSKey {
	ap := netip.MustParseAddrPort(s)
	return ipvs.VSKey{Address: ap.Addr(), Protocol: ipvs.TCP, Port: ap.Port()}.Key()
}

// fixture: ns/web:http has a ClusterIP and a node port virtual server
// sharing endpoint 10.244.1.5:8080; 198.51.100.9:80 is nobody's.
func fixture(t *testing.T) (*ipvs.Fake, owners) {
	t.Helper()
	f := ipvs.NewFake()
	web := proxier.ServicePortName{Namespace: "ns", Name: "web", Port: "http"}
	o := owners{}
	for i, k := range []ipvs.VSKey{key("10.96.0.10:80"), key("192.168.0.10:30080"), key("198.51.100.9:80")} {
		if err := f.AddVirtualServer(ipvs.VirtualServer{VSKey: k, Scheduler: "rr"}); err != nil {
			t.Fatal(err)
		}
		for _, rs := range []string{"10.244.1.5", "10.244.2.5"} {
			if err := f.AddRealServer(k, ipvs.RealServer{Address: netip.MustParseAddr(rs), Port: 8080, Weight: 1}); err != nil {
				t.Fatal(err)
			}
		}
		f.SetConnections(k, netip.MustParseAddrPort("10.244.1.5:8080"), ipvs.Connections{Active: 1 + i, Inactive: 10})
		f.SetCounters(k, ipvs.Stats{Connections: 100, PacketsIn: 1000, PacketsOut: 900, BytesIn: 1 << 33, BytesOut: 5000})
		if i < 2 {
			o[k] = web
		}
	}
	return f, o
}

func TestCollectorSumsAServicePortsVirtualServers(t *testing.T) {
	f, o := fixture(t)
	c := New(f, o, Options{})
	want := `
# HELP nftvs_service_active_connections IPVS connection entries in state ESTABLISHED (TCP) of a Service port, summed over its virtual servers and real servers (ipvsadm -Ln ActiveConn).
# TYPE nftvs_service_active_connections gauge
nftvs_service_active_connections{namespace="ns",port="http",service="web"} 3
# HELP nftvs_service_bytes_in_total Bytes from clients to a Service port (ipvsadm --stats InBytes).
# TYPE nftvs_service_bytes_in_total counter
nftvs_service_bytes_in_total{namespace="ns",port="http",service="web"} 1.7179869184e+10
# HELP nftvs_service_connections_total Connections IPVS scheduled for a Service port since its virtual servers were created (ipvsadm -Ln --stats Conns).
# TYPE nftvs_service_connections_total counter
nftvs_service_connections_total{namespace="ns",port="http",service="web"} 200
# HELP nftvs_service_inactive_connections Other IPVS connection entries of a Service port (TCP opening or closing, UDP, SCTP), as ipvsadm -Ln InActConn.
# TYPE nftvs_service_inactive_connections gauge
nftvs_service_inactive_connections{namespace="ns",port="http",service="web"} 20
# HELP nftvs_service_packets_out_total Packets from a Service port's endpoints back to clients (ipvsadm --stats OutPkts).
# TYPE nftvs_service_packets_out_total counter
nftvs_service_packets_out_total{namespace="ns",port="http",service="web"} 1800
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "nftvs_service_active_connections", "nftvs_service_inactive_connections",
		"nftvs_service_connections_total", "nftvs_service_packets_out_total", "nftvs_service_bytes_in_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "nftvs_service_real_server_active_connections"); n != 0 {
		t.Errorf("%d real server series without the option", n)
	}
}

func TestCollectorRealServers(t *testing.T) {
	f, o := fixture(t)
	c := New(f, o, Options{RealServers: true})
	want := `
# HELP nftvs_service_real_server_active_connections Active IPVS connection entries of one endpoint (address:port) of a Service port, over the port's virtual servers.
# TYPE nftvs_service_real_server_active_connections gauge
nftvs_service_real_server_active_connections{namespace="ns",port="http",real_server="10.244.1.5:8080",service="web"} 3
nftvs_service_real_server_active_connections{namespace="ns",port="http",real_server="10.244.2.5:8080",service="web"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "nftvs_service_real_server_active_connections"); err != nil {
		t.Error(err)
	}
}

// TestCollectorReadsOncePerTTL: scrapes within the TTL cost no read of
// the kernel; the first after it reads again.
func TestCollectorReadsOncePerTTL(t *testing.T) {
	f, o := fixture(t)
	now := time.Unix(0, 0)
	c := New(f, o, Options{Now: func() time.Time { return now }})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	gather := func() {
		t.Helper()
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	before := f.Reads
	gather()
	gather()
	now = now.Add(DefaultTTL - time.Millisecond)
	gather()
	if got := f.Reads - before; got != 1 {
		t.Errorf("%d reads for three scrapes within the TTL, want 1", got)
	}
	now = now.Add(time.Millisecond)
	gather()
	if got := f.Reads - before; got != 2 {
		t.Errorf("%d reads after the TTL, want 2", got)
	}
}

func TestCollectorReadError(t *testing.T) {
	f, o := fixture(t)
	f.Inject = func(ipvs.Op, ipvs.VSKey, *ipvs.RealServer) error { return fmt.Errorf("boom") }
	c := New(f, o, Options{TTL: -1})
	if n := testutil.CollectAndCount(c, "nftvs_service_active_connections"); n != 0 {
		t.Errorf("%d series after a failed read", n)
	}
	if v := testutil.ToFloat64(prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		for m := range collectAll(c) {
			if strings.Contains(m.Desc().String(), "read_errors") {
				ch <- m
			}
		}
	})); v != 2 {
		// CollectAndCount and this collect: two failed reads.
		t.Errorf("read errors %v, want 2", v)
	}
}

func collectAll(c prometheus.Collector) chan prometheus.Metric {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	return ch
}
