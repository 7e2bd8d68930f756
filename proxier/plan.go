package proxier

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	netutils "k8s.io/utils/net"

	"github.com/nftvs/nftvs/internal/l4"
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

// Owner is the port's owner name of nft elements:
// "namespace/name:port/protocol". The protocol is part of it because a
// port may change protocol under the same name: its old and new elements
// then have different owners, and dropping the old ones leaves the new.
func (n ServicePortName) Owner() string {
	return n.String() + "/" + strings.ToLower(string(n.Protocol))
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
	// LocalAddresses are the addresses of this node's links, but
	// kube-ipvs0's. An external or load-balancer IP among them (or among
	// IPs) is the node's own: its Service port is served, as kube-proxy
	// does, but nftvs never binds it to kube-ipvs0 nor filters its other
	// ports (kubernetes#115019).
	LocalAddresses []netip.Addr
}

func (c *PlanConfig) masqueradeMark() uint32 {
	if c.MasqueradeMark == 0 {
		return 1 << nft.DefaultMasqueradeBit
	}
	return c.MasqueradeMark
}

// owns reports whether ip is one of the node's own addresses.
func (n *Node) owns(ip netip.Addr) bool {
	return slices.Contains(n.IPs, ip) || slices.Contains(n.LocalAddresses, ip)
}

// PlanConfig is the configuration planning depends on.
type PlanConfig struct {
	Node      Node
	Scheduler string // --ipvs-scheduler, default rr
	// Schedulers are the IPVS schedulers this node's kernel offers
	// (probed once at start), what a Service's scheduling annotation may
	// ask for (scheduling.go); nil means ipvs.KernelSchedulers.
	Schedulers []string
	// IPv4 and IPv6 say which families this node proxies.
	IPv4, IPv6 bool
	// MasqueradeMark is the packet mark bit asking for masquerade
	// (1 << --iptables-masquerade-bit; 0 means kube-proxy's bit 14).
	MasqueradeMark uint32
	// ExcludeCIDRs (--ipvs-exclude-cidrs) belong to someone else
	// (keepalived, kube-vip): no external or load-balancer IP inside them
	// is programmed.
	ExcludeCIDRs []netip.Prefix
	// MaxVirtualServers and MaxSourceRanges bound what one Service may
	// ask of every node (--max-virtual-servers-per-service,
	// --max-source-range-elements-per-service; 0: the defaults). A
	// Service above either is refused whole (ReasonServiceTooLarge).
	MaxVirtualServers, MaxSourceRanges int
	// APIServer are the API server's addresses: the host nftvs connects
	// to, and the endpoints of the default/kubernetes Service. No
	// Service may claim one as an external or load-balancer IP: bound to
	// kube-ipvs0, it would cut the node off its API server.
	APIServer []netip.Addr
}

// Default per-Service bounds, far above real use (a Service of 100 ports
// on 2 ClusterIPs, 20 load-balancer IPs and 8 node addresses asks for
// 3,000 virtual servers), and what the docs say they cost.
const (
	DefaultMaxVirtualServers = 10_000
	DefaultMaxSourceRanges   = 10_000
)

func (c *PlanConfig) maxVirtualServers() int {
	if c.MaxVirtualServers <= 0 {
		return DefaultMaxVirtualServers
	}
	return c.MaxVirtualServers
}

func (c *PlanConfig) maxSourceRanges() int {
	if c.MaxSourceRanges <= 0 {
		return DefaultMaxSourceRanges
	}
	return c.MaxSourceRanges
}

