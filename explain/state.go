package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

// Service is everything nftvs did for one Service on this node: the
// proxier's side (what it planned and applied, and why anything is
// missing), filled by the running nftvs, and the kernel's side, filled by
// the explain command.
type Service struct {
	Service string `json:"service"`
	Node    string `json:"node"`
	Zone    string `json:"zone,omitempty"`
	// Watched says nftvs has the Service from the API; Applied that a
	// sync planned it.
	Watched bool `json:"watched"`
	Applied bool `json:"applied"`
	// Ignored is why nftvs does not proxy the Service at all, or "".
	Ignored string `json:"ignored,omitempty"`
	// Problems are the parts of the Service that are not programmed as
	// asked, with the reason of their Warning Event.
	Problems  []proxier.Problem `json:"problems,omitempty"`
	Ports     []Port            `json:"ports"`
	Endpoints []Endpoint        `json:"endpoints"`

	// Kernel side.
	DummyAddresses []string         `json:"dummyAddresses,omitempty"`
	Conntrack      []conntrack.Flow `json:"conntrack,omitempty"`
	KernelErrors   []string         `json:"kernelErrors,omitempty"`
}

// Port is one Service port's plan, with what the kernel holds of it.
type Port struct {
	Name                string          `json:"name"`
	VirtualServers      []VirtualServer `json:"virtualServers"`
	Addresses           []AddressState  `json:"addresses,omitempty"`
	Elements            []ElementState  `json:"elements"`
	HealthCheckNodePort int             `json:"healthCheckNodePort,omitempty"`
	LocalEndpoints      int             `json:"localEndpoints"`
	ExternalNoLocal     bool            `json:"externalNoLocalEndpoints,omitempty"`
	InternalNoLocal     bool            `json:"internalNoLocalEndpoints,omitempty"`
	// HealthCheck is the health check node port's answer (kernel side).
	HealthCheck string `json:"healthCheck,omitempty"`
}

// VirtualServer is a planned IPVS virtual server and what the kernel has.
type VirtualServer struct {
	Key         ipvs.VSKey   `json:"key"`
	Frontend    string       `json:"frontend"` // as ipvsadm -Ln names it
	Scheduler   string       `json:"scheduler"`
	Flags       string       `json:"flags,omitempty"`
	Persistent  uint32       `json:"persistentTimeout,omitempty"`
	RealServers []RealServer `json:"realServers"`
	// Kernel is nil until the explain command read the kernel.
	Kernel *KernelVirtualServer `json:"kernel,omitempty"`
}

// RealServer is a planned real server; weight 0 takes no new connection
// (draining: not ready, or terminating).
type RealServer struct {
	Address  string `json:"address"`
	Weight   int    `json:"weight"`
	Draining bool   `json:"draining,omitempty"`
}

// KernelVirtualServer is the virtual server as IPVS has it now.
type KernelVirtualServer struct {
	Present     bool               `json:"present"`
	Scheduler   string             `json:"scheduler,omitempty"`
	Flags       string             `json:"flags,omitempty"`
	RealServers []KernelRealServer `json:"realServers,omitempty"`
	Error       string             `json:"error,omitempty"`
}

// KernelRealServer is a real server with its live connection counts.
type KernelRealServer struct {
	Address  string `json:"address"`
	Weight   int    `json:"weight"`
	Active   int    `json:"activeConnections"`
	Inactive int    `json:"inactiveConnections"`
}

// AddressState is a kube-ipvs0 address the port needs.
type AddressState struct {
	Address string `json:"address"`
	// OnDummy is nil until the kernel was read.
	OnDummy *bool `json:"onDummy,omitempty"`
}

// ElementState is an nft element the port owns, by set.
type ElementState struct {
	Set     string `json:"set"`
	Element string `json:"element"`
	// InKernel is nil until read, and for elements that cannot be
	// matched one for one (source ranges).
	InKernel *bool  `json:"inKernel,omitempty"`
	Comment  string `json:"comment,omitempty"`
	// Key is the element itself, for the kernel lookup.
	Key nft.Element `json:"key"`
}

// Endpoint is one endpoint of the Service's EndpointSlices, and which
// virtual servers carry it.
type Endpoint struct {
	Address     string   `json:"address"`
	Node        string   `json:"node,omitempty"`
	Zone        string   `json:"zone,omitempty"`
	Ready       bool     `json:"ready"`
	Serving     bool     `json:"serving"`
	Terminating bool     `json:"terminating"`
	ForZones    []string `json:"forZones,omitempty"`
	// Carried counts the virtual servers sending it new connections;
	// Draining those keeping it at weight 0.
	Carried  int `json:"carried"`
	Draining int `json:"draining"`
	// Why says why it carries no new connection anywhere, or is missing
	// from some virtual servers.
	Why string `json:"why,omitempty"`
}

// Source is the running proxier (proxier.Proxier).
type Source interface {
	AppliedService(types.NamespacedName) ([]proxier.PortPlan, []proxier.Problem, bool)
	Watched(types.NamespacedName) (*v1.Service, []*discovery.EndpointSlice, string, string)
	VirtualServerOwner(ipvs.VSKey) (proxier.ServicePortName, bool)
}

// Build is the proxier's side of a Service's explanation.
func Build(src Source, n types.NamespacedName) Service {
	out := Service{Service: n.String()}
	svc, sls, node, zone := src.Watched(n)
	out.Node, out.Zone = node, zone
	out.Watched = svc != nil
	if svc != nil {
		out.Ignored = proxier.Ignored(svc)
	}
	plans, problems, applied := src.AppliedService(n)
	out.Applied, out.Problems = applied, problems
	for _, pl := range plans {
		out.Ports = append(out.Ports, portOf(pl))
	}
	out.Endpoints = endpointsOf(svc, sls, plans, node, zone)
	return out
}

