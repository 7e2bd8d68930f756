//go:build vmtest

package takeover_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsAddr is kube-proxy's default --metrics-bind-address, which both
// proxies use in this test.
const metricsAddr = "http://127.0.0.1:10249"

// metricsNotServed are kube-proxy IPVS mode's families nftvs does not
// serve, and why (README's differences table).
var metricsNotServed = map[string]string{
	"kubeproxy_sync_proxy_rules_iptables_restore_failures_total": "no iptables-restore: nftvs_sync_errors_total",
}

func get(t *testing.T, path string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(metricsAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return string(b)
}

// scraped is one proxy's /metrics, /configz and /metrics/slis, taken
// while it runs.
type scraped struct {
	metrics map[string]*dto.MetricFamily
	configz map[string]any
	slis    string
}

func scrapeProxy(t *testing.T) scraped {
	t.Helper()
	get(t, "/healthz") // one healthz check, for /metrics/slis
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(get(t, "/metrics")))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	var cz map[string]any
	if err := json.Unmarshal([]byte(get(t, "/configz")), &cz); err != nil {
		t.Fatalf("parse /configz: %v", err)
	}
	return scraped{metrics: fams, configz: cz, slis: get(t, "/metrics/slis")}
}

// series are a family's label sets, without le and quantile, sorted.
func series(f *dto.MetricFamily) []string {
	var out []string
	for _, m := range f.Metric {
		var ls []string
		for _, l := range m.Label {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(ls)
		out = append(out, strings.Join(ls, ","))
	}
	sort.Strings(out)
	return out
}

func buckets(f *dto.MetricFamily) []float64 {
	var out []float64
	if len(f.Metric) > 0 && f.Metric[0].Histogram != nil {
		for _, b := range f.Metric[0].Histogram.Bucket {
			out = append(out, b.GetUpperBound())
		}
	}
	return out
}

func labelNames(f *dto.MetricFamily) []string {
	var out []string
	if len(f.Metric) > 0 {
		for _, l := range f.Metric[0].Label {
			out = append(out, l.GetName())
		}
	}
	sort.Strings(out)
	return out
}

// compareScrapes checks that nftvs's scrape is kube-proxy's, family by
// family: every kubeproxy_ and kubernetes_ family kube-proxy serves
// (but those in metricsNotServed) with the same type, help (stability
// prefix included), label names, buckets and series; every family both
// serve with the same type, help and label names. /configz must have
// kube-proxy's shape (the same keys, each level), and /metrics/slis
// kube-proxy's families.
func compareScrapes(t *testing.T, kp, nv scraped) {
	t.Helper()
	var compared []string
	for name, want := range kp.metrics {
		got, ok := nv.metrics[name]
		core := strings.HasPrefix(name, "kubeproxy_") || strings.HasPrefix(name, "kubernetes_")
		if !ok {
			if why, skip := metricsNotServed[name]; skip {
				t.Logf("metrics: %s not served by nftvs on purpose (%s)", name, why)
			} else if core {
				t.Errorf("metrics: kube-proxy serves %s, nftvs does not", name)
			} else {
				t.Logf("metrics: kube-proxy serves %s, nftvs does not (not kube-proxy's own)", name)
			}
			continue
		}
		compared = append(compared, name)
		if got.GetType() != want.GetType() {
			t.Errorf("metrics: %s is a %v in nftvs, a %v in kube-proxy", name, got.GetType(), want.GetType())
		}
		if got.GetHelp() != want.GetHelp() {
			t.Errorf("metrics: %s help\n  nftvs:      %q\n  kube-proxy: %q", name, got.GetHelp(), want.GetHelp())
		}
		if len(got.Metric) > 0 && len(want.Metric) > 0 && !slices.Equal(labelNames(got), labelNames(want)) {
			t.Errorf("metrics: %s labels %v in nftvs, %v in kube-proxy", name, labelNames(got), labelNames(want))
		}
		if core && !slices.Equal(buckets(got), buckets(want)) {
			t.Errorf("metrics: %s buckets %v in nftvs, %v in kube-proxy", name, buckets(got), buckets(want))
		}
		if core && name != "kubernetes_build_info" && name != "kubernetes_feature_enabled" {
			if g, w := series(got), series(want); !slices.Equal(g, w) {
				t.Errorf("metrics: %s series\n  nftvs:      %v\n  kube-proxy: %v", name, g, w)
			}
		}
	}
	sort.Strings(compared)
	t.Logf("metrics: %d families compared with kube-proxy's: %s", len(compared), strings.Join(compared, " "))
	for name := range nv.metrics {
		if strings.HasPrefix(name, "kubeproxy_") {
			if _, ok := kp.metrics[name]; !ok {
				t.Logf("metrics: nftvs serves %s, which this kube-proxy run did not (yet) show", name)
			}
		}
	}

	// The logging section follows the log flags, which differ between
	// the two runs (kube-proxy's has --vmodule): not compared.
	noLogging := func(s []string) []string {
		return slices.DeleteFunc(s, func(p string) bool { return strings.HasPrefix(p, ".kubeproxy.config.k8s.io.logging.") })
	}
	if g, w := noLogging(shape(nv.configz, "")), noLogging(shape(kp.configz, "")); !slices.Equal(g, w) {
		t.Errorf("/configz shape differs:\n  only nftvs:      %v\n  only kube-proxy: %v", minus(g, w), minus(w, g))
	}
	for _, fam := range []string{"kubernetes_healthcheck", "kubernetes_healthchecks_total"} {
		if strings.Contains(kp.slis, fam) && !strings.Contains(nv.slis, fam) {
			t.Errorf("/metrics/slis: kube-proxy serves %s, nftvs does not:\n%s", fam, nv.slis)
		}
	}
}

// shape lists the keys of a JSON document, each with its path and the
// kind of its value.
func shape(v any, path string) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			p := path + "." + k
			out = append(out, p+":"+kind(c))
			out = append(out, shape(c, p)...)
		}
	}
	sort.Strings(out)
	return out
}

func kind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func minus(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}
