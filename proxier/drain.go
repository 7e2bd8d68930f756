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
// whether it stays for its connections or goes.
func (p *Proxier) drainRealServers(n types.NamespacedName, plans []PortPlan, now time.Time) []PortPlan {
	seen := map[drainKey]bool{}
	for i := range plans {
		connectionless := plans[i].Name.Protocol != v1.ProtocolTCP
		for j := range plans[i].VirtualServers {
			s := &plans[i].VirtualServers[j]
			var served map[netip.AddrPort]bool // looked up at the first weight-0 real server
			kept := s.RealServers[:0]
			for _, r := range s.RealServers {
				if r.Weight == 0 {
					if connectionless {
						continue
					}
					if served == nil {
						served = p.served(n, s.Key())
					}
					k := drainKey{s.Key(), r.AddrPort()}
					if !p.keepDraining(k, n, served[k.rs], now) {
						continue
					}
					seen[k] = true
				}
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

// keepDraining says whether the weight-0 real server k stays; served: it
// may carry connections.
func (p *Proxier) keepDraining(k drainKey, n types.NamespacedName, served bool, now time.Time) bool {
	d, ok := p.drains[k]
	if !ok {
		if !served {
			return false
		}
		d = &drain{service: n, since: now}
		p.drains[k] = d
	}
	due, ok := p.due(d)
	return !ok || due.After(now)
}

// due is when d's Service must be planned again for d: at once when d
// went idle, when DrainTimeout passes if it is set; ok false: only when
// a check finds it idle.
func (p *Proxier) due(d *drain) (t time.Time, ok bool) {
	switch {
	case d.idle:
		return time.Time{}, true
	case p.cfg.DrainTimeout > 0:
		return d.since.Add(p.cfg.DrainTimeout), true
	}
	return time.Time{}, false
}

// served lists the real servers of vs that may carry connections: those
// n had applied at the last sync, or, when n had not applied vs (nftvs
// has just started), those the kernel holds with connections.
func (p *Proxier) served(n types.NamespacedName, vs ipvs.VSKey) map[netip.AddrPort]bool {
	out := map[netip.AddrPort]bool{}
	for _, pl := range p.applied[n] {
		for _, s := range pl.VirtualServers {
			if s.Key() == vs {
				for _, r := range s.RealServers {
					out[r.AddrPort()] = true
				}
				return out
			}
		}
	}
	conns, ok := p.connectionsOf(vs)
	if !ok {
		var err error
		if conns, err = p.k.IPVS.Connections(vs); err != nil {
			klog.ErrorS(err, "Reading connections; not draining", "virtualServer", vs)
		}
	}
	for ap, c := range conns {
		out[ap] = !c.Idle()
	}
	return out
}

// connectionsOf are vs's real servers' connection counts, from the
// sync's kernel read if it has them (a restart's: converted for this
// virtual server only, not all 10k at once), else from
// kernelConnections; false when neither has vs.
func (p *Proxier) connectionsOf(vs ipvs.VSKey) (map[netip.AddrPort]ipvs.Connections, bool) {
	if conns, ok := p.syncRead.ConnectionsOf(vs); ok {
		return conns, true
	}
	conns, ok := p.kernelConnections()[vs]
	return conns, ok
}

// kernelConnections reads every real server's connection counts once per
// sync, at the first Service that needs them: after a restart every
// Service with a weight-0 real server does, and one read beats a dump per
// virtual server. Nil when the read failed (each is then dumped alone).
func (p *Proxier) kernelConnections() map[ipvs.VSKey]map[netip.AddrPort]ipvs.Connections {
	if !p.syncConnsRead {
		p.syncConnsRead = true
		conns, err := p.k.IPVS.AllConnections()
		if err != nil {
			klog.V(2).InfoS("Reading every real server's connections failed; reading each virtual server's", "err", err)
		}
		p.syncConns = conns
	}
	return p.syncConns
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
				d.idle = true // due now: the next sync removes it
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

// nextDrainDeadline is when the first drain is due (ok false: none is
// until a check finds it idle).
func (p *Proxier) nextDrainDeadline() (next time.Time, ok bool) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	for _, d := range p.drains {
		if t, due := p.due(d); due && (!ok || t.Before(next)) {
			next, ok = t, true
		}
	}
	return next, ok
}
