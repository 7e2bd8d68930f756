package app

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/healthcheck"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/proxier"
)

// upstreamKubeProxyMetrics are the kubeproxy_* metrics kube-proxy 1.36.3
// registers in IPVS mode, with their labels: RegisterMetrics in
// k8s.io/kubernetes pkg/proxy/metrics/metrics.go (the core metrics, and
// the ProxyModeIPVS case).
var upstreamKubeProxyMetrics = map[string][]string{
	"kubeproxy_sync_proxy_rules_duration_seconds":              {"ip_family"},
	"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": {"ip_family"},
	"kubeproxy_sync_proxy_rules_last_timestamp_seconds":        {"ip_family"},
	"kubeproxy_sync_proxy_rules_endpoint_changes_pending":      nil,
	"kubeproxy_sync_proxy_rules_endpoint_changes_total":        nil,
	"kubeproxy_sync_proxy_rules_service_changes_pending":       nil,
	"kubeproxy_sync_proxy_rules_service_changes_total":         nil,
	"kubeproxy_proxy_healthz_total":                            {"code"},
	"kubeproxy_proxy_livez_total":                              {"code"},
	"kubeproxy_network_programming_duration_seconds":           {"ip_family"},
	"kubeproxy_sync_proxy_rules_no_local_endpoints_total":      {"traffic_policy", "ip_family"},
	// IPVS mode.
	"kubeproxy_sync_proxy_rules_iptables_restore_failures_total": {"ip_family"},
	"kubeproxy_conntrack_reconciler_sync_duration_seconds":       {"ip_family"},
	"kubeproxy_conntrack_reconciler_deleted_entries_total":       {"ip_family"},
}

// kubeProxyMetricsNotServed are upstream's IPVS-mode metrics nftvs does not
// serve, and why.
var kubeProxyMetricsNotServed = map[string]string{
	"kubeproxy_sync_proxy_rules_iptables_restore_failures_total": "nftvs runs no iptables-restore; nftvs_sync_errors_total{subsystem} counts failed syncs",
}

// kubeProxyMetricsOfOtherModes are upstream metrics nftvs serves that
// kube-proxy registers in its iptables and nftables modes only
// (pkg/proxy/metrics/metrics.go): nftvs, like them, has partial syncs.
var kubeProxyMetricsOfOtherModes = map[string][]string{
	"kubeproxy_sync_full_proxy_rules_duration_seconds":    {"ip_family"},
	"kubeproxy_sync_partial_proxy_rules_duration_seconds": {"ip_family"},
}

// upstreamRESTClientMetrics are client-go's metrics as component-base
// registers them (k8s.io/component-base
// metrics/prometheus/restclient/metrics.go), which kube-proxy's main
// imports through metrics/prometheus/clientgo.
var upstreamRESTClientMetrics = []string{
	"rest_client_request_duration_seconds", "rest_client_dns_resolution_duration_seconds",
	"rest_client_request_size_bytes", "rest_client_response_size_bytes",
	"rest_client_rate_limiter_duration_seconds", "rest_client_requests_total",
	"rest_client_request_retries_total", "rest_client_exec_plugin_ttl_seconds",
	"rest_client_exec_plugin_certificate_rotation_age", "rest_client_exec_plugin_call_total",
	"rest_client_exec_plugin_policy_call_total", "rest_client_transport_cache_entries",
	"rest_client_transport_create_calls_total", "rest_client_transport_ca_reload_total",
	"rest_client_transport_cert_rotation_gc_calls_total", "rest_client_transport_cache_gc_calls_total",
}

