package metrics

import (
	"errors"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/component-base/metrics/legacyregistry"
	// The client-go metrics kube-proxy's binary registers
	// (k8s.io/component-base/metrics/prometheus/clientgo), but for the
	// leader election ones: nftvs elects no leader, and their package
	// imports client-go's clientset (internal/kubeclient says why not).
	_ "k8s.io/component-base/metrics/prometheus/clientgo/fifo"
	_ "k8s.io/component-base/metrics/prometheus/restclient"
	_ "k8s.io/component-base/metrics/prometheus/workqueue"

	"github.com/nftvs/nftvs/internal/version"
	"github.com/nftvs/nftvs/proxier"
)

// Metrics are kube-proxy's metrics where they apply
// (pkg/proxy/metrics/metrics.go: same names, labels and buckets), the
// client-go and build metrics kube-proxy's binary registers
// (k8s.io/component-base/metrics/prometheus/clientgo and .../version),
// and nftvs's own, under nftvs_.
//
// Where nftvs differs from kube-proxy:
//   - kube-proxy runs one proxier per IP family and labels by ip_family;
//     nftvs's one proxier syncs both families at once, so every sync is
//     reported under each family proxied, and counts (no local endpoints)
//     under the primary family; the conntrack cleaner is run once per
//     family, as kube-proxy's reconciler, and reported under it;
//   - kube-proxy's IPVS mode also has
//     sync_proxy_rules_iptables_restore_failures_total: nftvs runs no
//     iptables-restore (nftvs_sync_errors_total counts failed syncs by
//     subsystem); nftvs has the full and partial sync durations of the
//     iptables and nftables modes.
type Metrics struct {
	Registry *prometheus.Registry

	families []v1.IPFamily
	primary  v1.IPFamily

	syncDuration, syncFullDuration, syncPartialDuration *prometheus.HistogramVec
	networkProgramming                                  *prometheus.HistogramVec
	lastSync, lastQueued                                *prometheus.GaugeVec
	endpointChangesPending, serviceChangesPending       prometheus.Gauge
	endpointChangesTotal, serviceChangesTotal           prometheus.Counter
	noLocalEndpoints                                    *prometheus.GaugeVec
	healthzTotal, livezTotal                            *prometheus.CounterVec
	conntrackDeleted                                    *prometheus.CounterVec
	conntrackDuration                                   *prometheus.HistogramVec

	nftElements, nftRules prometheus.Gauge
	ipvsWrites            *prometheus.CounterVec
	addressWrites         *prometheus.CounterVec
	nftElementWrites      *prometheus.CounterVec
	syncErrors            *prometheus.CounterVec
	realServersRemoved    prometheus.Counter
	refused               prometheus.Counter
	serviceProblems       *prometheus.GaugeVec
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

// New registers kube-proxy's and nftvs's metrics on a new
// registry. families are the IP families proxied, primary first. The Go,
// process, client-go and build metrics are in component-base's global
// registry, as in kube-proxy: Gatherer serves both.
func New(families []v1.IPFamily) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry(), families: families}
	if len(families) > 0 {
		m.primary = families[0]
	}
	m.newKubeProxyMetrics()
	m.newNftvsMetrics()
	m.Registry.MustRegister(
		m.syncDuration, m.syncFullDuration, m.syncPartialDuration, m.networkProgramming,
		m.lastSync, m.lastQueued, m.endpointChangesPending, m.serviceChangesPending,
		m.endpointChangesTotal, m.serviceChangesTotal,
		m.noLocalEndpoints, m.healthzTotal, m.livezTotal, m.conntrackDeleted, m.conntrackDuration,
		m.nftElements, m.nftRules, m.ipvsWrites, m.addressWrites, m.nftElementWrites, m.syncErrors, m.realServersRemoved, m.refused, m.serviceProblems,
		buildInfo(),
	)
	// Every label value exists from the start, so that rates work from
	// the first scrape.
	for _, op := range ipvsWriteOps {
		m.ipvsWrites.WithLabelValues(op)
	}
	for _, op := range []string{"add", "delete"} {
		m.addressWrites.WithLabelValues(op)
		m.nftElementWrites.WithLabelValues(op)
	}
	for _, s := range syncSubsystems {
		m.syncErrors.WithLabelValues(s)
	}
	for _, f := range families {
		for _, p := range []string{"internal", "external"} {
			m.noLocalEndpoints.WithLabelValues(p, string(f)).Set(0)
		}
		m.conntrackDeleted.WithLabelValues(string(f))
	}
	return m
}