// PortPlan is everything one Service port needs in the kernel.
type PortPlan struct {
	Name ServicePortName
	// VirtualServers are IPVS virtual servers with their real servers.
	VirtualServers []ipvs.Service
	// Sources says who wrote the address of each virtual server that the
	// cluster did not allocate (load-balancer ingress, externalIPs): when
	// two Services ask for one frontend, the one whose address fewer
	// people may write owns it (claims.go). Absent: allocated.
	Sources map[ipvs.VSKey]AddressSource
	// Addresses are bound to kube-ipvs0.
	Addresses []netip.Addr
	// Elements go to the nftables table, owned by Name.
	Elements []nft.Element
	// HealthCheckNodePort is the ETP=Local health check port, or 0.
	HealthCheckNodePort int
	// LocalEndpoints counts the Service's ready endpoints on this node
	// (distinct IPs, every port), per IP family, what the health check
	// node port answers, as kube-proxy counts them: its proxier and health
	// check server of each family count that family's endpoints, so a
	// dual-stack pod is one in each; serving-but-terminating ones do not
	// count, so a load balancer drains a node whose only local pods are
	// terminating.
	LocalEndpoints FamilyCount
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
	return planService(svc, newEpSlices(eps), cfg)
}

// planService is PlanService on the slices as the proxier keeps them.
func planService(svc *v1.Service, eps []*epSlice, cfg *PlanConfig) ([]PortPlan, error) {
	if svc == nil {
		return nil, errors.New("nil Service")
	}
	if why := Ignored(svc); why != "" {
		return nil, nil
	}
	var errs []error
	bad := func(reason, format string, args ...any) {
		errs = append(errs, &FieldError{Reason: reason, Message: fmt.Sprintf("%s/%s: "+format, append([]any{svc.Namespace, svc.Name}, args...)...)})
	}
	fe := parseFrontends(svc, cfg, bad)
	if err := fanOut(svc, &fe, cfg); err != nil {
		return nil, err
	}
	tmpl := virtualServerTemplate(svc, cfg, bad)
	plans := make([]PortPlan, 0, len(svc.Spec.Ports))
	var readyLocal addrSet
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol == "" {
			sp.Protocol = v1.ProtocolTCP // the API default
		}
		proto, ok := protocol(sp.Protocol)
		if !ok {
			bad(ReasonInvalidPort, "port %q: unsupported protocol %q", sp.Name, sp.Protocol)
			continue
		}
		if sp.Port <= 0 || sp.Port > 65535 || sp.NodePort < 0 || sp.NodePort > 65535 {
			bad(ReasonInvalidPort, "port %q: port %d / nodePort %d out of range", sp.Name, sp.Port, sp.NodePort)
			continue
		}
		pp := newPortPlanner(svc, sp, proto, fe, tmpl, cfg)
		pp.bad, pp.readyLocal = bad, &readyLocal
		for _, ipv6 := range []bool{false, true} {
			if (ipv6 && cfg.IPv6) || (!ipv6 && cfg.IPv4) {
				pp.planFamily(ipv6, eps)
			}
		}
		if plan, ok := pp.finish(); ok {
			plans = append(plans, plan)
		}
	}
	var local FamilyCount
	for ip := range readyLocal.m {
		if ip.Is6() {
			local.IPv6++
		} else {
			local.IPv4++
		}
	}
	for i := range plans {
		plans[i].LocalEndpoints = local
	}
	return plans, errors.Join(errs...)
}

// frontends are a Service's addresses and the fields that apply to all of
// its ports, parsed once.
type frontends struct {
	clusterIPs, externalIPs, loadBalancerIPs []netip.Addr
	// sourceRanges are the usable loadBalancerSourceRanges; firewalled
	// says the Service asked for some, usable or not.
	sourceRanges                 []netip.Prefix
	firewalled                   bool
	externalLocal, internalLocal bool
	// nodeOwned are the external and load-balancer IPs that are the
	// node's own addresses.
	nodeOwned map[netip.Addr]bool
}

