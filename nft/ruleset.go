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

// LocalTraffic says how traffic from pods is recognised
// (kube-proxy's --detect-local-mode): by source CIDR (ClusterCIDR and
// NodeCIDR modes) or by input interface (BridgeInterface and
// InterfaceNamePrefix modes). The zero value detects nothing.
type LocalTraffic struct {
	// PodCIDRs (ClusterCIDR / NodeCIDR modes) are the sources that are not
	// masqueraded to ClusterIPs: in ClusterCIDR mode every node's pods.
	PodCIDRs []netip.Prefix
	// NodePodCIDRs (ClusterCIDR / NodeCIDR modes) are this node's own pod
	// CIDRs (Node.Spec.PodCIDRs), the only sources whose traffic to an
	// externalTrafficPolicy Local frontend is internal (all endpoints). A
	// pod on another node that reaches this node's node port unmasqueraded
	// is external here, as in kube-proxy's IPVS mode: it must not get
	// endpoints a Local policy keeps from it. None: no short-cut.
	NodePodCIDRs []netip.Prefix
	// Interface is a bridge name, or an interface name prefix ending in "*":
	// only this node's pods are behind it.
	Interface string
}

// implemented reports whether family f detects pods at all (masquerade).
func (l LocalTraffic) implemented(f Family) bool {
	return l.Interface != "" || hasFamily(l.PodCIDRs, f)
}

// nodeImplemented reports whether family f detects this node's pods
// (the externalTrafficPolicy Local short-cut).
func (l LocalTraffic) nodeImplemented(f Family) bool {
	return l.Interface != "" || hasFamily(l.NodePodCIDRs, f)
}

