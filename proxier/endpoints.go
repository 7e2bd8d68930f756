package proxier

import (
	"net/netip"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nftvs/nftvs/ipvs"
)

// Endpoint is one backend of a Service port, as the EndpointSlices say.
type Endpoint struct {
	IP          netip.Addr
	Port        uint16
	NodeName    string
	Ready       bool
	Serving     bool
	Terminating bool
	// Hints are the topology hints, nil when there are none (nearly
	// always: one pointer instead of two slices in every endpoint).
	Hints *Hints
}

// Hints are an endpoint's topology hints: the zones and nodes it is for.
type Hints struct{ Zones, Nodes []string }

func (e Endpoint) zoneHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Zones
}

func (e Endpoint) nodeHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Nodes
}

// Local reports whether the endpoint runs on node.
func (e Endpoint) Local(node string) bool { return e.NodeName != "" && e.NodeName == node }

// AddrPort is the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, e.Port) }

// endpointsForPort collects the endpoints of one Service port and family
// from the Service's EndpointSlices. Slices of another address family, and
// endpoints with unusable addresses, are ignored; an endpoint listed twice
// (slices overlap while the controller moves it) counts once, the most
// ready copy winning. They are appended to out (a buffer of
// endpointBuffers, or nil).
func endpointsForPort(out []Endpoint, slices_ []*epSlice, portName string, proto v1.Protocol, ipv6 bool) []Endpoint {
	want := discovery.AddressTypeIPv4
	if ipv6 {
		want = discovery.AddressTypeIPv6
	}
	for _, s := range slices_ {
		if s == nil || s.addressType != want {
			continue
		}
		var port uint16
		found := false
		for _, p := range s.ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			pr := v1.ProtocolTCP
			if p.Protocol != nil {
				pr = *p.Protocol
			}
			if name == portName && pr == proto && p.Port != nil && *p.Port > 0 && *p.Port < 65536 {
				port, found = uint16(*p.Port), true
				break
			}
		}
		if !found {
			continue
		}
		for i := range s.endpoints {
			ep := &s.endpoints[i]
			// Like kube-proxy: only the first address of an endpoint is used.
			ip := ep.addr
			if !ip.IsValid() || ip.Is6() != ipv6 || ip.Zone() != "" {
				continue
			}
			// Ready is taken as it is, also on a terminating endpoint: the
			// EndpointSlice controller keeps the pods of a Service with
			// publishNotReadyAddresses ready while they terminate, and
			// their traffic must keep flowing (upstream e2e "Services
			// should create endpoints for unready pods").
			e := Endpoint{IP: ip.Unmap(), Port: port, Ready: ep.ready(), Serving: ep.serving(),
				Terminating: ep.terminating(), Hints: ep.hints()}
			if ep.node != nil {
				e.NodeName = *ep.node
			}
			if out == nil {
				out = make([]Endpoint, 0, len(s.endpoints))
			}
			out = append(out, e)
		}
	}
	// Sorted by address and port, the most ready copy of each first, then
	// the others dropped: no map per Service port (at 10k Services, 2 KB
	// of garbage each in the first sync).
	slices.SortStableFunc(out, func(a, b Endpoint) int {
		if c := a.AddrPort().Compare(b.AddrPort()); c != 0 {
			return c
		}
		return rank(b) - rank(a)
	})
	return slices.CompactFunc(out, func(a, b Endpoint) bool { return a.AddrPort() == b.AddrPort() })
}

// endpointBuffers hold the endpoints a port is planned from while it is
// planned: they are garbage right after (the plan keeps real servers),
// and were a quarter of a first sync's planning garbage (10 endpoints ×
// 10k Services, 5.6 MB). Planning runs on several goroutines, hence a
// pool.
var endpointBuffers = sync.Pool{New: func() any { return new([]Endpoint) }}

// maxPooledEndpoints bounds the buffers kept: a Service with thousands of
// endpoints keeps its own.
const maxPooledEndpoints = 1024

func getEndpointBuffer() *[]Endpoint { return endpointBuffers.Get().(*[]Endpoint) }

// putEndpointBuffer returns buf, its endpoints eps (dropped: they point
// at node names and hints).
func putEndpointBuffer(buf *[]Endpoint, eps []Endpoint) {
	if cap(eps) > maxPooledEndpoints {
		return
	}
	clear(eps)
	*buf = eps[:0]
	endpointBuffers.Put(buf)
}

func rank(e Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving:
		return 1
	}
	return 0
}

// epSelection is the endpoints one virtual server uses, as its real
// servers with the IPVS weight each gets: 1 carries new connections, 0
// drains (kept while it has connections: drain.go). Only address, port
// and weight: a first sync selects 10 endpoints for each of 10k
// Services, and whole endpoints were a quarter of its planning garbage.
type epSelection []ipvs.RealServer

// topologyMode is "", "PreferSameNode" or "PreferSameZone", chosen from
// the hints as kube-proxy does: hints are used only when every ready
// endpoint has them and at least one is for this node (zone).
func topologyMode(eps []Endpoint, node, zone string) string {
	anyReady, allNode, forNode, allZone, forZone := false, true, false, true, false
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		anyReady = true
		if len(e.nodeHints()) == 0 {
			allNode = false
		} else if slices.Contains(e.nodeHints(), node) {
			forNode = true
		}
		if len(e.zoneHints()) == 0 {
			allZone = false
		} else if slices.Contains(e.zoneHints(), zone) {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return ""
	case allNode && forNode:
		return v1.ServiceTrafficDistributionPreferSameNode
	case allZone && forZone && zone != "":
		return v1.ServiceTrafficDistributionPreferSameZone
	}
	return ""
}

func availableForTopology(e Endpoint, mode, node, zone string) bool {
	switch mode {
	case v1.ServiceTrafficDistributionPreferSameNode:
		return slices.Contains(e.nodeHints(), node)
	case v1.ServiceTrafficDistributionPreferSameZone:
		return slices.Contains(e.zoneHints(), zone)
	}
	return true
}

// selectEndpoints chooses the real servers of a virtual server from the
// candidate endpoints (already restricted to local ones for a Local
// traffic policy):
//   - ready endpoints (within the topology when hints apply) get weight 1;
//   - when there are none, serving-and-terminating endpoints get weight 1
//     (the terminating-endpoint fallback);
//   - every other endpoint (not ready, terminating, or outside the
//     topology) gets weight 0: it takes no new connection, and the ones
//     it has may finish, as in kube-proxy, which drains whatever leaves
//     its endpoint set.
func selectEndpoints(eps []Endpoint, useTopology bool, node, zone string) epSelection {
	mode := ""
	if useTopology {
		mode = topologyMode(eps, node, zone)
	}
	out := make(epSelection, len(eps))
	some := false
	for i, e := range eps {
		out[i] = ipvs.RealServer{Address: e.IP, Port: e.Port}
		if e.Ready && availableForTopology(e, mode, node, zone) {
			out[i].Weight, some = 1, true
		}
	}
	if !some {
		for i, e := range eps {
			if e.Serving && e.Terminating {
				out[i].Weight = 1
			}
		}
	}
	return out
}

func localOnly(eps []Endpoint, node string) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if e.Local(node) {
			out = append(out, e)
		}
	}
	return out
}