func parseFrontends(svc *v1.Service, cfg *PlanConfig, bad badField) frontends {
	var fe frontends
	fe.clusterIPs = parseIPs(svc.Spec.ClusterIPs, "clusterIPs", bad)
	if len(svc.Spec.ClusterIPs) == 0 {
		fe.clusterIPs = parseIPs([]string{svc.Spec.ClusterIP}, "clusterIP", bad)
	}
	fe.externalIPs = externalAddresses(parseIPs(svc.Spec.ExternalIPs, "externalIPs", bad), "externalIPs", cfg, bad)
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		var ips []string
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// ipMode Proxy: the load balancer proxies, so traffic arrives
			// for a node address, not for the ingress IP: do not bind it.
			if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == v1.LoadBalancerIPModeVIP) {
				ips = append(ips, ing.IP)
			}
		}
		fe.loadBalancerIPs = externalAddresses(parseIPs(ips, "loadBalancer ingress IP", bad), "loadBalancer ingress IP", cfg, bad)
	}
	fe.firewalled = len(svc.Spec.LoadBalancerSourceRanges) > 0
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		// The API server accepts padding; kube-proxy trims it.
		_, n, err := netutils.ParseCIDRSloppy(strings.TrimSpace(r))
		if err != nil {
			bad(ReasonInvalidSourceRange, "loadBalancerSourceRanges: %q is not a CIDR: left out, the others still restrict", r)
			continue
		}
		p, _ := netip.AddrFromSlice(n.IP)
		ones, _ := n.Mask.Size()
		// An IPv4-mapped IPv6 prefix (::ffff:a.b.c.d/n) matches no
		// packet: left out like any unusable range, and said so.
		prefix := netip.PrefixFrom(p, ones).Masked()
		if !prefix.IsValid() || prefix.Addr().Is4In6() {
			bad(ReasonInvalidSourceRange, "loadBalancerSourceRanges: %q is an IPv4-mapped IPv6 range: left out, the others still restrict", r)
			continue
		}
		fe.sourceRanges = append(fe.sourceRanges, prefix)
	}
	fe.externalLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		(svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer)
	fe.internalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	fe.nodeOwned = map[netip.Addr]bool{}
	for _, ip := range append(slices.Clone(fe.externalIPs), fe.loadBalancerIPs...) {
		if cfg.Node.owns(ip) {
			fe.nodeOwned[ip] = true
		}
	}
	return fe
}

// fanOut refuses a Service that asks every node for more virtual servers
// or source-range elements than the bounds allow: they grow as products
// (ports × addresses, load-balancer IPs × ports × ranges), so a 100 KB
// Service could ask for a million. It counts before anything is planned.
func fanOut(svc *v1.Service, fe *frontends, cfg *PlanConfig) error {
	perPort := len(fe.clusterIPs) + len(fe.externalIPs) + len(fe.loadBalancerIPs)
	virtualServers, ranges := 0, 0
	for _, sp := range svc.Spec.Ports {
		virtualServers += perPort
		if sp.NodePort != 0 {
			virtualServers += len(cfg.Node.NodePortAddresses)
		}
		if fe.externalLocal {
			virtualServers += 2 // the fwmark virtual servers, one per family
		}
		if fe.firewalled {
			ranges += len(fe.loadBalancerIPs) * (len(fe.sourceRanges) + 1)
		}
	}
	tooLarge := func(what string, n, limit int, flag string) error {
		return &FieldError{Reason: ReasonServiceTooLarge, Message: fmt.Sprintf(
			"%s/%s: asks every node for %d %s, more than %d (%s): not programmed at all",
			svc.Namespace, svc.Name, n, what, limit, flag)}
	}
	if virtualServers > cfg.maxVirtualServers() {
		return tooLarge("IPVS virtual servers", virtualServers, cfg.maxVirtualServers(), "--max-virtual-servers-per-service")
	}
	if ranges > cfg.maxSourceRanges() {
		return tooLarge("load-balancer source-range elements", ranges, cfg.maxSourceRanges(), "--max-source-range-elements-per-service")
	}
	return nil
}

