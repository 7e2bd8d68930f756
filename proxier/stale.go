package proxier

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/internal/l4"
	"github.com/nftvs/nftvs/ipvs"
)

// staleFlows turns removed real servers into conntrack deletions: entries
// whose original destination is a frontend of the virtual server (for a
// fwmark virtual server, every frontend of its Service port) and whose
// reply comes from the removed real server. UDP ports that had no
// endpoint and now have one also get their entries to the frontends
// flushed whatever the reply source, as kube-proxy does: datagrams sent
// while there was no endpoint left entries that would blackhole the flow.
func staleFlows(removed []ipvs.RemovedRealServer, old map[types.NamespacedName][]PortPlan, planned map[types.NamespacedName][]PortPlan) []conntrack.Stale {
	type target struct {
		proto     l4.Protocol
		frontends []netip.AddrPort
	}
	// Only the virtual servers that lost a real server: a first sync or
	// a restart plans every Service and removes nothing.
	lost := make(map[ipvs.VSKey]bool, len(removed))
	for _, r := range removed {
		lost[r.VirtualServer.Key()] = true
	}
	targets := map[ipvs.VSKey]target{}
	add := func(plans map[types.NamespacedName][]PortPlan) {
		if len(lost) == 0 {
			return
		}
		for _, ps := range plans {
			for _, pl := range ps {
				for _, s := range pl.VirtualServers {
					k := s.Key()
					if _, done := targets[k]; done || !lost[k] {
						continue
					}
					t := target{proto: l4.Protocol(pl.Name.Protocol)}
					for _, o := range pl.VirtualServers {
						ok := o.Key()
						// A fwmark virtual server is reached through every
						// frontend of its port and family.
						if ok.FWMark == 0 && (ok == k || k.FWMark != 0 && ok.Address.Is6() == k.IPv6) {
							t.frontends = append(t.frontends, netip.AddrPortFrom(ok.Address, ok.Port))
						}
					}
					targets[k] = t
				}
			}
		}
	}
	add(old)
	add(planned)
	var out []conntrack.Stale
	for _, r := range removed {
		t, ok := targets[r.VirtualServer.Key()]
		if !ok || len(t.frontends) == 0 {
			continue
		}
		out = append(out, conntrack.Stale{Protocol: t.proto,
			Frontends: t.frontends, Endpoint: r.RealServer.AddrPort()})
	}
	for n, plans := range planned {
		before := portsByName(old[n])
		for _, pl := range plans {
			if pl.Name.Protocol != v1.ProtocolUDP {
				continue
			}
			for _, s := range pl.VirtualServers {
				if s.FWMark != 0 || !servesAny(s) || servesAny(findService(before[pl.Name], s.Key())) {
					continue
				}
				out = append(out, conntrack.Stale{Protocol: l4.UDP,
					Frontends: []netip.AddrPort{netip.AddrPortFrom(s.Address, s.Port)}})
			}
		}
	}
	return out
}

func servesAny(s ipvs.Service) bool {
	for _, r := range s.RealServers {
		if r.Weight > 0 {
			return true
		}
	}
	return false
}

func findService(pl PortPlan, k ipvs.VSKey) ipvs.Service {
	for _, s := range pl.VirtualServers {
		if s.Key() == k {
			return s
		}
	}
	return ipvs.Service{}
}
