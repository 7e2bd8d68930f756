package proxier

import (
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/ipvs"
)

// Draining real servers, as kube-proxy's IPVS mode keeps them: an
// endpoint that stops taking new connections (not ready, terminating, or
// outside this node's topology) stays in IPVS at weight 0 until it has no
// connection left, so websockets, gRPC streams and database pools finish
// on it. checkDrains reads the connection counts every DrainCheckPeriod;
// the next sync removes the idle ones. Like kube-proxy:
//   - only a real server that was serving drains: a not-ready endpoint
//     that never was in IPVS is not added at weight 0;
//   - UDP and SCTP real servers are removed at once (their flows are
//     flushed by the conntrack cleaner, and IPVS drops its own on the next
//     packet: expire_nodest_conn);
//   - an endpoint removed from its EndpointSlice is not drained either
//     (kube-proxy drains it too): its pod is gone, the cleaner flushes its
//     flows.
//
// DrainTimeout, when set (--ipvs-graceful-termination-period), bounds a
// drain however busy the real server still is.

type drainKey struct {
	vs ipvs.VSKey
	rs netip.AddrPort
}

// drain is a real server kept at weight 0 for its connections.
type drain struct {
	service types.NamespacedName
	since   time.Time // first planned at weight 0
	// idle: the last check found no connection; the next sync removes it.
	idle bool
}

// drainRealServers decides, for each weight-0 real server of n's plans,
// whether it stays for its connections or goes, and remembers when n
// must be looked at again (DrainTimeout).
func (p *Proxier) drainRealServers(n types.NamespacedName, plans []PortPlan, now time.Time) []PortPlan {
	delete(p.draining, n)
	seen := map[drainKey]bool{}
	for i := range plans {
		connectionless := plans[i].Name.Protocol != v1.ProtocolTCP
		for j := range plans[i].VirtualServers {
			s := &plans[i].VirtualServers[j]
			was := p.wasServing(n, s.Key())
			kept := s.RealServers[:0]
			for _, r := range s.RealServers {
				k := drainKey{s.Key(), r.AddrPort()}
				if r.Weight > 0 {
					kept = append(kept, r)
					continue
				}
				if connectionless || !p.keepDraining(k, n, was, now) {
					continue
				}
				seen[k] = true
				kept = append(kept, r)
			}
			s.RealServers = kept
		}
	}
	for k, d := range p.drains {
		if d.service == n && !seen[k] {
			delete(p.drains, k) // back in service, removed or gone idle
		}
	}
	return plans
}

// keepDraining says whether the weight-0 real server k stays.
func (p *Proxier) keepDraining(k drainKey, n types.NamespacedName, wasServing func(netip.AddrPort) bool, now time.Time) bool {
	d, ok := p.drains[k]
	if !ok {
		if !wasServing(k.rs) {
			return false
		}
		d = &drain{service: n, since: now}
		p.drains[k] = d
	}
	if d.idle {
		return false
	}
	if t := p.cfg.DrainTimeout; t > 0 {
		deadline := d.since.Add(t)
		if !deadline.After(now) {
			return false // drained long enough: remove it
		}
		if next, ok := p.draining[n]; !ok || deadline.Before(next) {
			p.draining[n] = deadline
		}
	}
	return true
}

// wasServing tells which real servers of vs may have connections: those
// n had applied at the last sync, or, when n had not applied vs (nftvs
// has just started), those the kernel holds with connections.
func (p *Proxier) wasServing(n types.NamespacedName, vs ipvs.VSKey) func(netip.AddrPort) bool {
	for _, pl := range p.applied[n] {
		for _, s := range pl.VirtualServers {
			if s.Key() != vs {
				continue
			}
			return func(ap netip.AddrPort) bool {
				for _, r := range s.RealServers {
					if r.AddrPort() == ap {
						return true
					}
				}
				return false
			}
		}
	}
	var conns map[netip.AddrPort]ipvs.Connections
	read := false
	return func(ap netip.AddrPort) bool {
		if !read {
			read = true
			var err error
			if conns, err = p.k.IPVS.Connections(vs); err != nil {
				klog.ErrorS(err, "Reading connections; not draining", "virtualServer", vs)
			}
		}
		c, ok := conns[ap]
		return ok && !c.Idle()
	}
}

// checkDrains reads the connections of the draining real servers and
// asks for a sync of the Services whose ones have none left.
func (p *Proxier) checkDrains() {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	byVS := map[ipvs.VSKey][]drainKey{}
	for k, d := range p.drains {
		if !d.idle {
			byVS[k.vs] = append(byVS[k.vs], k)
		}
	}
	idle := false
	for vs, keys := range byVS {
		conns, err := p.k.IPVS.Connections(vs)
		if err != nil {
			klog.ErrorS(err, "Reading connections of draining real servers", "virtualServer", vs)
			continue
		}
		for _, k := range keys {
			if conns[k.rs].Idle() { // also when it is gone from the kernel
				d := p.drains[k]
				d.idle = true
				p.draining[d.service] = time.Time{} // look again now
				idle = true
				klog.V(2).InfoS("Real server drained", "virtualServer", vs, "realServer", k.rs, "service", d.service)
			}
		}
	}
	if idle {
		p.kick()
	}
}

// hasDrains reports whether some real server is waiting for its
// connections to end.
func (p *Proxier) hasDrains() bool {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	for _, d := range p.drains {
		if !d.idle {
			return true
		}
	}
	return false
}

// nextDrainDeadline is when a Service must be looked at again for its
// drains (zero: never).
func (p *Proxier) nextDrainDeadline() (time.Time, bool) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	var next time.Time
	found := false
	for _, d := range p.draining {
		if !found || d.Before(next) {
			next, found = d, true
		}
	}
	return next, found
}
