package nft

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Family is an address family of the table's per-family sets.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

var families = []Family{IPv4, IPv6}

// DefaultTableName is the name of nftvs's inet table.
const DefaultTableName = "nftvs"

// DefaultMasqueradeBit is kube-proxy's --iptables-masquerade-bit default.
const DefaultMasqueradeBit = 14

// LocalTraffic says how traffic from this node's pods is recognised
// (kube-proxy's --detect-local-mode): by source CIDR (ClusterCIDR and
// NodeCIDR modes) or by input interface (BridgeInterface and
// InterfaceNamePrefix modes). The zero value detects nothing.
type LocalTraffic struct {
	PodCIDRs []netip.Prefix // ClusterCIDR / NodeCIDR modes
	// Interface is a bridge name, or an interface name prefix ending in "*".
	Interface string
}

func (l LocalTraffic) implemented(f Family) bool {
	if l.Interface != "" {
		return true
	}
	for _, p := range l.PodCIDRs {
		if p.Addr().Is4() == (f == IPv4) {
			return true
		}
	}
	return false
}

// Config shapes the fixed part of the table: chains and rules. Changing it
// needs a full sync.
type Config struct {
	TableName string
	// MasqueradeMark is the packet mark bit asking for masquerade
	// (1 << --iptables-masquerade-bit).
	MasqueradeMark uint32
	// MasqueradeAll masquerades all traffic to ClusterIPs (--masquerade-all).
	MasqueradeAll bool
	LocalTraffic  LocalTraffic
	// ExcludeCIDRs (--ipvs-exclude-cidrs): traffic to these addresses is
	// left alone by every rule.
	ExcludeCIDRs []netip.Prefix
	// DropInvalid drops forwarded packets of conntrack state invalid, as
	// kube-proxy does unless --conntrack-tcp-be-liberal is set.
	DropInvalid bool
}

func (c *Config) defaults() {
	if c.TableName == "" {
		c.TableName = DefaultTableName
	}
	if c.MasqueradeMark == 0 {
		c.MasqueradeMark = 1 << DefaultMasqueradeBit
	}
}

type field int

const (
	fieldAddr field = iota
	fieldProto
	fieldPort
	fieldSource
	fieldAddr2 // a second copy of Addr (hairpin: source == destination)
)

type setSpec struct {
	fields    []field
	perFamily bool
	isMap     bool
	interval  bool
	comment   string
}

var setSpecs = map[SetName]setSpec{
	ClusterIPs:                {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, comment: "ClusterIP . protocol . port"},
	ExternalIPs:               {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, comment: "externalIPs, externalTrafficPolicy Cluster"},
	ExternalIPsLocal:          {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, comment: "externalIPs, externalTrafficPolicy Local"},
	LoadBalancerIPs:           {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, comment: "LoadBalancer ingress IPs, externalTrafficPolicy Cluster"},
	LoadBalancerIPsLocal:      {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, comment: "LoadBalancer ingress IPs, externalTrafficPolicy Local"},
	LoadBalancerFirewall:      {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, comment: "LoadBalancers with loadBalancerSourceRanges"},
	LoadBalancerSourceRanges:  {fields: []field{fieldAddr, fieldProto, fieldPort, fieldSource}, perFamily: true, interval: true, comment: "sources allowed through the LoadBalancer firewall"},
	NodePorts:                 {fields: []field{fieldProto, fieldPort}, comment: "node ports, externalTrafficPolicy Cluster"},
	NodePortsLocal:            {fields: []field{fieldProto, fieldPort}, comment: "node ports, externalTrafficPolicy Local"},
	Hairpin:                   {fields: []field{fieldAddr, fieldProto, fieldPort, fieldAddr2}, perFamily: true, comment: "endpoint . protocol . port . endpoint: pods reaching themselves"},
	HealthCheckNodePorts:      {fields: []field{fieldPort}, comment: "health check node ports"},
	IPVSAddresses:             {fields: []field{fieldAddr}, perFamily: true, comment: "addresses on kube-ipvs0"},
	LocalPolicyFWMarks:        {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, isMap: true, comment: "internal traffic to externalTrafficPolicy Local frontends: fwmark of the all-endpoints virtual server"},
	NodePortFWMarks:           {fields: []field{fieldProto, fieldPort}, isMap: true, comment: "internal traffic to externalTrafficPolicy Local node ports: fwmark"},
	NoLocalEndpoints:          {fields: []field{fieldAddr, fieldProto, fieldPort}, perFamily: true, comment: "externalTrafficPolicy Local frontends without a local endpoint"},
	NodePortsNoLocalEndpoints: {fields: []field{fieldProto, fieldPort}, comment: "externalTrafficPolicy Local node ports without a local endpoint"},
}

