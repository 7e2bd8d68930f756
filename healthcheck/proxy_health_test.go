package healthcheck

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nftvs/nftvs/internal/metricstest"
	"github.com/nftvs/nftvs/metrics"
)

func get(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Body)
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", path, body, err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	return rec.Code, m
}

// The rules of kube-proxy's ProxyHealthServer.
func TestHealthServer(t *testing.T) {
	clock := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	m := metrics.New([]v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol})
	hs := NewHealthServer(60*time.Second, clock)
	hs.SetNode(func() *v1.Node { return node })
	hs.SetMetrics(m)
	h := hs.Handler()
	both := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}

	// Starting: nothing synced yet, healthy.
	code, body := get(t, h, "/healthz")
	if code != 200 || body["healthy"] != true || body["nodeEligible"] != true {
		t.Errorf("starting: %d %v", code, body)
	}

	// Synced, then a change queued: healthy until it has waited 60s.
	for _, f := range both {
		hs.Updated(f)
	}
	step(clock, 10*time.Second)
	for _, f := range both {
		hs.QueuedUpdate(f)
	}
	step(clock, 59*time.Second)
	if code, body = get(t, h, "/healthz"); code != 200 {
		t.Errorf("change waiting 59s: %d %v", code, body)
	}
	// Later QueuedUpdates do not move the oldest pending time.
	hs.QueuedUpdate(v1.IPv4Protocol)
	step(clock, time.Second)
	code, body = get(t, h, "/healthz")
	if code != 503 || body["healthy"] != false {
		t.Errorf("change waiting 60s: %d %v", code, body)
	}
	status, _ := body["status"].(map[string]any)
	v4, _ := status["IPv4"].(map[string]any)
	if v4["healthy"] != false || v4["lastUpdated"] != "2026-01-01T00:00:00Z" {
		t.Errorf("status IPv4 %v", status["IPv4"])
	}
	if code, _ = get(t, h, "/livez"); code != 503 {
		t.Errorf("livez with a late sync: %d", code)
	}

	// The sync happens: healthy, lastUpdated is now.
	for _, f := range both {
		hs.Updated(f)
	}
	step(clock, time.Second)
	code, body = get(t, h, "/healthz")
	if code != 200 || body["lastUpdated"] != body["currentTime"] {
		t.Errorf("after sync: %d %v", code, body)
	}

	// A node the autoscaler is deleting, or being deleted, or unknown, is
	// not eligible: /healthz fails, /livez does not (and has no
	// nodeEligible field).
	for name, n := range map[string]*v1.Node{
		"tainted":  {Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: toBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}},
		"deleting": {ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &metav1.Time{Time: clock.Now()}}},
		"unknown":  nil,
	} {
		node = n
		code, body = get(t, h, "/healthz")
		if code != 503 || body["nodeEligible"] != false || body["healthy"] != true {
			t.Errorf("%s node: healthz %d %v", name, code, body)
		}
		code, body = get(t, h, "/livez")
		if _, has := body["nodeEligible"]; code != 200 || has {
			t.Errorf("%s node: livez %d %v", name, code, body)
		}
	}

	if got := value(t, m, "kubeproxy_proxy_healthz_total", "503"); got != 4 {
		t.Errorf("kubeproxy_proxy_healthz_total{code=503} = %v, want 4", got)
	}
	if got := value(t, m, "kubeproxy_proxy_livez_total", "200"); got != 3 {
		t.Errorf("kubeproxy_proxy_livez_total{code=200} = %v, want 3", got)
	}
}

func step(c *clocktesting.FakePassiveClock, d time.Duration) { c.SetTime(c.Now().Add(d)) }

// The health server is served before nftvs has read its Node or built
// its proxier: /livez says alive, /healthz says not eligible (no Node
// yet), as kube-proxy's do for a Node they have not seen. The metrics
// come later and count only what follows.
func TestHealthServerBeforeStart(t *testing.T) {
	clock := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	hs := NewHealthServer(60*time.Second, clock)
	h := hs.Handler()
	if code, body := get(t, h, "/livez"); code != 200 || body["healthy"] != true {
		t.Errorf("livez before the Node: %d %v", code, body)
	}
	if code, body := get(t, h, "/healthz"); code != 503 || body["healthy"] != true || body["nodeEligible"] != false {
		t.Errorf("healthz before the Node: %d %v", code, body)
	}
	// Start-up takes as long as it takes: without a queued change, no
	// amount of time makes the proxy unhealthy.
	step(clock, time.Hour)
	if code, _ := get(t, h, "/livez"); code != 200 {
		t.Errorf("livez an hour into start-up: %d", code)
	}

	hs.SetNode(func() *v1.Node { return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}} })
	m := metrics.New([]v1.IPFamily{v1.IPv4Protocol})
	hs.SetMetrics(m)
	if code, body := get(t, h, "/healthz"); code != 200 || body["nodeEligible"] != true {
		t.Errorf("healthz with the Node: %d %v", code, body)
	}
	if got := value(t, m, "kubeproxy_proxy_healthz_total", "200"); got != 1 {
		t.Errorf("kubeproxy_proxy_healthz_total{code=200} = %v, want 1", got)
	}
	if got := value(t, m, "kubeproxy_proxy_livez_total", "200"); got != 0 {
		t.Errorf("kubeproxy_proxy_livez_total{code=200} = %v, want 0 (answers before SetMetrics are not counted)", got)
	}
}

// value is the value of the counter or gauge name in m whose labels
// include labelValue (metricstest.Value).
func value(t *testing.T, m *metrics.Metrics, name, labelValue string) float64 {
	return metricstest.Value(t, m.Registry, name, labelValue)
}