// newKubeProxyMetrics makes kube-proxy's metrics
// (pkg/proxy/metrics/metrics.go).
func (m *Metrics) newKubeProxyMetrics() {
	const ns = "kubeproxy"
	// Every kubeproxy_ metric is ALPHA upstream, and component-base puts
	// the stability level before the help (metrics/opts.go).
	alpha := func(help string) string { return "[ALPHA] " + help }
	family := []string{"ip_family"}
	histogram := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: name, Help: alpha(help), Buckets: buckets}, family)
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: alpha(help)})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: name, Help: alpha(help)})
	}
	m.syncDuration = histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets)
	m.syncFullDuration = histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets)
	m.syncPartialDuration = histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets)
	m.networkProgramming = histogram("network_programming_duration_seconds",
		"In Cluster Network Programming Latency in seconds", networkProgrammingBuckets())
	m.lastSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_last_timestamp_seconds",
		Help: alpha("The last time proxy rules were successfully synced")}, family)
	m.lastQueued = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_last_queued_timestamp_seconds",
		Help: alpha("The last time a sync of proxy rules was queued")}, family)
	m.endpointChangesPending = gauge("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes")
	m.endpointChangesTotal = counter("sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes")
	m.serviceChangesPending = gauge("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes")
	m.serviceChangesTotal = counter("sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes")
	m.noLocalEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_no_local_endpoints_total",
		Help: alpha("Number of services with a Local traffic policy and no endpoints")}, []string{"traffic_policy", "ip_family"})
	m.healthzTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "proxy_healthz_total",
		Help: alpha("Cumulative proxy healthz HTTP status")}, []string{"code"})
	m.livezTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "proxy_livez_total",
		Help: alpha("Cumulative proxy livez HTTP status")}, []string{"code"})
	m.conntrackDuration = histogram("conntrack_reconciler_sync_duration_seconds",
		"ReconcileConntrackFlowsLatency latency in seconds", syncBuckets)
	m.conntrackDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "conntrack_reconciler_deleted_entries_total",
		Help: alpha("Cumulative conntrack flows deleted by conntrack reconciler")}, family)
}

// newNftvsMetrics makes nftvs's own metrics.
func (m *Metrics) newNftvsMetrics() {
	m.nftElements = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftvs_nft_elements",
		Help: "Set and map elements in the nftvs nftables table after the last sync"})
	m.nftRules = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftvs_nft_rules",
		Help: "Rules in the nftvs nftables table (constant for a configuration)"})
	m.ipvsWrites = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftvs_ipvs_netlink_writes_total",
		Help: "IPVS netlink write requests sent by syncs, failed ones included, by operation"}, []string{"op"})
	m.addressWrites = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftvs_address_writes_total",
		Help: "Addresses added to and deleted from kube-ipvs0 by syncs, by operation"}, []string{"op"})
	m.nftElementWrites = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftvs_nft_element_writes_total",
		Help: "nftables set and map elements sent in committed transactions (every element on a rebuild), by operation"}, []string{"op"})
	m.syncErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftvs_sync_errors_total",
		Help: "Failed syncs, by the kernel subsystem that failed (nftables, ipvs, addresses of kube-ipvs0, conntrack cleanup)"}, []string{"subsystem"})
	m.realServersRemoved = prometheus.NewCounter(prometheus.CounterOpts{Name: "nftvs_ipvs_real_servers_removed_total",
		Help: "IPVS real servers removed (endpoints gone, drained of their connections, or past --ipvs-graceful-termination-period when set)"})
	m.refused = prometheus.NewCounter(prometheus.CounterOpts{Name: "nftvs_sync_refused_total",
		Help: "Virtual servers and Service ports' nft elements the kernel refused while the sync went on with the others (each also logged and reported as a FailedToProgram Event on its Service)"})
	m.serviceProblems = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nftvs_service_problems",
		Help: "Fields of Services not programmed as asked (refused addresses, unusable source ranges, lost frontends, Services too large), by the reason of the Warning Event each Service gets once per change: the full count, which the Events only sum up"}, []string{"reason"})
}