// Sets holding configuration rather than Service data: interval sets
// rebuilt whole on a full sync.
const (
	setExcludeCIDRs = "exclude-cidrs"
	setPodCIDRs     = "pod-cidrs"
)

// kernelSetType returns the key type of a set as nftables knows it.
func (s setSpec) keyType(f Family) nftables.SetDatatype {
	addr := nftables.TypeIPAddr
	if f == IPv6 {
		addr = nftables.TypeIP6Addr
	}
	var types []nftables.SetDatatype
	for _, fl := range s.fields {
		switch fl {
		case fieldAddr, fieldAddr2, fieldSource:
			types = append(types, addr)
		case fieldProto:
			types = append(types, nftables.TypeInetProto)
		case fieldPort:
			types = append(types, nftables.TypeInetService)
		}
	}
	if len(types) == 1 {
		return types[0]
	}
	return nftables.MustConcatSetType(types...)
}

// typeText is the set's type as `nft list` prints it.
func (s setSpec) typeText(f Family) string {
	t := s.keyType(f).Name
	if s.isMap {
		t += " : mark"
	}
	return t
}

// Chain names. Base chains are named after their hook.
const (
	chainPrerouting    = "prerouting"
	chainOutput        = "output"
	chainInput         = "input"
	chainForward       = "forward"
	chainPostrouting   = "postrouting"
	chainFirewall      = "firewall"
	chainLocalPolicy   = "local-policy"
	chainExternal      = "external"
	chainMarkMasq      = "mark-for-masquerade"
	chainMasquerading  = "masquerading"
	chainServiceFilter = "service-filter"
)

type chainSpec struct {
	name     string
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	typ      nftables.ChainType
	header   string // the base chain line nft prints
	rules    []rule
}

func (c chainSpec) isBase() bool { return c.hook != nil }