// externalAddresses keeps the external or load-balancer IPs nftvs may
// claim. Any namespace user writes them, so an address that would capture
// traffic meant for someone else is refused: loopback (the node's own
// daemons), link-local (metadata services), unspecified, multicast and
// broadcast, addresses inside --ipvs-exclude-cidrs, and the API server's
// (bound to kube-ipvs0, it would cut the node off its API server).
func externalAddresses(ips []netip.Addr, field string, cfg *PlanConfig, bad badField) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		why := ""
		switch {
		case ip.IsUnspecified():
			why = "unspecified"
		case ip.IsLoopback():
			why = "a loopback address"
		case ip.IsLinkLocalUnicast():
			why = "a link-local address"
		case ip.IsMulticast():
			why = "a multicast address"
		case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			why = "the broadcast address"
		case slices.ContainsFunc(cfg.ExcludeCIDRs, func(p netip.Prefix) bool { return p.Contains(ip) }):
			why = "inside --ipvs-exclude-cidrs (another owner's)"
		case slices.Contains(cfg.APIServer, ip):
			why = "the API server's address"
		}
		if why != "" {
			bad(ReasonRefusedAddress, "%s: %s is %s: not programmed", field, ip, why)
			continue
		}
		out = append(out, ip)
	}
	return out
}

// virtualServerTemplate is what every virtual server of svc shares:
// scheduler, flags (the node's, or the Service's annotations') and
// session affinity.
func virtualServerTemplate(svc *v1.Service, cfg *PlanConfig, bad badField) ipvs.VirtualServer {
	sched := serviceScheduling(svc, cfg, bad)
	vs := ipvs.VirtualServer{Scheduler: sched.scheduler, Flags: sched.flags}
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		vs.Flags |= ipvs.FlagPersistent
		vs.Timeout = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			vs.Timeout = uint32(*c.ClientIP.TimeoutSeconds)
		}
	}
	return vs
}

// portPlanner builds the PortPlan of one Service port, family by family.
type portPlanner struct {
	cfg            *PlanConfig
	fe             frontends
	tmpl           ipvs.VirtualServer
	portName       string
	k8sProto       v1.Protocol // as the EndpointSlices spell it
	proto          l4.Protocol
	port, nodePort uint16
	mark           uint32
	bad            badField
	plan           PortPlan
	// localCarrying counts local endpoints carrying external traffic
	// (every family): none means a node port drops it.
	localCarrying int
	// readyLocal collects the Service's ready local endpoints.
	readyLocal *addrSet
	// handedOut are the selections (by their first real server) already
	// given whole to a virtual server: the next one using them gets a
	// copy. A port plans at most two selections per family.
	handedOut  [4]*ipvs.RealServer
	nHandedOut int
}

func newPortPlanner(svc *v1.Service, sp v1.ServicePort, proto l4.Protocol, fe frontends, tmpl ipvs.VirtualServer, cfg *PlanConfig) portPlanner {
	name := ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: sp.Name, Protocol: sp.Protocol}
	pp := portPlanner{cfg: cfg, fe: fe, tmpl: tmpl, portName: sp.Name, k8sProto: sp.Protocol, proto: proto,
		port: uint16(sp.Port), nodePort: uint16(sp.NodePort), plan: PortPlan{Name: name}}
	pp.mark = fwmark(name, proto, pp.nodePort, cfg.masqueradeMark())
	if fe.externalLocal {
		pp.plan.HealthCheckNodePort = int(svc.Spec.HealthCheckNodePort)
	}
	return pp
}

// addrSet is a set of addresses, its map made at the first add (most
// Services have no ready local endpoint: no map for them).
type addrSet struct{ m map[netip.Addr]bool }

func (s *addrSet) add(a netip.Addr) {
	if s.m == nil {
		s.m = map[netip.Addr]bool{}
	}
	s.m[a] = true
}

// virtualServer adds a virtual server for key with the endpoints of sel.
func (pp *portPlanner) virtualServer(key ipvs.VSKey, sel epSelection) {
	s := ipvs.Service{VirtualServer: pp.tmpl}
	s.VSKey = key
	if len(sel) > 0 {
		// Each virtual server has its own (drains filter a virtual
		// server's real servers in place): the first to use a selection
		// takes it, the others a copy. Most Services have a ClusterIP
		// alone, and a copy for it was 4 MB of a first sync's garbage at
		// 10k Services.
		if pp.nHandedOut == len(pp.handedOut) || slices.Contains(pp.handedOut[:pp.nHandedOut], &sel[0]) {
			s.RealServers = slices.Clone(sel)
		} else {
			pp.handedOut[pp.nHandedOut] = &sel[0]
			pp.nHandedOut++
			s.RealServers = sel
		}
	}
	pp.plan.VirtualServers = append(pp.plan.VirtualServers, s)
}

