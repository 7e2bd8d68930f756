//go:build vmtest

package proxier_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/servicemetrics"
)

// gatherValues gathers reg and returns each series' value by
// "name{label=value,...}" in the label order Prometheus sorts them.
func gatherValues(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			name := mf.GetName() + "{" + strings.Join(ls, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[name] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// TestServiceMetrics: IPVS's counters per Service port, with real
// traffic to a ClusterIP and a node port of one Service port: the
// metrics sum the two virtual servers, and a long-lived connection shows
// as active on the endpoint holding it.
func TestServiceMetrics(t *testing.T) {
	requireVM(t)
	tb := newTestbed(t)
	cl := tb.addPod(t, "cl", nodeName, "10.244.1.99", "fd00:244:1::99")
	a1 := tb.addPod(t, "a1", nodeName, "10.244.1.11", "fd00:244:1::11")
	a2 := tb.addPod(t, "a2", nodeName, "10.244.1.12", "fd00:244:1::12")
	const echoPort = 9090
	echoServer(t, a1.ns, a1.name, echoPort)
	echoServer(t, a2.ns, a2.name, echoPort)
	c := startCluster(t, tb)

	svc := service("metrics", "10.96.8.10", nodePort(30088))
	c.apply(t, svc, echoSlice4(svc, echoPort, readyEP(a1), readyEP(a2)))
	at := func(p *pod) rs { return rs{netip.AddrPortFrom(p.v4, echoPort): 1} }
	c.waitIPVS(t, tcpKey("10.96.8.10", 80), at(a1).with(at(a2)))
	nodePortVIP := netip.AddrPortFrom(tb.ext0IP4, 30088)
	c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30088}, at(a1).with(at(a2)))

	// The collector as nftvs runs it: an IPVS handle of its own, the
	// proxier's published view for the owners.
	k, err := ipvs.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(servicemetrics.New(k, c.p, servicemetrics.Options{RealServers: true, TTL: -1}))
	const labels = "namespace=e2e,port=http,service=metrics"
	before := gatherValues(t, reg)
	if _, ok := before["nftvs_service_connections_total{"+labels+"}"]; !ok {
		t.Fatalf("no series for e2e/metrics before traffic: %v", before)
	}

	// 4 connections to the ClusterIP, 3 to the node port, each one round
	// trip, then one that stays open.
	short := func(dst netip.AddrPort) {
		e, err := cl.ns.dialEcho(dst)
		if err != nil {
			t.Fatalf("connect %s: %v", dst, err)
		}
		defer e.c.Close()
		if _, err := e.roundTrip("ping"); err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
	}
	for range 4 {
		short(ap("10.96.8.10", 80))
	}
	for range 3 {
		short(nodePortVIP)
	}
	held, err := cl.ns.dialEcho(ap("10.96.8.10", 80))
	if err != nil {
		t.Fatal(err)
	}
	defer held.c.Close()
	who, err := held.roundTrip("hello")
	if err != nil {
		t.Fatal(err)
	}
	heldPod := map[string]*pod{a1.name: a1, a2.name: a2}[who]

	// The kernel publishes its counters when its rate estimator runs
	// (every 2 s; ip_vs_est.c): ipvsadm --stats lags the same way.
	var after map[string]float64
	delta := func(name string) float64 {
		return after[name+"{"+labels+"}"] - before[name+"{"+labels+"}"]
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		after = gatherValues(t, reg)
		if delta("nftvs_service_connections_total") >= 8 && delta("nftvs_service_bytes_out_total") > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("after traffic: %v", after)
	if d := delta("nftvs_service_connections_total"); d != 8 {
		t.Errorf("connections_total grew by %v, want 8 (4 to the ClusterIP, 3 to the node port, 1 held): the node port's virtual server is not summed in?", d)
	}
	if d := delta("nftvs_service_packets_in_total"); d < 8*3 {
		t.Errorf("packets_in_total grew by %v, want at least 3 per connection", d)
	}
	if d := delta("nftvs_service_packets_out_total"); d < 8*2 {
		t.Errorf("packets_out_total grew by %v", d)
	}
	if d := delta("nftvs_service_bytes_in_total"); d < 8*60 {
		t.Errorf("bytes_in_total grew by %v", d)
	}
	if d := delta("nftvs_service_bytes_out_total"); d < 8*60 {
		t.Errorf("bytes_out_total grew by %v", d)
	}
	if v := after["nftvs_service_active_connections{"+labels+"}"]; v != 1 {
		t.Errorf("active_connections %v, want 1 (the held connection)", v)
	}
	if v := after["nftvs_service_inactive_connections{"+labels+"}"]; v < 7 {
		t.Errorf("inactive_connections %v, want the 7 closed connections' entries", v)
	}
	rsName := "nftvs_service_real_server_active_connections{namespace=e2e,port=http,real_server=" + netip.AddrPortFrom(heldPod.v4, echoPort).String() + ",service=metrics}"
	if v, ok := after[rsName]; !ok || v != 1 {
		t.Errorf("%s = %v (%v), want 1", rsName, v, ok)
	}
	if v := after["nftvs_service_stats_read_duration_seconds{}"]; v <= 0 {
		t.Errorf("read duration %v", v)
	}
}
