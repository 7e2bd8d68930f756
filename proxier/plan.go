package proxier

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// ServicePortName identifies one port of a Service.
type ServicePortName struct {
	Namespace, Name, Port string
	Protocol              v1.Protocol
}

// String is "namespace/name:port" (":port" omitted for an unnamed port), as
// kube-proxy prints it; it is also the owner name of nft elements.
func (n ServicePortName) String() string {
	s := n.Namespace + "/" + n.Name
	if n.Port != "" {
		s += ":" + n.Port
	}
	return s
}

// Node is what planning needs to know of this node.
type Node struct {
	Name string
	Zone string // topology.kubernetes.io/zone label
	// IPs are the node's addresses: a load-balancer source range that
	// contains one lets the node itself reach the load balancer.
	IPs []netip.Addr
	// NodePortAddresses are the local addresses node ports listen on
	// (every local address but kube-ipvs0's, loopback and IPv6 link-local,
	// or those selected by --nodeport-addresses).
	NodePortAddresses []netip.Addr
}

// PlanConfig is the configuration planning depends on.
type PlanConfig struct {
	Node      Node
	Scheduler string // --ipvs-scheduler, default rr
	// IPv4 and IPv6 say which families this node proxies.
	IPv4, IPv6 bool
}

// PortPlan is everything one Service port needs in the kernel.
type PortPlan struct {
	Name ServicePortName
	// VirtualServers are IPVS virtual servers with their real servers.
	VirtualServers []ipvs.Service
	// Addresses are bound to kube-ipvs0.
	Addresses []netip.Addr
	// Elements go to the nftables table, owned by Name.
	Elements []nft.Element
	// HealthCheckNodePort is the ETP=Local health check port, or 0.
	HealthCheckNodePort int
	// LocalEndpoints counts local endpoints in use (health check answer).
	LocalEndpoints int
	// ExternalNoLocal is true when an ETP=Local port has no local
	// endpoint: external traffic is dropped (kube-proxy's
	// sync_proxy_rules_no_local_endpoints_total).
	ExternalNoLocal, InternalNoLocal bool
}

// Ignored reports why kube-proxy would not proxy this Service at all, or "".
func Ignored(svc *v1.Service) string {
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return "ExternalName Service"
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		return "headless Service"
	case svc.Spec.ClusterIP == "":
		return "no ClusterIP"
	}
	if _, ok := svc.Labels["service.kubernetes.io/service-proxy-name"]; ok {
		return "belongs to another service proxy"
	}
	return ""
}

const defaultAffinityTimeout = 10800 // seconds, the API default for ClientIP

