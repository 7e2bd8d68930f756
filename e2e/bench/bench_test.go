package bench

import (
	"encoding/xml"
	"net/netip"
	"strings"
	"testing"
)

func TestAddresses(t *testing.T) {
	if got := ClusterIP(0).String(); got != "10.96.1.0" {
		t.Errorf("ClusterIP(0) = %s", got)
	}
	if got := ClusterIP(9999).String(); got != "10.96.40.15" {
		t.Errorf("ClusterIP(9999) = %s", got)
	}
	if got := EndpointIP(0, 0, 10).String(); got != "10.128.0.1" {
		t.Errorf("EndpointIP(0,0) = %s", got)
	}
	if got := EndpointIP(9999, 9, 10).String(); got != "10.129.134.160" {
		t.Errorf("EndpointIP(9999,9) = %s", got)
	}
	sc, cc := netip.MustParsePrefix(ServiceCIDR), netip.MustParsePrefix(ClusterCIDR)
	if !sc.Contains(ClusterIP(MaxServices - 1)) {
		t.Errorf("ClusterIP(%d) outside %s", MaxServices-1, sc)
	}
	if !cc.Contains(EndpointIP(MaxServices-1, 9, 10)) || !cc.Contains(netip.MustParseAddr(ClientIP)) {
		t.Error("endpoint or client outside the cluster CIDR")
	}
	if IsBenchClusterIP(netip.MustParseAddr("10.96.0.1"), 10) || !IsBenchClusterIP(ClusterIP(9), 10) || IsBenchClusterIP(ClusterIP(10), 10) {
		t.Error("IsBenchClusterIP")
	}
}

