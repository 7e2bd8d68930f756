package app

import (
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

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
//   - a change that changes something queues a sync, as kube-proxy's
//     proxier Sync(): the last queued timestamp, and /healthz's oldest
//     queued update (a change waiting more than 2 × the sync period for a
//     successful sync makes the proxy unhealthy).
type changeTracker struct {
	metrics  *Metrics
	health   *HealthServer
	families []v1.IPFamily
	now      func() time.Time

	mu sync.Mutex
	// services are the Services with a pending Service change, by when
	// the last one was recorded; endpoints when each pending EndpointSlice
	// change was recorded.
	services  map[types.NamespacedName]time.Time
	endpoints []time.Time
}

func newChangeTracker(m *Metrics, h *HealthServer, families []v1.IPFamily) *changeTracker {
	return &changeTracker{metrics: m, health: h, families: families, now: time.Now,
		services: map[types.NamespacedName]time.Time{}}
}

// queued records that a sync is wanted (at start, the informers' initial
// lists are the first change).
func (t *changeTracker) queued(now time.Time) {
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
	now := t.now()
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