func (pp *portPlanner) element(e nft.Element) { pp.plan.Elements = append(pp.plan.Elements, e) }

// frontend is an ip:port frontend of the port: its virtual server, its
// address on kube-ipvs0 and its element in set.
func (pp *portPlanner) frontend(ip netip.Addr, set nft.SetName, sel epSelection) {
	pp.virtualServer(ipvs.VSKey{Address: ip, Protocol: pp.proto, Port: pp.port}, sel)
	pp.element(nft.Element{Set: set, Addr: ip, Protocol: pp.proto, Port: pp.port})
	if pp.fe.nodeOwned[ip] {
		// The node's own address: IPVS takes the Service port, and the
		// node keeps the address and every other port.
		return
	}
	pp.plan.Addresses = append(pp.plan.Addresses, ip)
	pp.element(nft.Element{Set: nft.IPVSAddresses, Addr: ip})
}

// externalFrontend is an external IP or load-balancer IP frontend, with
// what externalTrafficPolicy Local adds to it.
func (pp *portPlanner) externalFrontend(ip netip.Addr, set nft.SetName, src AddressSource, sel epSelection, noLocal bool) {
	pp.frontend(ip, set, sel)
	if pp.plan.Sources == nil {
		pp.plan.Sources = map[ipvs.VSKey]AddressSource{}
	}
	k := ipvs.VSKey{Address: ip, Protocol: pp.proto, Port: pp.port}.Key()
	// A Service asking for one address as both kinds keeps the rank of
	// the stronger.
	if old, ok := pp.plan.Sources[k]; !ok || src < old {
		pp.plan.Sources[k] = src
	}
	if pp.fe.externalLocal {
		pp.element(nft.Element{Set: nft.LocalPolicyFWMarks, Addr: ip, Protocol: pp.proto, Port: pp.port, Mark: pp.mark})
	}
	if noLocal {
		pp.element(nft.Element{Set: nft.NoLocalEndpoints, Addr: ip, Protocol: pp.proto, Port: pp.port})
	}
}

// planFamily plans the port's frontends of one IP family.
func (pp *portPlanner) planFamily(ipv6 bool, eps []*epSlice) {
	family := func(ips []netip.Addr) []netip.Addr {
		var out []netip.Addr
		for _, ip := range ips {
			if ip.Is6() == ipv6 {
				out = append(out, ip)
			}
		}
		return out
	}
	cips := family(pp.fe.clusterIPs)
	if len(cips) == 0 {
		return // the Service is not of this family (single-stack)
	}
	node := pp.cfg.Node
	buf := getEndpointBuffer()
	all := endpointsForPort(*buf, eps, pp.portName, pp.k8sProto, ipv6)
	defer putEndpointBuffer(buf, all)
	local := localOnly(all, node.Name)
	cluster := selectEndpoints(all, true, node.Name, node.Zone)
	var localSel epSelection
	if pp.fe.internalLocal || pp.fe.externalLocal {
		localSel = selectEndpoints(local, false, node.Name, node.Zone)
	}
	internal := cluster
	if pp.fe.internalLocal {
		internal = localSel
		pp.plan.InternalNoLocal = pp.plan.InternalNoLocal || !carries(localSel)
	}
	external, noLocal := cluster, false
	if pp.fe.externalLocal {
		external = localSel
		noLocal = !carries(localSel)
		pp.plan.ExternalNoLocal = pp.plan.ExternalNoLocal || noLocal
		pp.localCarrying += countCarrying(localSel)
	}
	for _, e := range local {
		if e.Ready {
			pp.readyLocal.add(e.IP)
		}
		pp.element(nft.Element{Set: nft.Hairpin, Addr: e.IP, Protocol: pp.proto, Port: e.Port})
	}
	for _, ip := range cips {
		pp.frontend(ip, nft.ClusterIPs, internal)
	}
	extSet, lbSet := nft.ExternalIPs, nft.LoadBalancerIPs
	if pp.fe.externalLocal {
		extSet, lbSet = nft.ExternalIPsLocal, nft.LoadBalancerIPsLocal
	}
	externalIPs, lbIPs := family(pp.fe.externalIPs), family(pp.fe.loadBalancerIPs)
	for _, ip := range externalIPs {
		pp.externalFrontend(ip, extSet, SourceExternalIP, external, noLocal)
	}
	for _, ip := range lbIPs {
		pp.externalFrontend(ip, lbSet, SourceLoadBalancer, external, noLocal)
		pp.sourceRanges(ip, ipv6)
	}
	if pp.nodePort != 0 {
		for _, ip := range family(node.NodePortAddresses) {
			pp.virtualServer(ipvs.VSKey{Address: ip, Protocol: pp.proto, Port: pp.nodePort}, external)
		}
	}
	// Internal traffic to ETP=Local frontends: an fwmark virtual server
	// with every endpoint (see docs/architecture.md).
	if pp.fe.externalLocal && (pp.nodePort != 0 || len(externalIPs) > 0 || len(lbIPs) > 0) {
		pp.virtualServer(ipvs.VSKey{FWMark: pp.mark, IPv6: ipv6}, cluster)
	}
}