// scrape serves /metrics from h and parses it.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// TestMetricsAsUpstream scrapes /metrics after every metric has had a
// value, and compares the names and labels with kube-proxy's source.
func TestMetricsAsUpstream(t *testing.T) {
	families := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	m := metrics.New(families)
	now := time.Now()
	m.ObserveSync(proxier.SyncResult{Duration: time.Millisecond, TriggerTimes: []proxier.TriggerTime{{At: now.Add(-time.Second), Family: v1.IPv4Protocol}}}, nil, now)
	m.ObserveSync(proxier.SyncResult{Full: true, Duration: time.Millisecond}, nil, now)
	h := healthcheck.NewHealthServer(time.Minute, clock.RealClock{})
	h.SetMetrics(m)
	c := newChangeTracker(m, h, families, clock.RealClock{})
	c.initialize()
	c.observe(proxier.Change{Service: types.NamespacedName{Namespace: "ns", Name: "web"}, Changed: true})
	c.observe(proxier.Change{EndpointSlice: true, Service: types.NamespacedName{Namespace: "ns", Name: "web"}, Changed: true})
	m.ObserveHealth("healthz", 200)
	m.ObserveHealth("livez", 200)
	_, _ = metrics.NewInstrumentedConntrack(failingCleaner{}, m).Clean([]conntrack.Stale{{}})
	// A request through client-go, for rest_client_*.
	api := httptest.NewServer(http.NotFoundHandler())
	defer api.Close()
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: api.URL})
	_, _ = client.CoreV1().Nodes().Get(context.Background(), "n", metav1.GetOptions{})

	cfg := mustParse(t)
	cfg.FeatureGate.AddMetrics() // as run does
	got := scrape(t, metricsHandler(m, cfg))

	want := map[string][]string{}
	for name, labels := range upstreamKubeProxyMetrics {
		if _, skip := kubeProxyMetricsNotServed[name]; !skip {
			want[name] = labels
		}
	}
	for name, labels := range kubeProxyMetricsOfOtherModes {
		want[name] = labels
	}
	for name, labels := range want {
		f, ok := got[name]
		if !ok {
			t.Errorf("%s is not served", name)
			continue
		}
		if have := labelNames(f); !slices.Equal(have, sorted(labels)) {
			t.Errorf("%s has labels %v, upstream %v", name, have, labels)
		}
	}
	for name, f := range got {
		switch {
		case strings.HasPrefix(name, "kubeproxy_"):
			if _, ok := want[name]; !ok {
				t.Errorf("%s is not one of kube-proxy's metrics", name)
			}
		case strings.HasPrefix(name, "rest_client_"):
			if !slices.Contains(upstreamRESTClientMetrics, name) {
				t.Errorf("%s is not one of component-base's rest_client metrics", name)
			}
		case name == "kubernetes_feature_enabled": // the feature gate's, as kube-proxy
		case name == "kubernetes_build_info":
			if have := labelNames(f); !slices.Equal(have, sorted([]string{"major", "minor", "git_version", "git_commit", "git_tree_state", "build_date", "go_version", "compiler", "platform"})) {
				t.Errorf("kubernetes_build_info has labels %v", have)
			}
		case strings.HasPrefix(name, "nftvs_"), strings.HasPrefix(name, "go_"), strings.HasPrefix(name, "process_"),
			strings.HasPrefix(name, "informer_"), // component-base's clientgo/fifo, as kube-proxy
			// component-base's registry's own (metrics/registry.go).
			name == "registered_metrics_total", name == "disabled_metrics_total", name == "hidden_metrics_total",
			name == "cardinality_enforcement_unexpected_categorizations_total":
		default:
			t.Errorf("%s: neither kube-proxy's (kubeproxy_, rest_client_, component-base's) nor under nftvs_", name)
		}
	}
	for _, name := range []string{"rest_client_requests_total", "rest_client_request_duration_seconds", "kubernetes_build_info",
		"kubernetes_feature_enabled", "go_goroutines", "process_start_time_seconds"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s is not served", name)
		}
	}
}

// labelNames are the label names of a family's first metric, sorted.
func labelNames(f *dto.MetricFamily) []string {
	var out []string
	if len(f.Metric) > 0 {
		for _, l := range f.Metric[0].Label {
			if n := l.GetName(); n != "le" && n != "quantile" {
				out = append(out, n)
			}
		}
	}
	return sorted(out)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
