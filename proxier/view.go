package proxier

import (
	"errors"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/internal/mapsize"
	"github.com/nftvs/nftvs/ipvs"
)

// view is what the proxier last applied, published at the end of each
// sync for readers that must not take the sync lock: metric scrapes
// (which virtual server is which Service port) and `nftvs explain`. A
// sync updates it for the Services it replanned only, so its cost follows
// the change, not the number of Services.
//
// Lock order: syncMu, then view.mu; readers take view.mu alone, briefly.
type view struct {
	mu       sync.RWMutex
	owners   map[ipvs.VSKey]ServicePortName
	plans    map[types.NamespacedName][]PortPlan
	problems map[types.NamespacedName][]Problem
	// staged are the problems a running sync found, published with its
	// plans; guarded by syncMu, not mu.
	staged map[types.NamespacedName][]Problem
}

// Problem is a part of a Service that is not programmed as asked, and
// why: a FieldError's reason (RefusedAddress, FrontendConflict,
// InvalidScheduler, ...) and message.
type Problem struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// stage records the problems planning found for n (nil: none); p.syncMu
// is held.
func (v *view) stage(n types.NamespacedName, err error) {
	if v.staged == nil {
		v.staged = map[types.NamespacedName][]Problem{}
	}
	var ps []Problem
	for _, e := range unjoin(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			ps = append(ps, Problem{fe.Reason, fe.Message})
		} else {
			ps = append(ps, Problem{ReasonFailedToProgram, e.Error()})
		}
	}
	v.staged[n] = ps
}

// publish records the plans a sync committed (old: what they replaced)
// and the Services' current problems; p.syncMu is held.
func (v *view) publish(planned, old map[types.NamespacedName][]PortPlan) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.owners == nil {
		v.owners = map[ipvs.VSKey]ServicePortName{}
		v.plans = map[types.NamespacedName][]PortPlan{}
		v.problems = map[types.NamespacedName][]Problem{}
	}
	frontends := 0
	for _, plans := range planned {
		for _, pl := range plans {
			frontends += len(pl.VirtualServers)
		}
	}
	v.owners, v.plans = mapsize.Grown(v.owners, frontends), mapsize.Grown(v.plans, len(planned))
	for n := range planned {
		for _, pl := range old[n] {
			for _, s := range pl.VirtualServers {
				// A frontend handed over to another Service in this
				// sync is already the new owner's.
				if o, ok := v.owners[s.Key()]; ok && o == pl.Name {
					delete(v.owners, s.Key())
				}
			}
		}
	}
	for n, plans := range planned {
		for _, pl := range plans {
			for _, s := range pl.VirtualServers {
				v.owners[s.Key()] = pl.Name
			}
		}
		if plans == nil {
			delete(v.plans, n)
		} else {
			v.plans[n] = plans
		}
		if ps := v.staged[n]; len(ps) > 0 {
			v.problems[n] = ps
		} else {
			delete(v.problems, n)
		}
	}
	clear(v.staged)
}

// VirtualServerOwner is the Service port whose virtual server k is, as
// last applied. It never waits for a running sync.
func (p *Proxier) VirtualServerOwner(k ipvs.VSKey) (ServicePortName, bool) {
	p.view.mu.RLock()
	defer p.view.mu.RUnlock()
	n, ok := p.view.owners[k.Key()]
	return n, ok
}

// AppliedService is what the last sync that planned a Service programmed
// for it, and what it could not. It never waits for a running sync.
func (p *Proxier) AppliedService(n types.NamespacedName) (plans []PortPlan, problems []Problem, ok bool) {
	p.view.mu.RLock()
	defer p.view.mu.RUnlock()
	plans, ok = p.view.plans[n]
	problems, hasProblems := p.view.problems[n]
	return plans, problems, ok || hasProblems
}

// Watched returns a Service and its EndpointSlices as last watched (nil
// when there is none), and this node's name and zone: what `nftvs
// explain` compares with what was applied.
func (p *Proxier) Watched(n types.NamespacedName) (svc *v1.Service, slices []*discovery.EndpointSlice, node, zone string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := p.input(n)
	for _, s := range in.slices {
		slices = append(slices, s.apiSlice())
	}
	return in.svc, slices, p.cfg.Node.Name, p.node.Zone
}