func TestNormalizeAndDiff(t *testing.T) {
	vs := func(flags uint32, weights ...int) VirtualServer {
		v := VirtualServer{Protocol: 6, Address: netip.MustParseAddr("10.96.1.0"), Port: 80, Scheduler: "rr", Flags: flags, Netmask: 0xffffffff}
		for i, w := range weights {
			v.Real = append(v.Real, RealServer{Address: EndpointIP(0, i, 10), Port: 8080, Weight: w})
		}
		return v
	}
	// The hashed flag and draining (weight 0) real servers do not count.
	a := NormalizeIPVS([]VirtualServer{vs(0x2, 1, 1)})
	b := NormalizeIPVS([]VirtualServer{vs(0, 1, 1, 0)})
	if err := Differential(a, b); err != nil {
		t.Fatal(err)
	}
	if len(a) != 3 || a[2] != "TCP 10.96.1.0:80 rr flags=0x0 timeout=0 netmask=0xffffffff" || a[0] != "TCP 10.96.1.0:80 -> 10.128.0.1:8080 masq weight=1" {
		t.Fatalf("normalised: %q", a)
	}
	c := NormalizeIPVS([]VirtualServer{vs(0, 1, 2)})
	err := Differential(a, c)
	if err == nil || !strings.Contains(err.Error(), "10.128.0.2:8080 masq weight=1") || !strings.Contains(err.Error(), "weight=2") {
		t.Fatalf("differential of different tables: %v", err)
	}
	if Differential(nil, a) == nil {
		t.Fatal("an empty table compared equal")
	}
	onlyA, onlyB := DiffLines([]string{"a", "b", "d"}, []string{"b", "c"})
	if strings.Join(onlyA, ",") != "a,d" || strings.Join(onlyB, ",") != "c" {
		t.Fatalf("DiffLines: %q %q", onlyA, onlyB)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestPercentileAndLatency(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for q, want := range map[float64]float64{50: 3, 99: 5, 20: 1, 0: 1, 100: 5} {
		if got := Percentile(xs, q); got != want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", xs, q, got, want)
		}
	}
	r := &Run{Proxy: ProxyNftvs, Services: 10000, Endpoints: 10, SyncPeriodSeconds: 30}
	for i := range 100 {
		o := 0.2
		if i == 7 {
			o = 4 // behind a periodic sync
		}
		r.Changes = append(r.Changes, Change{ObservedSeconds: o, NetProgSeconds: o + 0.1})
	}
	r.Changes = append(r.Changes, Change{TimedOut: true})
	l := r.ChangeLatency()
	if l.N != 100 || l.ObservedP50 != 0.2 || l.ObservedP99 != 0.2 || l.TimedOut != 1 {
		t.Errorf("latency %+v: one slow change of 100 is above p99", l)
	}
	r.Changes[8].ObservedSeconds = 4
	if l := r.ChangeLatency(); l.ObservedP99 != 4 {
		t.Errorf("latency %+v: two slow changes of 100 are p99", l)
	}
	rep := &Report{Kernel: "6.1.0-test", Runs: []*Run{r}}
	md := rep.Markdown()
	markdownHas(t, md,
		"syncPeriod 30s",
		"| 10000 | nftvs | 30s | 100 | 200 ms | 4.00 s | 20.0× |",
		"nftvs one-change latency at N=10000 with syncPeriod 30s: p99 ≤ 3× p50 (observed): **missed**, 20.0×",
	)
}

func TestReport(t *testing.T) {
	run := func(p string, n int, first, change float64, programmed bool) *Run {
		r := &Run{Proxy: p, Services: n, Endpoints: 10, Kernel: "6.1.0-test", Programmed: programmed,
			FirstSyncBoundSeconds: 600, FirstSyncMetricSeconds: first, FirstSyncMetricCount: 1, PeakRSSBytes: 50e6,
			FirstSyncWallSeconds: first + 2, SyncsUntilProgrammed: 1, SyncSecondsUntilProgrammed: first,
			Conn: &ConnResult{Connections: 100, Seconds: 1, PerSecond: 100}, Direct: &ConnResult{Connections: 125, Seconds: 1, PerSecond: 125}}
		for i := 0; i < 5; i++ {
			r.Changes = append(r.Changes, Change{SyncSeconds: change, Syncs: 1, ObservedSeconds: change + 0.1})
		}
		return r
	}
	rep := &Report{Kernel: "6.1.0-test", Runs: []*Run{
		run(ProxyNftvs, 100, 1, 0.01, true), run(ProxyIPVS, 100, 20, 2, true), run(ProxyNftables, 100, 2, 1, true),
		run(ProxyNftvs, 1000, 5, 0.02, true), run(ProxyIPVS, 1000, 0, 0, false), run(ProxyNftables, 1000, 3, 3, true),
	}, Differential: []DiffResult{{Services: 100, Equal: true, Lines: 1111}}}
	rep.Runs[4].KernelCompleteSeconds = 400
	rep.Runs[3].Conn.PerSecond = 90 // nftvs at 1000
	md := rep.Markdown()
	markdownHas(t, md,
		"| 100 | kube-proxy ipvs | 22.0 s | 20.0 s | 20.0 s (1) |",
		"| 1000 | kube-proxy ipvs | > 600 s (bound); kernel complete at 400 s, sync not yet reported | > 600 s (bound) |",
		"| 100 | nftvs | 100 | 0 | 1.00 | 100 | 125 | 0.80 |",
		"nftvs conn/s at N=1000 within 5% of N=100: **missed**, -10.0% (90 vs 100/s); relative to a direct connection to a pod in the same VM: 0.72 vs 0.80, -10.0%",
		"| 100 | 7.33× | 1.33× | 20.0× | 2.00× | 200× | 100× |",
		"| 1000 | > 85.7× |",
		"one-endpoint change at N=1000 ≥ 30× faster than kube-proxy nftables: **met**, 150×",
		"first full sync at N=1000 ≥ 5× faster than kube-proxy ipvs (exec → programmed, outside check): **met**, > 85.7× (upstream hit the bound)",
		"one-endpoint change at N=10000 ≥ 100× faster than kube-proxy ipvs: not measured",
	)
	svg := rep.SVG()
	if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil {
		t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
	}
	if strings.Count(svg, "<polyline") != 3 || !strings.Contains(svg, "&gt; 600 s") {
		t.Errorf("SVG: want 3 series and a bound marker:\n%s", svg)
	}

	// The one-change chart: kube-proxy ipvs has no change at 1000 (never
	// programmed), nftables's change at 1000 timed out (an open marker
	// at its bound).
	rep.Runs[5].Changes[2].TimedOut = true
	rep.Runs[5].ChangeBoundSeconds = 120
	svg = rep.LatencySVG()
	if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil {
		t.Fatalf("LatencySVG is not well-formed XML: %v\n%s", err, svg)
	}
	for _, want := range []string{">10 ms<", ">20 ms<", ">2.00 s<", ">1.00 s<", "&gt; 120 s", `fill="white" stroke="#2c6fbb"`} {
		if !strings.Contains(svg, want) {
			t.Errorf("LatencySVG lacks %q:\n%s", want, svg)
		}
	}
	if strings.Count(svg, "<polyline") != 3 {
		t.Errorf("LatencySVG: want 3 series:\n%s", svg)
	}

	// The restart chart: nftvs only; no restart at 100 (an error), so
	// the restart series have one point each.
	rep.Runs[0].Restart = &Restart{Error: "not restarted"}
	rep.Runs[3].Restart = &Restart{ProgrammedSeconds: 9, InformersSyncedSeconds: 6.5}
	svg = rep.RestartSVG()
	if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil {
		t.Fatalf("RestartSVG is not well-formed XML: %v\n%s", err, svg)
	}
	for _, want := range []string{">9.00 s<", ">2.50 s<", ">3.00 s<", ">7.00 s<", "goal: 5 s after the informers", "stroke-dasharray"} {
		if !strings.Contains(svg, want) {
			t.Errorf("RestartSVG lacks %q:\n%s", want, svg)
		}
	}
	if strings.Count(svg, "<polyline") != 3 {
		t.Errorf("RestartSVG: want 3 series (first start, restart, informers → programmed):\n%s", svg)
	}
	if (&Report{}).RestartSVG() == "" || !strings.Contains((&Report{}).LatencySVG(), "no data") {
		t.Error("an empty report's charts say no data")
	}
}

// TestIssue27Goals: memory against the smaller upstream mode (an
// unfinished upstream run makes the ratio an upper bound), the floor
// ratio judged at 10k only, and the restart judged by the proxy's own
// log when it has it.
func TestIssue27Goals(t *testing.T) {
	mb := func(x float64) int64 { return int64(x * 1e6) }
	rep := &Report{Runs: []*Run{
		{Proxy: ProxyNftvs, Services: 1000, Programmed: true, PeakRSSBytes: mb(63), FirstSyncMetricSeconds: 1.4,
			Floor:   &Floor{Seconds: 0.7},
			Restart: &Restart{ProgrammedSeconds: 3, InformersSyncedSeconds: 2.4}},
		{Proxy: ProxyIPVS, Services: 1000, Programmed: true, PeakRSSBytes: mb(97)},
		{Proxy: ProxyNftables, Services: 1000, Programmed: true, PeakRSSBytes: mb(119)},
		{Proxy: ProxyNftvs, Services: 10000, Programmed: true, PeakRSSBytes: mb(100), FirstSyncMetricSeconds: 15,
			Floor:   &Floor{Seconds: 5},
			Restart: &Restart{ProgrammedSeconds: 20.3, InformersSyncedSeconds: 14.8, FirstSyncDoneSeconds: 19.4, NFTElementWrites: 1}},
		{Proxy: ProxyIPVS, Services: 10000, Programmed: false, PeakRSSBytes: mb(239)},
		{Proxy: ProxyNftables, Services: 10000, Programmed: true, PeakRSSBytes: mb(555)},
	}}
	md := rep.Markdown()
	markdownHas(t, md,
		"peak RSS at N=1000 ≤ 0.6× the smaller upstream mode's: **missed**, 0.65× (nftvs 63 MB, kube-proxy ipvs 97 MB)",
		"peak RSS at N=10000 ≤ 0.6× the smaller upstream mode's: **met**, 0.42× (nftvs 100 MB, kube-proxy ipvs 239 MB); kube-proxy ipvs stopped at the first-sync bound, unfinished",
		"nftvs first sync at N=1000 within 1.3× of the kernel floor: reported (the goal is at 10k), 2.00×",
		"nftvs first sync at N=10000 within 1.3× of the kernel floor: **missed**, 3.00×",
		"nftvs restart at N=1000: no writes and first sync done within 5 s of the informers' sync: **met**, 0/0/0 IPVS/address/nft element writes, 600 ms (by the metric seen)",
		"nftvs restart at N=10000: no writes and first sync done within 5 s of the informers' sync: **missed**, 0/0/1 IPVS/address/nft element writes, 4.60 s (by its own log)",
	)
}

// markdownHas fails t for every line of want md lacks.
func markdownHas(t *testing.T, md string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(md, w) {
			t.Errorf("Markdown lacks %q:\n%s", w, md)
		}
	}
}
