package proxier

import (
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// boundDrains drops real servers that have drained (weight 0) for longer
// than DrainTimeout, and remembers when the Service must be looked at
// again.
func (p *Proxier) boundDrains(n types.NamespacedName, plans []PortPlan, now time.Time) []PortPlan {
	delete(p.draining, n)
	seen := map[drainKey]bool{}
	for i := range plans {
		for j := range plans[i].VirtualServers {
			s := &plans[i].VirtualServers[j]
			kept := s.RealServers[:0]
			for _, r := range s.RealServers {
				k := drainKey{s.Key(), r.AddrPort()}
				if r.Weight > 0 {
					delete(p.drains, k)
					kept = append(kept, r)
					continue
				}
				seen[k] = true
				first, ok := p.drains[k]
				if !ok {
					first = now
					p.drains[k] = now
				}
				deadline := first.Add(p.cfg.DrainTimeout)
				if !deadline.After(now) {
					continue // drained long enough: remove it
				}
				if d, ok := p.draining[n]; !ok || deadline.Before(d) {
					p.draining[n] = deadline
				}
				kept = append(kept, r)
			}
			s.RealServers = kept
		}
	}
	// Forget drains of this Service's real servers that are no longer
	// planned at weight 0 (removed, or back in service).
	for k := range p.drains {
		if seen[k] {
			continue
		}
		for _, pl := range p.applied[n] {
			for _, s := range pl.VirtualServers {
				if s.Key() == k.vs {
					delete(p.drains, k)
				}
			}
		}
	}
	return plans
}

// nextDrainDeadline is when the next drain bound passes (zero: none).
func (p *Proxier) nextDrainDeadline() time.Time {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	var next time.Time
	for _, d := range p.draining {
		if next.IsZero() || d.Before(next) {
			next = d
		}
	}
	return next
}