// chains returns the table's chains and rules for cfg. Their number depends
// only on the configuration, never on Services.
//
// Hook priorities matter because IPVS takes packets in its own hooks:
// LOCAL_IN at 98/99 (after filter 0, before srcnat 100) and LOCAL_OUT at
// -99/-98 (just after dstnat -100). So marks set at dstnat (-100) on
// prerouting/output are seen by IPVS and by the masquerade in postrouting,
// and the firewall at dstnat sees node-originated traffic to a
// load-balancer IP before IPVS rewrites its destination.
func (cfg Config) chains() []chainSpec {
	masq := cfg.MasqueradeMark

	firewall := chainSpec{name: chainFirewall}
	localPolicy := chainSpec{name: chainLocalPolicy}
	external := chainSpec{name: chainExternal}
	for _, f := range families {
		sv := func(s SetName) string { return kernelSetName(s, f) }
		svc := []matchField{daddrField(f), l4protoField, dportField}
		firewall.rules = append(firewall.rules, rule{parts: []part{
			inSet(f, sv(LoadBalancerFirewall), false, svc...),
			inSet(f, sv(LoadBalancerSourceRanges), true, daddrField(f), l4protoField, dportField, saddrField(f)),
			counter, drop,
		}, comment: "loadBalancerSourceRanges"})
		localPolicy.rules = append(localPolicy.rules, rule{parts: []part{
			setMarkFromMap(f, sv(LocalPolicyFWMarks), svc...),
		}})
		external.rules = append(external.rules,
			rule{parts: []part{inSet(f, sv(ExternalIPs), false, svc...), jump(chainMarkMasq)}},
			rule{parts: []part{inSet(f, sv(LoadBalancerIPs), false, svc...), jump(chainMarkMasq)}},
		)
	}
	localPolicy.rules = append(localPolicy.rules, rule{parts: []part{
		fibDaddrLocal, setMarkFromMap(0, NodePortFWMarks.kernel(), l4protoField, dportField),
	}})
	external.rules = append(external.rules, rule{parts: []part{
		fibDaddrLocal, inSet(0, NodePorts.kernel(), false, l4protoField, dportField), jump(chainMarkMasq),
	}})

	prerouting := chainSpec{name: chainPrerouting, hook: nftables.ChainHookPrerouting,
		priority: nftables.ChainPriorityNATDest, typ: nftables.ChainTypeFilter,
		header: "type filter hook prerouting priority dstnat; policy accept;"}
	output := chainSpec{name: chainOutput, hook: nftables.ChainHookOutput,
		priority: nftables.ChainPriorityNATDest, typ: nftables.ChainTypeFilter,
		header: "type filter hook output priority -100; policy accept;"}
	for _, c := range []*chainSpec{&prerouting, &output} {
		for _, f := range families {
			c.rules = append(c.rules, rule{parts: []part{
				inSet(f, kernelSetName(setExcludeCIDRs, f), false, daddrField(f)), ret,
			}, comment: "ipvs-exclude-cidrs"})
		}
		c.rules = append(c.rules, rule{parts: []part{jump(chainFirewall)}})
	}
	// Node-originated traffic is always internal; from the network only
	// this node's pods are.
	output.rules = append(output.rules, rule{parts: []part{jump(chainLocalPolicy)}})
	for _, f := range families {
		if cfg.LocalTraffic.implemented(f) {
			prerouting.rules = append(prerouting.rules, rule{parts: append(cfg.localMatch(f, false), jump(chainLocalPolicy))})
		}
	}
	// externalTrafficPolicy Local with no local endpoint: traffic from
	// outside is dropped, not refused (kube-proxy's iptables and nftables
	// modes do the same). This node's pods took the fwmark path above.
	for _, f := range families {
		var notLocal []part
		if cfg.LocalTraffic.implemented(f) {
			notLocal = cfg.localMatch(f, true)
		}
		prerouting.rules = append(prerouting.rules, rule{parts: append(append(notLocal,
			inSet(f, kernelSetName(NoLocalEndpoints, f), false, daddrField(f), l4protoField, dportField)), counter, drop),
			comment: "externalTrafficPolicy Local, no local endpoint"})
	}
	// A node port has no family: one rule per family whose local traffic
	// is detected by source address, else one rule.
	noLocalNodePort := func(notLocal []part) rule {
		return rule{parts: append(append(notLocal, fibDaddrLocal,
			inSet(0, NodePortsNoLocalEndpoints.kernel(), false, l4protoField, dportField)), counter, drop),
			comment: "externalTrafficPolicy Local, no local endpoint"}
	}
	switch {
	case cfg.LocalTraffic.Interface != "":
		prerouting.rules = append(prerouting.rules, noLocalNodePort(cfg.localMatch(IPv4, true)))
	case cfg.LocalTraffic.implemented(IPv4) || cfg.LocalTraffic.implemented(IPv6):
		for _, f := range families {
			if cfg.LocalTraffic.implemented(f) {
				prerouting.rules = append(prerouting.rules, noLocalNodePort(cfg.localMatch(f, true)))
			}
		}
	default:
		prerouting.rules = append(prerouting.rules, noLocalNodePort(nil))
	}
	for _, f := range families {
		svc := []matchField{daddrField(f), l4protoField, dportField}
		cluster := inSet(f, kernelSetName(ClusterIPs, f), false, svc...)
		// Like kube-proxy: masquerade ClusterIP traffic that does not come
		// from a local pod, or all of it with --masquerade-all.
		switch {
		case cfg.MasqueradeAll:
			prerouting.rules = append(prerouting.rules, rule{parts: []part{cluster, jump(chainMarkMasq)}})
		case cfg.LocalTraffic.implemented(f):
			prerouting.rules = append(prerouting.rules, rule{parts: append([]part{cluster}, append(cfg.localMatch(f, true), jump(chainMarkMasq))...)})
		}
		// The node's own traffic to a ClusterIP may leave with a VIP as
		// source (kube-ipvs0 holds it): always masquerade it.
		output.rules = append(output.rules, rule{parts: []part{cluster, jump(chainMarkMasq)}})
	}
	prerouting.rules = append(prerouting.rules, rule{parts: []part{jump(chainExternal)}})
	output.rules = append(output.rules, rule{parts: []part{jump(chainExternal)}})

	markMasq := chainSpec{name: chainMarkMasq, rules: []rule{{parts: []part{markOr(masq)}}}}

	// KUBE-IPVS-FILTER: a VIP answers only on its Service ports.
	serviceFilter := chainSpec{name: chainServiceFilter}
	serviceFilter.rules = append(serviceFilter.rules, rule{parts: []part{
		tcpDport(HealthCheckNodePorts.kernel()), accept,
	}})
	for _, f := range families {
		svc := []matchField{daddrField(f), l4protoField, dportField}
		for _, s := range []SetName{ClusterIPs, ExternalIPs, ExternalIPsLocal, LoadBalancerIPs, LoadBalancerIPsLocal} {
			serviceFilter.rules = append(serviceFilter.rules, rule{parts: []part{inSet(f, kernelSetName(s, f), false, svc...), accept}})
		}
		serviceFilter.rules = append(serviceFilter.rules, rule{parts: []part{
			ctState("new", expr.CtStateBitNEW),
			inSet(f, kernelSetName(IPVSAddresses, f), false, daddrField(f)),
			counter, reject,
		}, comment: "not a Service port"})
	}
	input := chainSpec{name: chainInput, hook: nftables.ChainHookInput,
		priority: nftables.ChainPriorityFilter, typ: nftables.ChainTypeFilter,
		header: "type filter hook input priority filter; policy accept;",
		rules:  []rule{{parts: []part{jump(chainServiceFilter)}}}}

	// KUBE-FORWARD.
	forward := chainSpec{name: chainForward, hook: nftables.ChainHookForward,
		priority: nftables.ChainPriorityFilter, typ: nftables.ChainTypeFilter,
		header: "type filter hook forward priority filter; policy accept;"}
	if cfg.DropInvalid {
		forward.rules = append(forward.rules, rule{parts: []part{ctState("invalid", expr.CtStateBitINVALID), counter, drop}})
	}
	forward.rules = append(forward.rules,
		rule{parts: []part{markBits(masq, masq), accept}},
		rule{parts: []part{ctState("established,related", expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept}},
	)

	// KUBE-POSTROUTING.
	masquerading := chainSpec{name: chainMasquerading}
	for _, f := range families {
		masquerading.rules = append(masquerading.rules, rule{parts: []part{
			inSet(f, kernelSetName(Hairpin, f), false, saddrField(f), l4protoField, dportField, daddrField(f)),
			masquerade,
		}, comment: "hairpin"})
	}
	masquerading.rules = append(masquerading.rules,
		rule{parts: []part{markBits(masq, 0), ret}},
		rule{parts: []part{markXor(masq)}},
		rule{parts: []part{counter, masqueradeFullyRandom}},
	)
	postrouting := chainSpec{name: chainPostrouting, hook: nftables.ChainHookPostrouting,
		priority: nftables.ChainPriorityNATSource, typ: nftables.ChainTypeNAT,
		header: "type nat hook postrouting priority srcnat; policy accept;",
		rules:  []rule{{parts: []part{jump(chainMasquerading)}}}}

	return []chainSpec{prerouting, output, input, forward, postrouting,
		firewall, localPolicy, external, markMasq, serviceFilter, masquerading}
}

// localMatch matches traffic from this node's pods (or, inverted, traffic
// that is not).
func (cfg Config) localMatch(f Family, invert bool) []part {
	if cfg.LocalTraffic.Interface != "" {
		return []part{iifname(cfg.LocalTraffic.Interface, invert)}
	}
	return []part{inSet(f, kernelSetName(setPodCIDRs, f), invert, saddrField(f))}
}

// kernel is the kernel name of a family-less set.
func (s SetName) kernel() string { return kernelSetName(s, 0) }

// Validate reports configuration the kernel would refuse.
func (cfg Config) Validate() error {
	if cfg.MasqueradeMark == 0 || cfg.MasqueradeMark&(cfg.MasqueradeMark-1) != 0 {
		return fmt.Errorf("masquerade mark %#x must be a single bit", cfg.MasqueradeMark)
	}
	for _, p := range append(append([]netip.Prefix{}, cfg.ExcludeCIDRs...), cfg.LocalTraffic.PodCIDRs...) {
		if !p.IsValid() {
			return fmt.Errorf("invalid CIDR %v", p)
		}
	}
	if len(cfg.LocalTraffic.Interface) > 15 {
		return fmt.Errorf("interface name %q is longer than 15 bytes", cfg.LocalTraffic.Interface)
	}
	return nil
}

// sortedSetNames lists the per-Service sets in a stable order.
func sortedSetNames() []SetName {
	names := make([]SetName, 0, len(setSpecs))
	for n := range setSpecs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
