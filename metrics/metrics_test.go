package metrics

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

// Every metric is registered under kube-proxy's name (or nftvs_*), with
// its type.
func TestMetricNames(t *testing.T) {
	m := New([]v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol})
	m.ObserveSync(proxier.SyncResult{Duration: time.Millisecond, TriggerTimes: []proxier.TriggerTime{{At: time.Now().Add(-time.Second), Family: v1.IPv4Protocol}}}, nil, time.Now())
	m.ObserveSync(proxier.SyncResult{Full: true, Duration: time.Millisecond}, nil, time.Now())
	m.SetPending(1, 1)
	m.SetLastQueued(time.Now())
	m.ObserveHealth("healthz", 200)
	m.ObserveHealth("livez", 200)
	m.conntrackDuration.WithLabelValues("IPv4").Observe(0.01)

	families, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]dto.MetricType{}
	for _, f := range families {
		got[f.GetName()] = f.GetType()
	}
	want := map[string]dto.MetricType{
		"kubeproxy_sync_proxy_rules_duration_seconds":              dto.MetricType_HISTOGRAM,
		"kubeproxy_sync_full_proxy_rules_duration_seconds":         dto.MetricType_HISTOGRAM,
		"kubeproxy_sync_partial_proxy_rules_duration_seconds":      dto.MetricType_HISTOGRAM,
		"kubeproxy_network_programming_duration_seconds":           dto.MetricType_HISTOGRAM,
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds":        dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending":      dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_service_changes_pending":       dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total":      dto.MetricType_GAUGE,
		"kubeproxy_proxy_healthz_total":                            dto.MetricType_COUNTER,
		"kubeproxy_proxy_livez_total":                              dto.MetricType_COUNTER,
		"nftvs_nft_elements":                                       dto.MetricType_GAUGE,
		"nftvs_nft_rules":                                          dto.MetricType_GAUGE,
		"nftvs_ipvs_netlink_writes_total":                          dto.MetricType_COUNTER,
		"nftvs_sync_errors_total":                                  dto.MetricType_COUNTER,
		"kubeproxy_conntrack_reconciler_deleted_entries_total":     dto.MetricType_COUNTER,
		"kubeproxy_conntrack_reconciler_sync_duration_seconds":     dto.MetricType_HISTOGRAM,
		"nftvs_ipvs_real_servers_removed_total":                    dto.MetricType_COUNTER,
	}
	for name, typ := range want {
		if g, ok := got[name]; !ok || g != typ {
			t.Errorf("metric %s: got %v (present %v), want %v", name, g, ok, typ)
		}
	}
	// kube-proxy's labels.
	if n := testutil.CollectAndCount(m.syncDuration, "kubeproxy_sync_proxy_rules_duration_seconds"); n != 2 {
		t.Errorf("sync duration series: %d, want one per IP family", n)
	}
	if got := testutil.ToFloat64(m.noLocalEndpoints.WithLabelValues("external", "IPv4")); got != 0 {
		t.Errorf("no_local_endpoints{traffic_policy=external,ip_family=IPv4} = %v", got)
	}
}

