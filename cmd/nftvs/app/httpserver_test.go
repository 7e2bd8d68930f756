package app

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/metrics"
)

func TestMetricsServerEndpoints(t *testing.T) {
	cfg := mustParse(t, "--profiling")
	h := metricsHandler(metrics.New([]v1.IPFamily{v1.IPv4Protocol}), cfg)
	for path, want := range map[string]string{
		"/healthz":            "ok",
		"/proxyMode":          "ipvs",
		"/configz":            `{"kubeproxy.config.k8s.io":{"kind":"KubeProxyConfiguration","apiVersion":"kubeproxy.config.k8s.io/v1alpha1"`,
		"/metrics":            "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
		"/debug/pprof/":       "goroutine",
		"/configz?x=ipvs.sch": `"scheduler":""`,
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("%s: %d %.300q, want %q", path, rec.Code, rec.Body.String(), want)
		}
	}
}

// /metrics/slis is served as kube-proxy serves it: the /healthz check's
// results (component-base's kubernetes_healthcheck{name="ping",
// type="healthz"}), reset by a DELETE. Before, it answered 404.
func TestMetricsSLIs(t *testing.T) {
	h := metricsHandler(metrics.New([]v1.IPFamily{v1.IPv4Protocol}), mustParse(t))
	do := func(method, path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec.Code, rec.Body.String()
	}
	get := func(path string) (int, string) { return do(http.MethodGet, path) }
	if code, body := do(http.MethodDelete, "/metrics/slis"); code != 200 || body != "metrics reset\n" { // what other tests left
		t.Fatalf("DELETE /metrics/slis: %d %q", code, body)
	}
	get("/healthz")
	code, body := get("/metrics/slis")
	for _, want := range []string{
		"# HELP kubernetes_healthcheck [STABLE] This metric records the result of a single healthcheck.",
		`kubernetes_healthcheck{name="ping",type="healthz"} 1`,
		`kubernetes_healthchecks_total{name="ping",status="success",type="healthz"} 1`,
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics/slis: %d, no %q in\n%s", code, want, body)
		}
	}
	do(http.MethodDelete, "/metrics/slis")
	if _, body = get("/metrics/slis"); strings.Contains(body, `kubernetes_healthchecks_total{`) {
		t.Errorf("/metrics/slis is not reset by a DELETE:\n%s", body)
	}
}
