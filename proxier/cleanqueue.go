package proxier

import (
	"net/netip"
	"sync"

	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/internal/l4"
)

// cleanQueue takes conntrack cleaning off the sync path. A clean walks
// the whole conntrack table (filtered in the kernel, but still a walk of
// every bucket), so its cost grows with the table: 500k entries cost a
// one-change sync far more than the change itself. A sync hands its
// stale flows to the queue and returns; one goroutine at a time cleans
// what is queued, in batches.
//
// The one thing a late clean could break: a flow of an endpoint that
// comes back. A clean deletes the flows answered by a removed endpoint;
// if a later sync gives that endpoint traffic again while its clean is
// still queued, the clean would delete the new flows. So such a sync
// first waits for the queue (flush, from Sync before IPVS is written),
// and the order of the synchronous cleaner holds: every clean of an
// endpoint is done before the endpoint serves again.
type cleanQueue struct {
	c conntrack.Interface
	// mu guards pending and busy; it is never held during a Clean.
	mu      sync.Mutex
	idle    sync.Cond // signalled when busy goes false
	pending []conntrack.Stale
	busy    bool              // a Clean runs (the worker, or a flush)
	running []conntrack.Stale // what it cleans
}

func newCleanQueue(c conntrack.Interface) *cleanQueue {
	q := &cleanQueue{c: c}
	q.idle.L = &q.mu
	return q
}

// add queues stale for cleaning and starts the worker if none runs.
func (q *cleanQueue) add(stale []conntrack.Stale) {
	if len(stale) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, stale...)
	if !q.busy {
		q.busy = true
		go q.work()
	}
}

// work cleans until nothing is pending: what queued up during one Clean
// goes in the next, in one walk of the table.
func (q *cleanQueue) work() {
	q.mu.Lock()
	for len(q.pending) > 0 {
		batch := q.pending
		q.pending, q.running = nil, batch
		q.mu.Unlock()
		q.clean(batch)
		q.mu.Lock()
	}
	q.busy, q.running = false, nil
	q.idle.Broadcast()
	q.mu.Unlock()
}

// flush returns when every clean queued so far is done: it waits for a
// running one, and does what is still pending itself.
func (q *cleanQueue) flush() {
	q.mu.Lock()
	for q.busy {
		q.idle.Wait()
	}
	if len(q.pending) == 0 {
		q.mu.Unlock()
		return
	}
	q.busy = true
	q.mu.Unlock()
	q.work()
}

func (q *cleanQueue) clean(batch []conntrack.Stale) {
	r, err := q.c.Clean(batch)
	if err != nil {
		// Not worth more than a log: the entries expire by themselves.
		klog.ErrorS(err, "Cleaning conntrack entries of removed endpoints")
	}
	klog.V(4).InfoS("Cleaned conntrack entries of removed endpoints", "stale", len(batch),
		"deleted", r.Deleted, "vanished", r.Vanished, "scanned", r.Scanned, "duration", r.Duration)
}

// endpointKey is a removed endpoint as a clean names it.
type endpointKey struct {
	proto l4.Protocol
	ep    netip.AddrPort
}

// endpoints are the endpoints whose flows are queued for deletion,
// pending or in the Clean that runs (nil when there are none).
func (q *cleanQueue) endpoints() map[endpointKey]bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out map[endpointKey]bool
	for _, b := range [][]conntrack.Stale{q.pending, q.running} {
		for _, s := range b {
			if !s.Endpoint.IsValid() {
				continue
			}
			if out == nil {
				out = map[endpointKey]bool{}
			}
			out[endpointKey{s.Protocol, s.Endpoint}] = true
		}
	}
	return out
}
