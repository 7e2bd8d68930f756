package app

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nftvs/nftvs/healthcheck"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/proxier"
)

// The change metrics mean what kube-proxy's change trackers make them
// mean (pkg/proxy/servicechangetracker.go, endpointschangetracker.go):
// service_changes_pending counts Services with a Service change waiting,
// endpoint_changes_pending EndpointSlice changes waiting, both cleared by
// the sync that takes them; the totals count every event, a Service
// event once per IP family proxied. A resync (nothing changed) is counted
// but not pending and does not queue a sync.
func TestChangeMetricsAsKubeProxy(t *testing.T) {
	families := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	m := metrics.New(families)
	clock := clocktesting.NewFakePassiveClock(time.Unix(1700000000, 0))
	h := healthcheck.NewHealthServer(time.Minute, clock)
	c := newChangeTracker(m, h, families, clock)
	c.initialize()
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	db := types.NamespacedName{Namespace: "ns", Name: "db"}

	c.observe(proxier.Change{Service: web, Changed: true})
	c.observe(proxier.Change{Service: web, Changed: true}) // the same Service again
	c.observe(proxier.Change{Service: db, Changed: false}) // a resync
	c.observe(proxier.Change{EndpointSlice: true, Service: web, Changed: true})
	c.observe(proxier.Change{EndpointSlice: true, Service: web, Changed: true})
	c.observe(proxier.Change{EndpointSlice: true, Service: db, Changed: false})
	check := func(when string, svcPending, epPending, svcTotal, epTotal float64) {
		t.Helper()
		for name, got := range map[string][2]float64{
			"service_changes_pending":  {value(t, m, "kubeproxy_sync_proxy_rules_service_changes_pending", ""), svcPending},
			"endpoint_changes_pending": {value(t, m, "kubeproxy_sync_proxy_rules_endpoint_changes_pending", ""), epPending},
			"service_changes_total":    {value(t, m, "kubeproxy_sync_proxy_rules_service_changes_total", ""), svcTotal},
			"endpoint_changes_total":   {value(t, m, "kubeproxy_sync_proxy_rules_endpoint_changes_total", ""), epTotal},
		} {
			if got[0] != got[1] {
				t.Errorf("%s: kubeproxy_sync_proxy_rules_%s = %v, want %v", when, name, got[0], got[1])
			}
		}
	}
	check("after the events", 1, 2, 3*2, 3)
	if got := value(t, m, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "IPv6"); got != 1700000000 {
		t.Errorf("last queued timestamp %v", got)
	}

	// A change recorded while a sync runs is left for the next one.
	start := clock.Now()
	step(clock, time.Second)
	c.observe(proxier.Change{EndpointSlice: true, Service: db, Changed: true})
	c.synced(start)
	check("after a sync", 0, 1, 6, 4)
	c.synced(clock.Now())
	check("after the next sync", 0, 0, 6, 4)

	// A change queues a sync for /healthz: unhealthy once it waited
	// longer than the timeout without a successful sync.
	for _, f := range families { // as a successful sync
		h.Updated(f)
	}
	step(clock, 2*time.Minute)
	if !h.Health().Healthy {
		t.Fatal("unhealthy with nothing queued")
	}
	c.observe(proxier.Change{Service: web, Changed: true})
	step(clock, 2*time.Minute)
	if h.Health().Healthy {
		t.Error("healthy with a change queued for 2 minutes")
	}
}

// Before the informers have synced, a change queues nothing, as in
// kube-proxy (its proxier ignores events until it is initialized, and
// runs its first sync without QueuedUpdate): the initial lists of a
// large cluster, and a first sync that takes minutes on a loaded node,
// keep /livez at 200. Once initialized, a change that waits too long
// makes the proxy unhealthy again.
func TestChangesQueueOnlyOnceInitialized(t *testing.T) {
	families := []v1.IPFamily{v1.IPv4Protocol}
	m := metrics.New(families)
	clock := clocktesting.NewFakePassiveClock(time.Unix(1700000000, 0))
	h := healthcheck.NewHealthServer(time.Minute, clock)
	c := newChangeTracker(m, h, families, clock)
	h.Updated(v1.IPv4Protocol) // the sync loop starts
	web := types.NamespacedName{Namespace: "ns", Name: "web"}

	c.observe(proxier.Change{Service: web, Changed: true}) // from the initial list
	step(clock, 10*time.Minute)
	if !h.Health().Healthy {
		t.Error("unhealthy 10 min into start-up, with only the initial list seen")
	}
	if got := value(t, m, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "IPv4"); got != 0 {
		t.Errorf("last queued timestamp %v before initialization, want unset", got)
	}

	c.initialize()
	c.observe(proxier.Change{Service: web, Changed: true})
	step(clock, 59*time.Second)
	if !h.Health().Healthy {
		t.Error("unhealthy with a change queued for 59 s (timeout 1 min)")
	}
	step(clock, time.Second)
	if h.Health().Healthy {
		t.Error("healthy with a change queued for 1 min (timeout 1 min)")
	}
}

// The sync loop's start synthesizes the last-queued time of every family,
// as kube-proxy's SyncLoop does, so the gauge is served from the start.
// Before, nftvs served it only after a change (the same-run comparison
// with kube-proxy 1.36.3 in e2e/takeover found it missing).
func TestSyncLoopStartSetsLastQueued(t *testing.T) {
	families := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	m := metrics.New(families)
	clock := clocktesting.NewFakePassiveClock(time.Unix(1700000000, 0))
	h := healthcheck.NewHealthServer(time.Minute, clock)
	newChangeTracker(m, h, families, clock).start()
	for _, f := range families {
		if got := value(t, m, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", string(f)); got != 1700000000 {
			t.Errorf("last queued timestamp of %s: %v, want the start", f, got)
		}
	}
	if !h.Health().Healthy {
		t.Error("unhealthy at the sync loop's start")
	}
}