// buildInfo is component-base's kubernetes_build_info
// (k8s.io/component-base/metrics/prometheus/version), with kube-proxy's
// labels: major and minor are the release nftvs stands in for,
// git_version is nftvs's version, the rest comes from the Go build
// information.
func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kubernetes_build_info",
		Help: "[BETA] A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running."},
		[]string{"major", "minor", "git_version", "git_commit", "git_tree_state", "build_date", "go_version", "compiler", "platform"})
	commit, tree, date := "", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				tree = map[string]string{"true": "dirty", "false": "clean"}[s.Value]
			case "vcs.time":
				date = s.Value
			}
		}
	}
	g.WithLabelValues(strconv.Itoa(int(version.Kube.Major())), strconv.Itoa(int(version.Kube.Minor())), version.Get(), commit, tree, date,
		runtime.Version(), runtime.Compiler, runtime.GOOS+"/"+runtime.GOARCH).Set(1)
	return g
}

// Gatherer gathers m's metrics and component-base's global registry
// (Go, process, rest_client_* and informer metrics), as kube-proxy's
// /metrics serves them.
func (m *Metrics) Gatherer() prometheus.Gatherer {
	return prometheus.Gatherers{legacyregistry.DefaultGatherer, m.Registry}
}

// ObserveSync records one sync's outcome. Network programming latency is
// measured as kube-proxy measures it: from the last-change-trigger-time
// of each EndpointSlice change the sync programmed (res.TriggerTimes).
func (m *Metrics) ObserveSync(res proxier.SyncResult, err error, now time.Time) {
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
		}
	}
	// Once per EndpointSlice change, under its family, as kube-proxy's
	// proxier of that family observes it (not once per family proxied).
	if err == nil {
		for _, t := range res.TriggerTimes {
			m.networkProgramming.WithLabelValues(string(t.Family)).Observe(now.Sub(t.At).Seconds())
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
	m.addressWrites.WithLabelValues("add").Add(float64(res.AddressesAdded))
	m.addressWrites.WithLabelValues("delete").Add(float64(res.AddressesRemoved))
	for _, r := range res.NFT {
		m.nftElementWrites.WithLabelValues("add").Add(float64(r.Added))
		m.nftElementWrites.WithLabelValues("delete").Add(float64(r.Deleted))
	}
	m.realServersRemoved.Add(float64(len(res.Removed)))
	m.refused.Add(float64(len(res.Refused)))
	if res.Problems != nil || err == nil {
		m.serviceProblems.Reset()
		for reason, n := range res.Problems {
			m.serviceProblems.WithLabelValues(reason).Set(float64(n))
		}
	}
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

// ObserveChange counts one Service (endpointSlice false) or EndpointSlice
// event as kube-proxy's change trackers do
// (pkg/proxy/servicechangetracker.go, endpointschangetracker.go): every
// Service event once per IP family proxied (kube-proxy hands it to each
// family's proxier), every EndpointSlice event once (to its family's
// proxier).
func (m *Metrics) ObserveChange(endpointSlice bool) {
	if m == nil {
		return
	}
	if endpointSlice {
		m.endpointChangesTotal.Inc()
		return
	}
	m.serviceChangesTotal.Add(float64(len(m.families)))
}

// SetPending sets the *_changes_pending gauges.
func (m *Metrics) SetPending(services, endpoints int) {
	if m == nil {
		return
	}
	m.serviceChangesPending.Set(float64(services))
	m.endpointChangesPending.Set(float64(endpoints))
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

// ObserveHealth counts one answer of the health server: endpoint is
// "healthz" or "livez", code its HTTP status.
func (m *Metrics) ObserveHealth(endpoint string, code int) {
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
// from: the step of each proxier.StepError in it (the errors of one sync
// are joined, errors.Join), "other" for an error of no step. Each
// subsystem counts once per sync.
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
		s := "other"
		var step *proxier.StepError
		if errors.As(e, &step) {
			s = string(step.Step)
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