func portOf(pl proxier.PortPlan) Port {
	p := Port{Name: pl.Name.String(), HealthCheckNodePort: pl.HealthCheckNodePort, LocalEndpoints: pl.LocalEndpoints.Total(),
		ExternalNoLocal: pl.ExternalNoLocal, InternalNoLocal: pl.InternalNoLocal}
	for _, s := range pl.VirtualServers {
		vs := VirtualServer{Key: s.Key(), Frontend: s.VSKey.String(), Scheduler: s.Scheduler,
			Flags: ipvs.SchedulerFlagsString(s.Scheduler, s.Flags)}
		if s.Flags&ipvs.FlagPersistent != 0 {
			vs.Persistent = s.Timeout
		}
		for _, r := range s.RealServers {
			vs.RealServers = append(vs.RealServers, RealServer{Address: r.AddrPort().String(), Weight: r.Weight, Draining: r.Weight == 0})
		}
		p.VirtualServers = append(p.VirtualServers, vs)
	}
	for _, a := range pl.Addresses {
		p.Addresses = append(p.Addresses, AddressState{Address: a.String()})
	}
	for _, e := range pl.Elements {
		p.Elements = append(p.Elements, ElementState{Set: string(e.Set), Element: e.String(), Key: e})
	}
	slices.SortStableFunc(p.Elements, func(a, b ElementState) int { return strings.Compare(a.Set, b.Set) })
	return p
}

// endpointsOf lists the slices' endpoints with the virtual servers that
// carry them, and says why one carries no new connection.
func endpointsOf(svc *v1.Service, sls []*discovery.EndpointSlice, plans []proxier.PortPlan, node, zone string) []Endpoint {
	weights := map[netip.Addr][]int{}
	for _, pl := range plans {
		for _, s := range pl.VirtualServers {
			for _, r := range s.RealServers {
				weights[r.Address.Unmap()] = append(weights[r.Address.Unmap()], r.Weight)
			}
		}
	}
	var out []Endpoint
	seen := map[string]bool{}
	for _, sl := range sls {
		for _, ep := range sl.Endpoints {
			for _, a := range ep.Addresses {
				if seen[a] {
					continue
				}
				seen[a] = true
				e := Endpoint{Address: a, Ready: ep.Conditions.Ready == nil || *ep.Conditions.Ready,
					Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
					Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating}
				if ep.NodeName != nil {
					e.Node = *ep.NodeName
				}
				if ep.Zone != nil {
					e.Zone = *ep.Zone
				}
				if ep.Hints != nil {
					for _, z := range ep.Hints.ForZones {
						e.ForZones = append(e.ForZones, z.Name)
					}
				}
				ip, _ := netip.ParseAddr(a)
				for _, w := range weights[ip.Unmap()] {
					if w > 0 {
						e.Carried++
					} else {
						e.Draining++
					}
				}
				e.Why = why(e, svc, node, zone)
				out = append(out, e)
			}
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// why explains an endpoint that carries no new connection, in the order
// planning decides (endpoints.go): conditions, then traffic policy, then
// topology.
func why(e Endpoint, svc *v1.Service, node, zone string) string {
	if e.Carried > 0 {
		if svc != nil && localPolicy(svc) && e.Node != node {
			return "on node " + e.Node + ": internal traffic only (externalTrafficPolicy Local sends traffic from outside to this node's endpoints)"
		}
		return ""
	}
	switch {
	case e.Terminating && e.Ready:
		return "" // a publishNotReadyAddresses pod: still ready
	case e.Terminating && e.Draining > 0:
		return "terminating: at weight 0 for its connections, until they end (or --ipvs-graceful-termination-period)"
	case e.Terminating:
		return "terminating: out of IPVS (its connections ended, or the drain bound --ipvs-graceful-termination-period passed)"
	case !e.Ready && e.Draining > 0:
		return "not ready: at weight 0 for its connections"
	case !e.Ready:
		return "not ready"
	}
	if svc != nil && svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal && e.Node != node {
		return fmt.Sprintf("on node %s: internalTrafficPolicy Local uses this node's (%s) endpoints only", e.Node, node)
	}
	if len(e.ForZones) > 0 && !slices.Contains(e.ForZones, zone) {
		return fmt.Sprintf("topology: hinted for zones %s, this node is in %q", strings.Join(e.ForZones, ","), zone)
	}
	if e.Draining > 0 {
		return "at weight 0 (topology or a ready endpoint elsewhere takes the traffic)"
	}
	return "not programmed: the Service's port names or protocols do not match this endpoint's, or the Service is not planned"
}

func localPolicy(svc *v1.Service) bool {
	return svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		(svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer)
}

// ParseTarget reads what the operator asks about: "namespace/name", or a
// frontend "address:port" with an optional "/protocol" (TCP by default).
func ParseTarget(s string) (svc types.NamespacedName, frontend ipvs.VSKey, err error) {
	addr, proto, _ := strings.Cut(s, "/")
	if ap, perr := netip.ParseAddrPort(addr); perr == nil {
		p := ipvs.TCP
		if proto != "" {
			p = ipvs.Protocol(strings.ToUpper(proto))
			if !p.Known() {
				return svc, frontend, fmt.Errorf("%q: unknown protocol %q (TCP, UDP or SCTP)", s, proto)
			}
		}
		return svc, ipvs.VSKey{Address: ap.Addr(), Protocol: p, Port: ap.Port()}.Key(), nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return svc, frontend, fmt.Errorf("%q is neither namespace/name nor address:port[/protocol]", s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, frontend, nil
}