// sourceRanges restricts a load-balancer IP to the Service's
// loadBalancerSourceRanges of its family. It fails closed: when the
// Service asked for ranges and none of this family is usable, the IP
// accepts no traffic from outside. A zero-length range allows everyone,
// as in kube-proxy.
func (pp *portPlanner) sourceRanges(ip netip.Addr, ipv6 bool) {
	if !pp.fe.firewalled {
		return
	}
	var ranges []netip.Prefix
	for _, r := range pp.fe.sourceRanges {
		if r.Addr().Is6() == ipv6 {
			ranges = append(ranges, r)
		}
	}
	if slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return r.Bits() == 0 }) {
		return
	}
	pp.element(nft.Element{Set: nft.LoadBalancerFirewall, Addr: ip, Protocol: pp.proto, Port: pp.port})
	if len(ranges) == 0 {
		pp.bad(ReasonInvalidSourceRange, "loadBalancerSourceRanges: none usable for %s: it accepts no traffic from outside", ip)
	}
	allowNode := false
	for _, r := range ranges {
		pp.element(nft.Element{Set: nft.LoadBalancerSourceRanges, Addr: ip, Protocol: pp.proto, Port: pp.port, Source: r})
		for _, n := range pp.cfg.Node.IPs {
			allowNode = allowNode || r.Contains(n)
		}
	}
	// The node reaches its own kube-ipvs0 address with that address as
	// source: allow it when the node is allowed.
	if allowNode {
		pp.element(nft.Element{Set: nft.LoadBalancerSourceRanges, Addr: ip, Protocol: pp.proto, Port: pp.port,
			Source: netip.PrefixFrom(ip, ip.BitLen())})
	}
}

// finish adds the port's family-less elements (node ports, health check)
// and returns the plan; false when the port has nothing to program.
func (pp *portPlanner) finish() (PortPlan, bool) {
	plan := &pp.plan
	if len(plan.VirtualServers) == 0 {
		return PortPlan{}, false
	}
	if pp.nodePort != 0 {
		if pp.fe.externalLocal {
			pp.element(nft.Element{Set: nft.NodePortsLocal, Protocol: pp.proto, Port: pp.nodePort})
			pp.element(nft.Element{Set: nft.NodePortFWMarks, Protocol: pp.proto, Port: pp.nodePort, Mark: pp.mark})
			// A node port has no family: drop only when no family has a
			// local endpoint.
			if plan.ExternalNoLocal && pp.localCarrying == 0 {
				pp.element(nft.Element{Set: nft.NodePortsNoLocalEndpoints, Protocol: pp.proto, Port: pp.nodePort})
			}
		} else {
			pp.element(nft.Element{Set: nft.NodePorts, Protocol: pp.proto, Port: pp.nodePort})
		}
	}
	if plan.HealthCheckNodePort > 0 && plan.HealthCheckNodePort < 65536 {
		pp.element(nft.Element{Set: nft.HealthCheckNodePorts, Port: uint16(plan.HealthCheckNodePort)})
	}
	plan.Addresses = uniqueAddrs(plan.Addresses)
	return *plan, true
}