func TestObserveSync(t *testing.T) {
	m := New([]v1.IPFamily{v1.IPv4Protocol})
	res := proxier.SyncResult{
		Duration:       20 * time.Millisecond,
		IPVS:           ipvs.Result{Writes: ipvs.WriteCounts{AddVirtualServer: 2, AddRealServer: 5, DeleteRealServer: 1}},
		NFT:            []nft.SyncResult{{Elements: 3, Rules: 40, Added: 3}, {Elements: 7, Rules: 40, Added: 5, Deleted: 1}},
		Removed:        []ipvs.RemovedRealServer{{}, {}},
		AddressesAdded: 4, AddressesRemoved: 1,
	}
	now := time.Unix(1700000000, 0)
	res.TriggerTimes = []proxier.TriggerTime{{At: now.Add(-3 * time.Second), Family: v1.IPv4Protocol}}
	m.ObserveSync(res, nil, now)
	checks := map[string]float64{
		"add_virtual_server": 2, "add_real_server": 5, "delete_real_server": 1, "update_real_server": 0,
	}
	for op, want := range checks {
		if got := testutil.ToFloat64(m.ipvsWrites.WithLabelValues(op)); got != want {
			t.Errorf("nftvs_ipvs_netlink_writes_total{op=%q} = %v, want %v", op, got, want)
		}
	}
	for _, c := range []struct {
		name string
		v    *prometheus.CounterVec
		op   string
		want float64
	}{{"address", m.addressWrites, "add", 4}, {"address", m.addressWrites, "delete", 1},
		{"nft element", m.nftElementWrites, "add", 8}, {"nft element", m.nftElementWrites, "delete", 1}} {
		if got := testutil.ToFloat64(c.v.WithLabelValues(c.op)); got != c.want {
			t.Errorf("%s writes {op=%q} = %v, want %v", c.name, c.op, got, c.want)
		}
	}
	if got := testutil.ToFloat64(m.nftElements); got != 7 {
		t.Errorf("nftvs_nft_elements = %v, want the last sync's 7", got)
	}
	if got := testutil.ToFloat64(m.nftRules); got != 40 {
		t.Errorf("nftvs_nft_rules = %v", got)
	}
	if got := testutil.ToFloat64(m.realServersRemoved); got != 2 {
		t.Errorf("nftvs_ipvs_real_servers_removed_total = %v", got)
	}
	if got := testutil.ToFloat64(m.lastSync.WithLabelValues("IPv4")); got != 1700000000 {
		t.Errorf("last sync timestamp %v", got)
	}
	// A failed sync: no timestamp, no programming latency, errors counted.
	m.ObserveSync(proxier.SyncResult{}, errors.Join(stepError(proxier.StepIPVS, "add real server: EEXIST"), stepError(proxier.StepNFTables, "ENOBUFS")), now.Add(time.Hour))
	if got := testutil.ToFloat64(m.lastSync.WithLabelValues("IPv4")); got != 1700000000 {
		t.Errorf("a failed sync moved the last sync timestamp to %v", got)
	}
	for s, want := range map[string]float64{"ipvs": 1, "nftables": 1, "addresses": 0} {
		if got := testutil.ToFloat64(m.syncErrors.WithLabelValues(s)); got != want {
			t.Errorf("nftvs_sync_errors_total{subsystem=%q} = %v, want %v", s, got, want)
		}
	}
	m.ObserveNoLocalEndpoints(2, 3)
	if got := testutil.ToFloat64(m.noLocalEndpoints.WithLabelValues("internal", "IPv4")); got != 2 {
		t.Errorf("no local endpoints internal = %v", got)
	}
	m.SetPending(4, 5)
	if testutil.ToFloat64(m.serviceChangesPending) != 4 || testutil.ToFloat64(m.endpointChangesPending) != 5 {
		t.Error("pending gauges not set")
	}
}

func TestSyncErrorSubsystems(t *testing.T) {
	cases := []struct {
		err  error
		want []string
	}{
		{nil, nil},
		{stepError(proxier.StepNFTables, "x"), []string{"nftables"}},
		{errors.Join(stepError(proxier.StepIPVS, "x"), stepError(proxier.StepIPVS, "y")), []string{"ipvs"}},
		{errors.Join(stepError(proxier.StepAddresses, "x"), stepError(proxier.StepAddresses, "y"), stepError(proxier.StepNFTables, "z")), []string{"addresses", "nftables"}},
		{fmt.Errorf("wrapped: %w", stepError(proxier.StepIPVS, "x")), []string{"ipvs"}},
		// The message no longer decides: an untyped "ipvs: " is no step.
		{errors.New("ipvs: something else"), []string{"other"}},
	}
	for _, c := range cases {
		if got := syncErrorSubsystems(c.err); !slices.Equal(got, c.want) {
			t.Errorf("%v: %q, want %q", c.err, got, c.want)
		}
	}
}

type failingCleaner struct{}

func (failingCleaner) Clean([]conntrack.Stale) (conntrack.Result, error) {
	return conntrack.Result{Walks: 1, Deleted: 2, Duration: time.Millisecond}, errors.New("netlink: ENOBUFS")
}