// PlanService computes the kernel state of every port of svc from its
// EndpointSlices. It is a pure function. Parts of the Service that cannot
// be used (a malformed IP, an unsupported protocol) are left out and
// reported in the error; the rest is planned.
func PlanService(svc *v1.Service, eps []*discovery.EndpointSlice, cfg *PlanConfig) ([]PortPlan, error) {
	if svc == nil {
		return nil, errors.New("nil Service")
	}
	if why := Ignored(svc); why != "" {
		return nil, nil
	}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s/%s: "+format, append([]any{svc.Namespace, svc.Name}, args...)...))
	}

	clusterIPs := parseIPs(svc.Spec.ClusterIPs, "clusterIPs", bad)
	if len(svc.Spec.ClusterIPs) == 0 {
		clusterIPs = parseIPs([]string{svc.Spec.ClusterIP}, "clusterIP", bad)
	}
	externalIPs := parseIPs(svc.Spec.ExternalIPs, "externalIPs", bad)
	var lbIPs []netip.Addr
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// ipMode Proxy: the load balancer proxies, so traffic arrives
			// for a node address, not for the ingress IP: do not bind it.
			if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy) {
				continue
			}
			lbIPs = append(lbIPs, parseIPs([]string{ing.IP}, "loadBalancer ingress IP", bad)...)
		}
	}
	var sourceRanges []netip.Prefix
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			bad("loadBalancerSourceRanges: %v", err)
			continue
		}
		sourceRanges = append(sourceRanges, p.Masked())
	}

	externalLocal := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		(svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer)
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal

	var flags ipvs.Flags
	var timeout uint32
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		flags |= ipvs.FlagPersistent
		timeout = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			timeout = uint32(*c.ClientIP.TimeoutSeconds)
		}
	}
	sched := cfg.Scheduler
	if sched == "" {
		sched = "rr"
	}
	flags |= ipvs.SchedulerFlags(sched)

	var plans []PortPlan
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol == "" {
			sp.Protocol = v1.ProtocolTCP // the API default
		}
		name := ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: sp.Name, Protocol: sp.Protocol}
		proto, ok := protocol(sp.Protocol)
		if !ok {
			bad("port %q: unsupported protocol %q", sp.Name, sp.Protocol)
			continue
		}
		if sp.Port <= 0 || sp.Port > 65535 || sp.NodePort < 0 || sp.NodePort > 65535 {
			bad("port %q: port %d / nodePort %d out of range", sp.Name, sp.Port, sp.NodePort)
			continue
		}
		port := uint16(sp.Port)
		nodePort := uint16(sp.NodePort)
		plan := PortPlan{Name: name}
		if externalLocal {
			plan.HealthCheckNodePort = int(svc.Spec.HealthCheckNodePort)
		}
		vs := func(key ipvs.VSKey, sel epSelection) {
			s := ipvs.Service{VirtualServer: ipvs.VirtualServer{VSKey: key, Scheduler: sched, Flags: flags, Timeout: timeout}}
			for _, w := range sel {
				s.RealServers = append(s.RealServers, ipvs.RealServer{Address: w.IP, Port: w.Port, Weight: w.Weight})
			}
			plan.VirtualServers = append(plan.VirtualServers, s)
		}
		el := func(e nft.Element) { plan.Elements = append(plan.Elements, e) }
		mark := fwmark(name, proto, nodePort)

		for _, ipv6 := range []bool{false, true} {
			if (ipv6 && !cfg.IPv6) || (!ipv6 && !cfg.IPv4) {
				continue
			}
			family := func(ips []netip.Addr) []netip.Addr {
				var out []netip.Addr
				for _, ip := range ips {
					if ip.Is6() == ipv6 {
						out = append(out, ip)
					}
				}
				return out
			}
			cips := family(clusterIPs)
			if len(cips) == 0 {
				// The Service is not of this family (single-stack).
				continue
			}
			all := endpointsForPort(eps, sp.Name, sp.Protocol, ipv6)
			local := localOnly(all, cfg.Node.Name)
			cluster := selectEndpoints(all, true, cfg.Node.Name, cfg.Node.Zone)
			localSel := selectEndpoints(local, false, cfg.Node.Name, cfg.Node.Zone)
			internal := cluster
			if internalLocal {
				internal = localSel
				plan.InternalNoLocal = plan.InternalNoLocal || !carries(localSel)
			}
			external := cluster
			noLocal := false
			if externalLocal {
				external = localSel
				noLocal = !carries(localSel)
				plan.ExternalNoLocal = plan.ExternalNoLocal || noLocal
				plan.LocalEndpoints += countCarrying(localSel)
			}
			for _, e := range local {
				el(nft.Element{Set: nft.Hairpin, Addr: e.IP, Protocol: proto, Port: e.Port})
			}

			for _, ip := range cips {
				vs(ipvs.VSKey{Address: ip, Protocol: ipvs.Protocol(sp.Protocol), Port: port}, internal)
				plan.Addresses = append(plan.Addresses, ip)
				el(nft.Element{Set: nft.ClusterIPs, Addr: ip, Protocol: proto, Port: port})
				el(nft.Element{Set: nft.IPVSAddresses, Addr: ip})
			}
			// Frontends reached from outside the cluster.
			extSet, lbSet := nft.ExternalIPs, nft.LoadBalancerIPs
			if externalLocal {
				extSet, lbSet = nft.ExternalIPsLocal, nft.LoadBalancerIPsLocal
			}
			for _, ip := range family(externalIPs) {
				vs(ipvs.VSKey{Address: ip, Protocol: ipvs.Protocol(sp.Protocol), Port: port}, external)
				plan.Addresses = append(plan.Addresses, ip)
				el(nft.Element{Set: extSet, Addr: ip, Protocol: proto, Port: port})
				el(nft.Element{Set: nft.IPVSAddresses, Addr: ip})
				if externalLocal {
					el(nft.Element{Set: nft.LocalPolicyFWMarks, Addr: ip, Protocol: proto, Port: port, Mark: mark})
				}
				if noLocal {
					el(nft.Element{Set: nft.NoLocalEndpoints, Addr: ip, Protocol: proto, Port: port})
				}
			}
			for _, ip := range family(lbIPs) {
				vs(ipvs.VSKey{Address: ip, Protocol: ipvs.Protocol(sp.Protocol), Port: port}, external)
				plan.Addresses = append(plan.Addresses, ip)
				el(nft.Element{Set: lbSet, Addr: ip, Protocol: proto, Port: port})
				el(nft.Element{Set: nft.IPVSAddresses, Addr: ip})
				if externalLocal {
					el(nft.Element{Set: nft.LocalPolicyFWMarks, Addr: ip, Protocol: proto, Port: port, Mark: mark})
				}
				if noLocal {
					el(nft.Element{Set: nft.NoLocalEndpoints, Addr: ip, Protocol: proto, Port: port})
				}
				if len(sourceRanges) > 0 {
					el(nft.Element{Set: nft.LoadBalancerFirewall, Addr: ip, Protocol: proto, Port: port})
					allowNode := false
					for _, r := range sourceRanges {
						if r.Addr().Is6() != ipv6 {
							continue
						}
						el(nft.Element{Set: nft.LoadBalancerSourceRanges, Addr: ip, Protocol: proto, Port: port, Source: r})
						for _, n := range cfg.Node.IPs {
							allowNode = allowNode || r.Contains(n)
						}
					}
					// The node reaches its own kube-ipvs0 address with that
					// address as source: allow it when the node is allowed.
					if allowNode {
						el(nft.Element{Set: nft.LoadBalancerSourceRanges, Addr: ip, Protocol: proto, Port: port,
							Source: netip.PrefixFrom(ip, ip.BitLen())})
					}
				}
			}
			if nodePort != 0 {
				for _, ip := range family(cfg.Node.NodePortAddresses) {
					vs(ipvs.VSKey{Address: ip, Protocol: ipvs.Protocol(sp.Protocol), Port: nodePort}, external)
				}
			}
			// Internal traffic to ETP=Local frontends: an fwmark virtual
			// server with every endpoint (see docs/architecture.md).
			if externalLocal && (nodePort != 0 || len(family(externalIPs)) > 0 || len(family(lbIPs)) > 0) {
				vs(ipvs.VSKey{FWMark: mark, IPv6: ipv6}, cluster)
			}
		}
		if nodePort != 0 && len(plan.VirtualServers) > 0 {
			if externalLocal {
				el(nft.Element{Set: nft.NodePortsLocal, Protocol: proto, Port: nodePort})
				el(nft.Element{Set: nft.NodePortFWMarks, Protocol: proto, Port: nodePort, Mark: mark})
				// A node port has no family: drop only when no family has
				// a local endpoint.
				if plan.ExternalNoLocal && plan.LocalEndpoints == 0 {
					el(nft.Element{Set: nft.NodePortsNoLocalEndpoints, Protocol: proto, Port: nodePort})
				}
			} else {
				el(nft.Element{Set: nft.NodePorts, Protocol: proto, Port: nodePort})
			}
		}
		if plan.HealthCheckNodePort > 0 && plan.HealthCheckNodePort < 65536 && len(plan.VirtualServers) > 0 {
			el(nft.Element{Set: nft.HealthCheckNodePorts, Port: uint16(plan.HealthCheckNodePort)})
		}
		if len(plan.VirtualServers) == 0 {
			continue
		}
		plan.Addresses = uniqueAddrs(plan.Addresses)
		plans = append(plans, plan)
	}
	return plans, errors.Join(errs...)
}

