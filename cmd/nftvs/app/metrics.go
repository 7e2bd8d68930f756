package app

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/proxier"
)

// Metrics are kube-proxy's metrics where they apply
// (pkg/proxy/metrics/metrics.go: same names, labels and buckets), and
// nftvs's own.
//
// Where nftvs differs from kube-proxy:
//   - kube-proxy runs one proxier per IP family and labels by ip_family;
//     nftvs's one proxier syncs both families at once, so every sync is
//     reported under each family proxied, and counts (no local endpoints)
//     under the primary family;
//   - the proxier counts changed Services, not Service and EndpointSlice
//     events: both *_changes_pending gauges report the number of Services
//     waiting for a sync;
//   - network_programming_duration_seconds is measured from when the
//     change was first seen pending (polled every second) to the end of
//     the sync that programmed it, not from the EndpointSlice's
//     last-change-trigger-time annotation: it leaves out the time the
//     endpoint controllers took, and may be up to one poll late.
type Metrics struct {
	Registry *prometheus.Registry

	families []v1.IPFamily
	primary  v1.IPFamily

	syncDuration, syncFullDuration, syncPartialDuration *prometheus.HistogramVec
	networkProgramming                                  *prometheus.HistogramVec
	lastSync, lastQueued                                *prometheus.GaugeVec
	endpointChangesPending, serviceChangesPending       prometheus.Gauge
	noLocalEndpoints                                    *prometheus.GaugeVec
	healthzTotal, livezTotal                            *prometheus.CounterVec

	nftElements, nftRules  prometheus.Gauge
	ipvsWrites             *prometheus.CounterVec
	syncErrors             *prometheus.CounterVec
	conntrackDeleted       prometheus.Counter
	conntrackCleanDuration prometheus.Histogram
	realServersRemoved     prometheus.Counter
}

// syncBuckets are kube-proxy's: 1ms to ~16s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// networkProgrammingBuckets are kube-proxy's: 0.25s to 5min.
func networkProgrammingBuckets() []float64 {
	var b []float64
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)
	return b
}

// IPVS write operations, the op label of nftvs_ipvs_netlink_writes_total.
var ipvsWriteOps = []string{"add_virtual_server", "update_virtual_server", "delete_virtual_server",
	"add_real_server", "update_real_server", "delete_real_server"}

// Subsystems, the subsystem label of nftvs_sync_errors_total.
var syncSubsystems = []string{"nftables", "ipvs", "addresses", "conntrack", "other"}

// NewMetrics registers every metric on a new registry, with the Go and
// process collectors. families are the IP families proxied, primary
// first.
func NewMetrics(families []v1.IPFamily) *Metrics {
	const ns = "kubeproxy"
	m := &Metrics{Registry: prometheus.NewRegistry(), families: families}
	if len(families) > 0 {
		m.primary = families[0]
	}
	histogram := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: name, Help: help, Buckets: buckets}, []string{"ip_family"})
	}
	m.syncDuration = histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets)
	m.syncFullDuration = histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets)
	m.syncPartialDuration = histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets)
	m.networkProgramming = histogram("network_programming_duration_seconds",
		"In Cluster Network Programming Latency in seconds (nftvs: from a change seen pending to the end of the sync that programmed it)", networkProgrammingBuckets())
	m.lastSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_last_timestamp_seconds",
		Help: "The last time proxy rules were successfully synced"}, []string{"ip_family"})
	m.lastQueued = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_last_queued_timestamp_seconds",
		Help: "The last time a sync of proxy rules was queued"}, []string{"ip_family"})
	m.endpointChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_endpoint_changes_pending",
		Help: "Pending proxy rules Endpoint changes (nftvs: Services with a pending Service or EndpointSlice change)"})
	m.serviceChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_service_changes_pending",
		Help: "Pending proxy rules Service changes (nftvs: Services with a pending Service or EndpointSlice change)"})
	m.noLocalEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_no_local_endpoints_total",
		Help: "Number of services with a Local traffic policy and no endpoints"}, []string{"traffic_policy", "ip_family"})
	m.healthzTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "proxy_healthz_total",
		Help: "Cumulative proxy healthz HTTP status"}, []string{"code"})
	m.livezTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "proxy_livez_total",
		Help: "Cumulative proxy livez HTTP status"}, []string{"code"})

	m.nftElements = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftvs_nft_elements",
		Help: "Set and map elements in the nftvs nftables table after the last sync"})
	m.nftRules = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftvs_nft_rules",
		Help: "Rules in the nftvs nftables table (constant for a configuration)"})
	m.ipvsWrites = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftvs_ipvs_netlink_writes_total",
		Help: "IPVS netlink write requests sent by syncs, failed ones included, by operation"}, []string{"op"})
	m.syncErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftvs_sync_errors_total",
		Help: "Failed syncs, by the kernel subsystem that failed (nftables, ipvs, addresses of kube-ipvs0, conntrack cleanup)"}, []string{"subsystem"})
	m.conntrackDeleted = prometheus.NewCounter(prometheus.CounterOpts{Name: "nftvs_conntrack_entries_deleted_total",
		Help: "Conntrack entries of flows to removed endpoints deleted by the cleaner"})
	m.conntrackCleanDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nftvs_conntrack_clean_duration_seconds",
		Help: "Time of one conntrack cleanup (one table walk and its deletes)", Buckets: syncBuckets})
	m.realServersRemoved = prometheus.NewCounter(prometheus.CounterOpts{Name: "nftvs_ipvs_real_servers_removed_total",
		Help: "IPVS real servers removed (endpoints gone, or drained past --ipvs-graceful-termination-period)"})

	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.syncDuration, m.syncFullDuration, m.syncPartialDuration, m.networkProgramming,
		m.lastSync, m.lastQueued, m.endpointChangesPending, m.serviceChangesPending,
		m.noLocalEndpoints, m.healthzTotal, m.livezTotal,
		m.nftElements, m.nftRules, m.ipvsWrites, m.syncErrors,
		m.conntrackDeleted, m.conntrackCleanDuration, m.realServersRemoved,
	)
	// Every label value exists from the start, so that rates work from
	// the first scrape.
	for _, op := range ipvsWriteOps {
		m.ipvsWrites.WithLabelValues(op)
	}
	for _, s := range syncSubsystems {
		m.syncErrors.WithLabelValues(s)
	}
	for _, f := range families {
		for _, p := range []string{"internal", "external"} {
			m.noLocalEndpoints.WithLabelValues(p, string(f)).Set(0)
		}
	}
	return m
}

