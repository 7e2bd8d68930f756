package proxier

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"

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
	problems map[types.NamespacedName]string
}

// publish records the plans a sync committed (old: what they replaced)
// and the Services' current problems; p.syncMu is held.
func (v *view) publish(planned, old map[types.NamespacedName][]PortPlan, problems map[types.NamespacedName]string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.owners == nil {
		v.owners = map[ipvs.VSKey]ServicePortName{}
		v.plans = map[types.NamespacedName][]PortPlan{}
		v.problems = map[types.NamespacedName]string{}
	}
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
		if pr, ok := problems[n]; ok {
			v.problems[n] = pr
		} else {
			delete(v.problems, n)
		}
	}
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
// for it, and what it could not (its FieldErrors, joined, or ""). It
// never waits for a running sync.
func (p *Proxier) AppliedService(n types.NamespacedName) (plans []PortPlan, problems string, ok bool) {
	p.view.mu.RLock()
	defer p.view.mu.RUnlock()
	plans, ok = p.view.plans[n]
	problems, hasProblems := p.view.problems[n]
	return plans, problems, ok || hasProblems
}