// fwmark is the firewall mark of an ETP=Local port's all-endpoints virtual
// server. It is derived from the node port and protocol, which are unique
// in the cluster, so it is stable across restarts without any stored
// state: node port << 16 | protocol << 12 | the masquerade mark, so that
// internal traffic steered by it is masqueraded (the nft table's rules
// expect the masquerade bit in every fwmark). A LoadBalancer without node
// ports gets a hash of its name below 1024 instead (node ports start at
// 30000 by default); two such hashes may collide, and the Service that
// loses the fwmark is told (claims.go).
func fwmark(name ServicePortName, proto l4.Protocol, nodePort uint16, masqueradeMark uint32) uint32 {
	p := map[l4.Protocol]uint32{l4.TCP: 1, l4.UDP: 2, l4.SCTP: 3}[proto]
	hi := uint32(nodePort)
	if hi == 0 {
		h := fnv.New32a()
		h.Write([]byte(name.String()))
		hi = 1 + h.Sum32()%1023
	}
	return hi<<16 | p<<12 | masqueradeMark
}

// FWMarkBits are the mark bits fwmark uses besides the masquerade bit:
// --iptables-masquerade-bit must lie outside them.
const FWMarkBits = 0xffff3000

// OwnsFWMark says whether mark is one fwmark could have made with this
// masquerade mark: the masquerade bit, a protocol in bits 12-13, a node
// port or hash in the high 16 bits, and nothing else. Fwmark virtual
// servers outside that space are someone else's (keepalived's): IPVS
// resyncs leave them alone.
func OwnsFWMark(masqueradeMark uint32) func(mark uint32) bool {
	if masqueradeMark == 0 {
		masqueradeMark = 1 << nft.DefaultMasqueradeBit
	}
	return func(mark uint32) bool {
		return mark&masqueradeMark != 0 && mark&^(FWMarkBits|masqueradeMark) == 0 &&
			mark>>12&3 != 0 && mark>>16 != 0
	}
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

func protocol(p v1.Protocol) (l4.Protocol, bool) {
	if p == "" {
		return l4.TCP, true // the API default
	}
	proto := l4.Protocol(p)
	return proto, proto.Known()
}

// parseIPs parses addresses as kube-proxy does (IPv4 octets with leading
// zeros are read as decimal).
func parseIPs(ss []string, field string, bad badField) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		ip, ok := netip.AddrFromSlice(netutils.ParseIPSloppy(s))
		if !ok || ip.IsUnspecified() {
			bad(ReasonInvalidIP, "%s: invalid IP %q", field, s)
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out
}

// badField reports a field left out, with the reason of its Event.
type badField func(reason, format string, args ...any)

// Reasons of FieldErrors, also the reasons of the Events that report them.
const (
	ReasonInvalidIP          = "InvalidIP"
	ReasonRefusedAddress     = "RefusedAddress"
	ReasonInvalidSourceRange = "InvalidSourceRange"
	ReasonInvalidPort        = "InvalidPort"
	ReasonFrontendConflict   = "FrontendConflict"
	// ReasonServiceTooLarge: the Service asks for more than a per-Service
	// bound allows, and is refused whole.
	ReasonServiceTooLarge = "ServiceTooLarge"
	// ReasonFailedToProgram: the kernel refused what was planned.
	ReasonFailedToProgram = "FailedToProgram"
)

// FieldError is a part of a Service that is not programmed as asked.
type FieldError struct {
	Reason  string // CamelCase, the Event's reason
	Message string // names the Service
}

func (e *FieldError) Error() string { return e.Message }

func uniqueAddrs(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}