// fwmark is the firewall mark of an ETP=Local port's all-endpoints virtual
// server. It is derived from the node port and protocol, which are unique
// in the cluster, so it is stable across restarts without any stored
// state: node port << 16 | protocol << 12 | masquerade bit (0x4000), which
// keeps kube-proxy's and the kubelet's mark bits (14, 15) meaningful. A
// LoadBalancer without node ports gets a hash of its name below 1024
// instead (node ports start at 30000 by default; the range is documented).
func fwmark(name ServicePortName, proto nft.Protocol, nodePort uint16) uint32 {
	p := map[nft.Protocol]uint32{nft.TCP: 1, nft.UDP: 2, nft.SCTP: 3}[proto]
	hi := uint32(nodePort)
	if hi == 0 {
		h := fnv.New32a()
		h.Write([]byte(name.String()))
		hi = 1 + h.Sum32()%1023
	}
	return hi<<16 | p<<12 | 0x4000
}

func carries(s epSelection) bool { return countCarrying(s) > 0 }

func countCarrying(s epSelection) int {
	n := 0
	for _, w := range s {
		if w.Weight > 0 {
			n++
		}
	}
	return n
}

func protocol(p v1.Protocol) (nft.Protocol, bool) {
	switch p {
	case v1.ProtocolTCP, "":
		return nft.TCP, true
	case v1.ProtocolUDP:
		return nft.UDP, true
	case v1.ProtocolSCTP:
		return nft.SCTP, true
	}
	return "", false
}

func parseIPs(ss []string, field string, bad func(string, ...any)) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" || ip.IsUnspecified() {
			bad("%s: invalid IP %q", field, s)
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out
}

func uniqueAddrs(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}