func TestInstrumentedConntrack(t *testing.T) {
	m := New([]v1.IPFamily{v1.IPv4Protocol})
	c := instrumentedConntrack{inner: failingCleaner{}, metrics: m}
	if _, err := c.Clean([]conntrack.Stale{{}}); err == nil {
		t.Fatal("error swallowed")
	}
	if testutil.ToFloat64(m.conntrackDeleted.WithLabelValues("IPv4")) != 2 || testutil.ToFloat64(m.syncErrors.WithLabelValues("conntrack")) != 1 {
		t.Errorf("deleted %v errors %v", testutil.ToFloat64(m.conntrackDeleted.WithLabelValues("IPv4")), testutil.ToFloat64(m.syncErrors.WithLabelValues("conntrack")))
	}
	if n := testutil.CollectAndCount(m.conntrackDuration); n != 1 {
		t.Errorf("clean duration series %d", n)
	}
}

type idleCleaner struct{}

func (idleCleaner) Clean([]conntrack.Stale) (conntrack.Result, error) { return conntrack.Result{}, nil }

// The conntrack reconciler histogram gets a sample on every run, as
// kube-proxy's, also one that walked nothing and deleted nothing.
// Before, only runs that walked the table were observed.
func TestConntrackReconcilerObservedEveryRun(t *testing.T) {
	m := New([]v1.IPFamily{v1.IPv4Protocol})
	c := instrumentedConntrack{inner: idleCleaner{}, metrics: m}
	for range 3 {
		if _, err := c.Clean([]conntrack.Stale{{}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := histogramCount(t, m.conntrackDuration, "IPv4"); got != 3 {
		t.Errorf("conntrack_reconciler_sync_duration_seconds: %d samples after 3 runs, want 3", got)
	}
}

// Help strings carry component-base's stability prefix: [ALPHA] for
// every kubeproxy_ metric (all ALPHA upstream), [BETA] for
// kubernetes_build_info. Before, none had it.
func TestMetricHelpStability(t *testing.T) {
	m := New([]v1.IPFamily{v1.IPv4Protocol})
	m.ObserveSync(proxier.SyncResult{}, nil, time.Now())
	m.ObserveHealth("healthz", 200)
	m.ObserveHealth("livez", 200)
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range fams {
		want := ""
		switch {
		case strings.HasPrefix(f.GetName(), "kubeproxy_"):
			want = "[ALPHA] "
		case f.GetName() == "kubernetes_build_info":
			want = "[BETA] "
		default:
			continue
		}
		n++
		if !strings.HasPrefix(f.GetHelp(), want) {
			t.Errorf("%s: help %q, want it to start with %q", f.GetName(), f.GetHelp(), want)
		}
	}
	if n < 10 {
		t.Errorf("only %d kubeproxy_ and build families gathered", n)
	}
}

// Network programming latency is one sample per EndpointSlice change,
// under the family of its EndpointSlice, as kube-proxy's proxier of that
// family observes it. Before, a dual-stack node counted each change twice,
// once per family.
func TestNetworkProgrammingOncePerChange(t *testing.T) {
	m := New([]v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol})
	now := time.Unix(1700000000, 0)
	m.ObserveSync(proxier.SyncResult{TriggerTimes: []proxier.TriggerTime{{At: now.Add(-time.Second), Family: v1.IPv4Protocol}}}, nil, now)
	for f, want := range map[v1.IPFamily]uint64{v1.IPv4Protocol: 1, v1.IPv6Protocol: 0} {
		if got := histogramCount(t, m.networkProgramming, string(f)); got != want {
			t.Errorf("network_programming_duration_seconds{ip_family=%s}: %d samples, want %d", f, got, want)
		}
	}
}

func histogramCount(t *testing.T, h *prometheus.HistogramVec, labels ...string) uint64 {
	t.Helper()
	var d dto.Metric
	if err := h.WithLabelValues(labels...).(prometheus.Metric).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetHistogram().GetSampleCount()
}

func stepError(s proxier.SyncStep, msg string) error {
	return &proxier.StepError{Step: s, Prefix: string(s), Err: errors.New(msg)}
}