// ObserveSync records one sync's outcome. pendingSince is when the
// oldest change it programmed was first seen waiting (zero: unknown).
func (m *Metrics) ObserveSync(res proxier.SyncResult, err error, now, pendingSince time.Time) {
	if m == nil {
		return
	}
	d := res.Duration.Seconds()
	for _, f := range m.families {
		fam := string(f)
		m.syncDuration.WithLabelValues(fam).Observe(d)
		if res.Full {
			m.syncFullDuration.WithLabelValues(fam).Observe(d)
		} else {
			m.syncPartialDuration.WithLabelValues(fam).Observe(d)
		}
		if err == nil {
			m.lastSync.WithLabelValues(fam).Set(float64(now.UnixNano()) / 1e9)
			if !pendingSince.IsZero() {
				m.networkProgramming.WithLabelValues(fam).Observe(now.Sub(pendingSince).Seconds())
			}
		}
	}
	if n := len(res.NFT); n > 0 && res.NFT[n-1].Rules > 0 {
		m.nftElements.Set(float64(res.NFT[n-1].Elements))
		m.nftRules.Set(float64(res.NFT[n-1].Rules))
	}
	w := res.IPVS.Writes
	for i, n := range []int{w.AddVirtualServer, w.UpdateVirtualServer, w.DeleteVirtualServer,
		w.AddRealServer, w.UpdateRealServer, w.DeleteRealServer} {
		if n > 0 {
			m.ipvsWrites.WithLabelValues(ipvsWriteOps[i]).Add(float64(n))
		}
	}
	m.realServersRemoved.Add(float64(len(res.Removed)))
	for _, s := range syncErrorSubsystems(err) {
		m.syncErrors.WithLabelValues(s).Inc()
	}
}

// ObserveNoLocalEndpoints sets the no_local_endpoints gauges.
func (m *Metrics) ObserveNoLocalEndpoints(internal, external int) {
	if m == nil || m.primary == "" {
		return
	}
	m.noLocalEndpoints.WithLabelValues("internal", string(m.primary)).Set(float64(internal))
	m.noLocalEndpoints.WithLabelValues("external", string(m.primary)).Set(float64(external))
}

// ObservePending sets the changes_pending gauges and, when something is
// pending, the last queued timestamp.
func (m *Metrics) ObservePending(pending int, now time.Time) {
	if m == nil {
		return
	}
	m.endpointChangesPending.Set(float64(pending))
	m.serviceChangesPending.Set(float64(pending))
	if pending > 0 {
		m.SetLastQueued(now)
	}
}

// SetLastQueued sets the last queued timestamp of every family.
func (m *Metrics) SetLastQueued(now time.Time) {
	if m == nil {
		return
	}
	for _, f := range m.families {
		m.lastQueued.WithLabelValues(string(f)).Set(float64(now.UnixNano()) / 1e9)
	}
}

func (m *Metrics) observeHealth(endpoint string, code int) {
	if m == nil {
		return
	}
	c := m.healthzTotal
	if endpoint == "livez" {
		c = m.livezTotal
	}
	c.WithLabelValues(strconv.Itoa(code)).Inc()
}

// syncErrorSubsystems names the subsystems a proxier sync error comes
// from, by the prefix the proxier gives each ("nftables: ", "ipvs: ",
// "ipvs resync: ", "kube-ipvs0: ", "addresses of kube-ipvs0: "); the
// errors of one sync are joined (errors.Join). Each subsystem counts once
// per sync.
func syncErrorSubsystems(err error) []string {
	if err == nil {
		return nil
	}
	var leaves []error
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c)
			}
			return
		}
		leaves = append(leaves, e)
	}
	walk(err)
	seen := map[string]bool{}
	var out []string
	for _, e := range leaves {
		msg := e.Error()
		s := "other"
		switch {
		case strings.HasPrefix(msg, "nftables:"):
			s = "nftables"
		case strings.HasPrefix(msg, "ipvs:"), strings.HasPrefix(msg, "ipvs resync:"):
			s = "ipvs"
		case strings.HasPrefix(msg, "addresses of "), strings.HasPrefix(msg, "kube-ipvs0:"):
			s = "addresses"
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// instrumentedConntrack counts what the conntrack cleaner does. The
// proxier logs and swallows cleanup errors (entries expire on their own),
// so this is where they are counted.
type instrumentedConntrack struct {
	inner   conntrack.Interface
	metrics *Metrics
}

func (c instrumentedConntrack) Clean(stale []conntrack.Stale) (conntrack.Result, error) {
	r, err := c.inner.Clean(stale)
	if m := c.metrics; m != nil {
		if r.Walks > 0 {
			m.conntrackCleanDuration.Observe(r.Duration.Seconds())
		}
		m.conntrackDeleted.Add(float64(r.Deleted))
		if err != nil {
			m.syncErrors.WithLabelValues("conntrack").Inc()
		}
	}
	return r, err
}
