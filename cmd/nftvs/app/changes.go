package app

import (
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/nftvs/nftvs/healthcheck"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/proxier"
)

// changeTracker keeps kube-proxy's account of Service and EndpointSlice
// changes, told by the proxier's watch (proxier.WatchOptions.OnChange)
// and by each sync:
//   - the *_changes_total counters count every event;
//   - service_changes_pending counts the Services with a Service change
//     not yet taken by a sync, endpoint_changes_pending the EndpointSlice
//     changes not yet taken (pkg/proxy/servicechangetracker.go and
//     endpointschangetracker.go; kube-proxy clears both when a sync takes
//     them, whether it then succeeds or not);
//   - once the informers have synced (initialized), a change that
//     changes something queues a sync, as kube-proxy's proxier Sync():
//     the last queued timestamp, and /healthz's oldest queued update (a
//     change waiting more than 2 × the sync period for a successful sync
//     makes the proxy unhealthy). The informers' initial lists queue
//     nothing, as in kube-proxy, whose proxier ignores events until it
//     is initialized and then runs its first sync without QueuedUpdate:
//     a first sync that takes minutes on a loaded node at 10k Services
//     is start-up making progress, not a stalled proxy for /livez.
type changeTracker struct {
	metrics  *metrics.Metrics
	health   *healthcheck.HealthServer
	families []v1.IPFamily
	clock    clock.PassiveClock
	// initialized is set once the informers' caches have synced.
	initialized atomic.Bool

	mu sync.Mutex
	// services are the Services with a pending Service change, by when
	// the last one was recorded; endpoints when each pending EndpointSlice
	// change was recorded.
	services  map[types.NamespacedName]time.Time
	endpoints []time.Time
}

func newChangeTracker(m *metrics.Metrics, h *healthcheck.HealthServer, families []v1.IPFamily, c clock.PassiveClock) *changeTracker {
	return &changeTracker{metrics: m, health: h, families: families, clock: c,
		services: map[types.NamespacedName]time.Time{}}
}

// start is the sync loop's start, as kube-proxy's SyncLoop: every family
// is healthy (Updated) in case no sync ever succeeds, and the last-queued
// time of every family is synthesized "as the informers are syncing"
// (pkg/proxy/ipvs/proxier.go), so that
// kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds exists from
// the start.
func (t *changeTracker) start() {
	for _, f := range t.families {
		t.health.Updated(f)
	}
	t.metrics.SetLastQueued(t.clock.Now())
}

// initialize records that the informers have synced: from now on a
// change queues a sync.
func (t *changeTracker) initialize() { t.initialized.Store(true) }

// queued records that a sync is wanted.
func (t *changeTracker) queued(now time.Time) {
	if !t.initialized.Load() {
		return // the first sync takes it, as kube-proxy's
	}
	for _, f := range t.families {
		t.health.QueuedUpdate(f)
	}
	t.metrics.SetLastQueued(now)
}

// observe records one event, after the proxier was handed it.
func (t *changeTracker) observe(c proxier.Change) {
	t.metrics.ObserveChange(c.EndpointSlice)
	if !c.Changed {
		return
	}
	now := t.clock.Now()
	t.mu.Lock()
	if c.EndpointSlice {
		t.endpoints = append(t.endpoints, now)
	} else {
		t.services[c.Service] = now
	}
	t.metrics.SetPending(len(t.services), len(t.endpoints))
	t.mu.Unlock()
	t.queued(now)
}

// synced forgets the changes recorded before a sync started: it took
// them. A change recorded while it ran is kept for the next sync, which
// the proxier runs since that change kicked it.
func (t *changeTracker) synced(start time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, at := range t.services {
		if !at.After(start) {
			delete(t.services, name)
		}
	}
	kept := t.endpoints[:0]
	for _, at := range t.endpoints {
		if at.After(start) {
			kept = append(kept, at)
		}
	}
	t.endpoints = kept
	t.metrics.SetPending(len(t.services), len(t.endpoints))
}