func hasFamily(ps []netip.Prefix, f Family) bool {
	for _, p := range ps {
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
	name  string
	base  *baseChain // nil for a regular chain
	rules []rule
}

// baseChain is where a base chain hooks in. Policy is always accept: the
// table only drops what it decides to drop.
type baseChain struct {
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	typ      nftables.ChainType
}

func (c chainSpec) isBase() bool { return c.base != nil }

var hookNames = map[nftables.ChainHook]string{
	*nftables.ChainHookPrerouting:  "prerouting",
	*nftables.ChainHookInput:       "input",
	*nftables.ChainHookForward:     "forward",
	*nftables.ChainHookOutput:      "output",
	*nftables.ChainHookPostrouting: "postrouting",
}

// header is the base chain's first line as `nft list` prints it.
func (b baseChain) header() string {
	return fmt.Sprintf("type %s hook %s priority %s; policy accept;", b.typ, hookNames[*b.hook], b.priorityText())
}

// priorityText is a priority as nft prints it in an inet table: by name
// where nft has one for the hook (dstnat only on prerouting, srcnat only
// on postrouting), else as a number.
func (b baseChain) priorityText() string {
	p := *b.priority
	switch {
	case p == *nftables.ChainPriorityRaw:
		return "raw"
	case p == *nftables.ChainPriorityMangle:
		return "mangle"
	case p == *nftables.ChainPriorityNATDest && *b.hook == *nftables.ChainHookPrerouting:
		return "dstnat"
	case p == *nftables.ChainPriorityFilter:
		return "filter"
	case p == *nftables.ChainPrioritySecurity:
		return "security"
	case p == *nftables.ChainPriorityNATSource && *b.hook == *nftables.ChainHookPostrouting:
		return "srcnat"
	}
	return fmt.Sprint(int32(p))
}

// chains returns the table's chains and rules for cfg, in the order nft
// lists them. Their number depends only on the configuration, never on
// Services.
//
// Hook priorities matter because IPVS takes packets in its own hooks:
// LOCAL_IN at 98/99 (after filter 0, before srcnat 100) and LOCAL_OUT at
// -99/-98 (just after dstnat -100). So marks set at dstnat (-100) on
// prerouting/output are seen by IPVS and by the masquerade in postrouting,
// and the firewall at dstnat sees node-originated traffic to a
// load-balancer IP before IPVS rewrites its destination.
func (cfg Config) chains() []chainSpec {
	return []chainSpec{
		cfg.preroutingChain(), cfg.outputChain(), inputChain(), cfg.forwardChain(), postroutingChain(),
		firewallChain(), cfg.localPolicyChain(), externalChain(), cfg.markForMasqueradeChain(),
		serviceFilterChain(), cfg.masqueradingChain(),
	}
}

// eachFamily concatenates the rules fn returns for IPv4, then IPv6.
func eachFamily(fn func(f Family) []rule) []rule {
	var out []rule
	for _, f := range families {
		out = append(out, fn(f)...)
	}
	return out
}

func rules(parts ...[]part) []rule {
	out := make([]rule, len(parts))
	for i, p := range parts {
		out[i] = rule{parts: p}
	}
	return out
}

// frontendFields is the "daddr . meta l4proto . th dport" key of family f.
func frontendFields(f Family) []matchField {
	return []matchField{daddrField(f), l4protoField, dportField}
}

// inFrontendSet is "<daddr> . meta l4proto . th dport @set-vN".
func inFrontendSet(f Family, s SetName) part {
	return inSet(f, kernelSetName(s, f), false, frontendFields(f)...)
}

// preroutingChain handles traffic from the network and from local pods.
func (cfg Config) preroutingChain() chainSpec {
	c := chainSpec{name: chainPrerouting, base: &baseChain{nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, nftables.ChainTypeFilter}}
	c.rules = append(c.rules, excludeCIDRs()...)
	c.rules = append(c.rules, rules([]part{jump(chainFirewall)})...)
	// From the network, only this node's pods are internal.
	c.rules = append(c.rules, eachFamily(func(f Family) []rule {
		if !cfg.LocalTraffic.nodeImplemented(f) {
			return nil
		}
		return rules(append(cfg.nodeLocalMatch(f, false), jump(chainLocalPolicy)))
	})...)
	c.rules = append(c.rules, cfg.noLocalEndpoints()...)
	// Like kube-proxy: masquerade ClusterIP traffic that does not come
	// from a local pod, or all of it with --masquerade-all.
	c.rules = append(c.rules, eachFamily(func(f Family) []rule {
		cluster := inFrontendSet(f, ClusterIPs)
		switch {
		case cfg.MasqueradeAll:
			return rules([]part{cluster, jump(chainMarkMasq)})
		case cfg.LocalTraffic.implemented(f):
			return rules(slices.Concat([]part{cluster}, cfg.localMatch(f, true), []part{jump(chainMarkMasq)}))
		}
		return nil
	})...)
	return c.append(rules([]part{jump(chainExternal)})...)
}

// outputChain handles the node's own traffic: always internal, and always
// masqueraded to ClusterIPs, since its source may be a VIP on kube-ipvs0.
// Output at -100 runs before IPVS rewrites the destination at -99, so
// source ranges apply to the node too.
func (cfg Config) outputChain() chainSpec {
	c := chainSpec{name: chainOutput, base: &baseChain{nftables.ChainHookOutput, nftables.ChainPriorityNATDest, nftables.ChainTypeFilter}}
	c.rules = append(c.rules, excludeCIDRs()...)
	c.rules = append(c.rules, rules([]part{jump(chainFirewall)}, []part{jump(chainLocalPolicy)})...)
	c.rules = append(c.rules, eachFamily(func(f Family) []rule {
		return rules([]part{inFrontendSet(f, ClusterIPs), jump(chainMarkMasq)})
	})...)
	return c.append(rules([]part{jump(chainExternal)})...)
}

func excludeCIDRs() []rule {
	return eachFamily(func(f Family) []rule {
		return []rule{{parts: []part{inSet(f, kernelSetName(setExcludeCIDRs, f), false, daddrField(f)), ret}, comment: "ipvs-exclude-cidrs"}}
	})
}

// noLocalEndpoints drops external traffic to externalTrafficPolicy Local
// frontends without a local endpoint, as kube-proxy's iptables and
// nftables modes do (the IPVS virtual server would refuse it instead). This
// node's pods took the fwmark path before.
func (cfg Config) noLocalEndpoints() []rule {
	const comment = "externalTrafficPolicy Local, no local endpoint"
	notLocal := func(f Family) []part {
		if cfg.LocalTraffic.nodeImplemented(f) {
			return cfg.nodeLocalMatch(f, true)
		}
		return nil
	}
	out := eachFamily(func(f Family) []rule {
		return []rule{{parts: slices.Concat(notLocal(f), []part{inFrontendSet(f, NoLocalEndpoints), counter, drop}), comment: comment}}
	})
	// A node port is served on the node port addresses only, never on
	// another address the kernel calls local (a ClusterIP, an external
	// or load-balancer IP on kube-ipvs0): a tenant's node port must not
	// take another Service's port on those.
	return append(out, eachFamily(func(f Family) []rule {
		return []rule{{parts: slices.Concat(notLocal(f), []part{toNodePortAddress(f),
			inSet(0, NodePortsNoLocalEndpoints.kernel(), false, l4protoField, dportField), counter, drop}), comment: comment}}
	})...)
}

// toNodePortAddress matches traffic to one of the node port addresses of
// family f (kube-proxy's `-m addrtype --dst-type LOCAL` narrowed to
// --nodeport-addresses): the node's own addresses, never kube-ipvs0's.
func toNodePortAddress(f Family) part {
	return inSet(f, kernelSetName(NodePortAddresses, f), false, daddrField(f))
}

// inputChain: KUBE-IPVS-FILTER runs before IPVS takes the packet at 98.
func inputChain() chainSpec {
	return chainSpec{name: chainInput, base: &baseChain{nftables.ChainHookInput, nftables.ChainPriorityFilter, nftables.ChainTypeFilter},
		rules: rules([]part{jump(chainServiceFilter)})}
}

// forwardChain is KUBE-FORWARD.
func (cfg Config) forwardChain() chainSpec {
	c := chainSpec{name: chainForward, base: &baseChain{nftables.ChainHookForward, nftables.ChainPriorityFilter, nftables.ChainTypeFilter}}
	if cfg.DropInvalid {
		c.rules = rules([]part{ctState("invalid", expr.CtStateBitINVALID), counter, drop})
	}
	return c.append(rules(
		[]part{markBits(cfg.MasqueradeMark, cfg.MasqueradeMark), accept},
		[]part{ctState("established,related", expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept},
	)...)
}

// postroutingChain is KUBE-POSTROUTING's hook.
func postroutingChain() chainSpec {
	return chainSpec{name: chainPostrouting, base: &baseChain{nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, nftables.ChainTypeNAT},
		rules: rules([]part{jump(chainMasquerading)})}
}

// firewallChain enforces loadBalancerSourceRanges (KUBE-LOAD-BALANCER-FW).
func firewallChain() chainSpec {
	return chainSpec{name: chainFirewall, rules: eachFamily(func(f Family) []rule {
		return []rule{{parts: []part{
			inFrontendSet(f, LoadBalancerFirewall),
			inSet(f, kernelSetName(LoadBalancerSourceRanges, f), true, append(frontendFields(f), saddrField(f))...),
			counter, drop,
		}, comment: "loadBalancerSourceRanges"}}
	})}
}

// localPolicyChain sends internal traffic to externalTrafficPolicy Local
// frontends to the all-endpoints fwmark virtual server.
//
// Marks are shared with others (a CNI, the kubelet, firewalls), so nftvs
// changes only its own bits: the masquerade bit is set with an OR and
// cleared with an XOR, keeping every other bit. The fwmark is the
// exception, because IPVS looks up fwmark virtual servers by the whole
// skb->mark: the mark must equal the fwmark exactly. So the fwmark replaces
// the mark, but only on the packets IPVS schedules: the first of a
// connection (ct state new, or untracked). Later packets find their IPVS
// connection by address and port, keep their mark, and with it the
// bits of others; masquerade is decided on the first packet too. A foreign
// bit set before this chain is lost only on the first packet of internal
// connections to externalTrafficPolicy Local frontends. Map values must
// carry the masquerade bit (SetElements refuses others), so that this
// traffic is masqueraded like externalTrafficPolicy Cluster traffic.
func (cfg Config) localPolicyChain() chainSpec {
	first := ctState("new,untracked", expr.CtStateBitNEW|expr.CtStateBitUNTRACKED)
	c := chainSpec{name: chainLocalPolicy, rules: eachFamily(func(f Family) []rule {
		return rules([]part{first, setMarkFromMap(f, kernelSetName(LocalPolicyFWMarks, f), frontendFields(f)...)})
	})}
	return c.append(eachFamily(func(f Family) []rule {
		return rules([]part{first, toNodePortAddress(f), setMarkFromMap(0, NodePortFWMarks.kernel(), l4protoField, dportField)})
	})...)
}

// externalChain masquerades externalTrafficPolicy Cluster frontends
// (KUBE-EXTERNAL-IP, KUBE-LOAD-BALANCER, KUBE-NODE-PORT-*).
func externalChain() chainSpec {
	c := chainSpec{name: chainExternal, rules: eachFamily(func(f Family) []rule {
		return rules(
			[]part{inFrontendSet(f, ExternalIPs), jump(chainMarkMasq)},
			[]part{inFrontendSet(f, LoadBalancerIPs), jump(chainMarkMasq)},
		)
	})}
	return c.append(eachFamily(func(f Family) []rule {
		return rules([]part{toNodePortAddress(f), inSet(0, NodePorts.kernel(), false, l4protoField, dportField), jump(chainMarkMasq)})
	})...)
}

// markForMasqueradeChain is KUBE-MARK-MASQ.
func (cfg Config) markForMasqueradeChain() chainSpec {
	return chainSpec{name: chainMarkMasq, rules: rules([]part{markOr(cfg.MasqueradeMark)})}
}

// serviceFilterChain is KUBE-IPVS-FILTER: a VIP answers only on its
// Service ports.
func serviceFilterChain() chainSpec {
	c := chainSpec{name: chainServiceFilter, rules: rules([]part{tcpDport(HealthCheckNodePorts.kernel()), accept})}
	c.rules = append(c.rules, eachFamily(func(f Family) []rule {
		var out []rule
		for _, s := range []SetName{ClusterIPs, ExternalIPs, ExternalIPsLocal, LoadBalancerIPs, LoadBalancerIPsLocal} {
			out = append(out, rule{parts: []part{inFrontendSet(f, s), accept}})
		}
		return append(out, rule{parts: []part{
			ctState("new", expr.CtStateBitNEW),
			inSet(f, kernelSetName(IPVSAddresses, f), false, daddrField(f)),
			counter, reject,
		}, comment: "not a Service port"})
	})...)
	return c
}

// masqueradingChain is KUBE-POSTROUTING: hairpin, then what carries the
// mark, fully random.
func (cfg Config) masqueradingChain() chainSpec {
	c := chainSpec{name: chainMasquerading, rules: eachFamily(func(f Family) []rule {
		return []rule{{parts: []part{
			inSet(f, kernelSetName(Hairpin, f), false, saddrField(f), l4protoField, dportField, daddrField(f)),
			masquerade,
		}, comment: "hairpin"}}
	})}
	return c.append(rules(
		[]part{markBits(cfg.MasqueradeMark, 0), ret},
		[]part{markXor(cfg.MasqueradeMark)},
		[]part{counter, masqueradeFullyRandom},
	)...)
}

func (c chainSpec) append(rs ...rule) chainSpec {
	c.rules = append(c.rules, rs...)
	return c
}

// localMatch matches traffic from pods (or, inverted, traffic that is
// not): the sources not masqueraded to ClusterIPs.
func (cfg Config) localMatch(f Family, invert bool) []part {
	return cfg.podMatch(f, setPodCIDRs, invert)
}

// nodeLocalMatch matches traffic from this node's own pods (or, inverted,
// traffic that is not): the sources internal to externalTrafficPolicy
// Local frontends.
func (cfg Config) nodeLocalMatch(f Family, invert bool) []part {
	return cfg.podMatch(f, setNodePodCIDRs, invert)
}

// podMatch is the pod interface, or else the source in the CIDR set cidrs.
func (cfg Config) podMatch(f Family, cidrs SetName, invert bool) []part {
	if cfg.LocalTraffic.Interface != "" {
		return []part{iifname(cfg.LocalTraffic.Interface, invert)}
	}
	return []part{inSet(f, kernelSetName(cidrs, f), invert, saddrField(f))}
}

// kernel is the kernel name of a family-less set.
func (s SetName) kernel() string { return kernelSetName(s, 0) }

// Validate reports configuration the kernel would refuse.
func (cfg Config) Validate() error {
	if cfg.MasqueradeMark == 0 || cfg.MasqueradeMark&(cfg.MasqueradeMark-1) != 0 {
		return fmt.Errorf("masquerade mark %#x must be a single bit", cfg.MasqueradeMark)
	}
	for _, p := range slices.Concat(cfg.ExcludeCIDRs, cfg.LocalTraffic.PodCIDRs, cfg.LocalTraffic.NodePodCIDRs) {
		if !p.IsValid() {
			return fmt.Errorf("invalid CIDR %v", p)
		}
	}
	if len(cfg.LocalTraffic.Interface) > 15 {
		return fmt.Errorf("interface name %q is longer than 15 bytes", cfg.LocalTraffic.Interface)
	}
	return nil
}

// header is the base chain line nft prints, "" for a regular chain.
func (c chainSpec) header() string {
	if c.base == nil {
		return ""
	}
	return c.base.header()
}
