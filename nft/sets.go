package nft

import (
	"net/netip"
	"slices"

	"github.com/google/nftables"
)

type field int

const (
	fieldAddr field = iota
	fieldProto
	fieldPort
	fieldSource
	fieldAddr2 // a second copy of Addr (hairpin: source == destination)
)

// setSpec describes one set or map of the table (per family, when keyed by
// address). It is the table's only description of its sets: the netlink
// backend creates them from it, and render prints them from it.
type setSpec struct {
	name      SetName
	fields    []field
	perFamily bool
	isMap     bool // value: a packet mark
	interval  bool
	comment   string
	// fromConfig, for configuration sets, gives their CIDRs: they hold no
	// Service data and are written whole on a rebuild.
	fromConfig func(Config) []netip.Prefix
}

var (
	addrKey  = []field{fieldAddr}
	frontKey = []field{fieldAddr, fieldProto, fieldPort}
	portKey  = []field{fieldProto, fieldPort}
)

// tableSets lists every set and map of the table in the order they are
// created and printed: the per-Service ones by name, then the
// configuration ones.
var tableSets = []setSpec{
	{name: ClusterIPs, fields: frontKey, perFamily: true, comment: "ClusterIP . protocol . port"},
	{name: ExternalIPs, fields: frontKey, perFamily: true, comment: "externalIPs, externalTrafficPolicy Cluster"},
	{name: ExternalIPsLocal, fields: frontKey, perFamily: true, comment: "externalIPs, externalTrafficPolicy Local"},
	{name: Hairpin, fields: []field{fieldAddr, fieldProto, fieldPort, fieldAddr2}, perFamily: true, comment: "endpoint . protocol . port . endpoint: pods reaching themselves"},
	{name: HealthCheckNodePorts, fields: []field{fieldPort}, comment: "health check node ports"},
	{name: IPVSAddresses, fields: addrKey, perFamily: true, comment: "addresses on kube-ipvs0"},
	{name: LoadBalancerFirewall, fields: frontKey, perFamily: true, comment: "LoadBalancers with loadBalancerSourceRanges"},
	{name: LoadBalancerIPs, fields: frontKey, perFamily: true, comment: "LoadBalancer ingress IPs, externalTrafficPolicy Cluster"},
	{name: LoadBalancerIPsLocal, fields: frontKey, perFamily: true, comment: "LoadBalancer ingress IPs, externalTrafficPolicy Local"},
	{name: LoadBalancerSourceRanges, fields: []field{fieldAddr, fieldProto, fieldPort, fieldSource}, perFamily: true, interval: true, comment: "sources allowed through the LoadBalancer firewall"},
	{name: LocalPolicyFWMarks, fields: frontKey, perFamily: true, isMap: true, comment: "internal traffic to externalTrafficPolicy Local frontends: fwmark of the all-endpoints virtual server"},
	{name: NoLocalEndpoints, fields: frontKey, perFamily: true, comment: "externalTrafficPolicy Local frontends without a local endpoint"},
	{name: NodePortAddresses, fields: addrKey, perFamily: true, comment: "addresses node ports are served on (--nodeport-addresses)"},
	{name: NodePortFWMarks, fields: portKey, isMap: true, comment: "internal traffic to externalTrafficPolicy Local node ports: fwmark"},
	{name: NodePorts, fields: portKey, comment: "node ports, externalTrafficPolicy Cluster"},
	{name: NodePortsLocal, fields: portKey, comment: "node ports, externalTrafficPolicy Local"},
	{name: NodePortsNoLocalEndpoints, fields: portKey, comment: "externalTrafficPolicy Local node ports without a local endpoint"},

	{name: setExcludeCIDRs, fields: addrKey, perFamily: true, interval: true, comment: "--ipvs-exclude-cidrs",
		fromConfig: func(c Config) []netip.Prefix { return c.ExcludeCIDRs }},
	{name: setPodCIDRs, fields: addrKey, perFamily: true, interval: true, comment: "local traffic (--detect-local-mode)",
		fromConfig: func(c Config) []netip.Prefix { return c.LocalTraffic.PodCIDRs }},
	{name: setNodePodCIDRs, fields: addrKey, perFamily: true, interval: true, comment: "this node's pods: internal to externalTrafficPolicy Local",
		fromConfig: func(c Config) []netip.Prefix { return c.LocalTraffic.NodePodCIDRs }},
}

// Configuration sets: interval sets filled from Config, not by owners.
const (
	setExcludeCIDRs SetName = "exclude-cidrs"
	setPodCIDRs     SetName = "pod-cidrs"
	setNodePodCIDRs SetName = "node-pod-cidrs"
)

// setSpecs indexes the per-Service sets, the only ones elements may name.
var setSpecs = func() map[SetName]setSpec {
	m := map[SetName]setSpec{}
	for _, s := range tableSets {
		if s.fromConfig == nil {
			m[s.name] = s
		}
	}
	return m
}()

// kernelSet is one set of the table as the kernel holds it: a spec and a
// family (0 for sets without addresses).
type kernelSet struct {
	setSpec
	family Family
}

func (s kernelSet) kernelName() string { return kernelSetName(s.name, s.family) }

// kernelSets lists every kernel set of the table, in tableSets order.
func kernelSets() []kernelSet {
	var out []kernelSet
	for _, s := range tableSets {
		if !s.perFamily {
			out = append(out, kernelSet{s, 0})
			continue
		}
		for _, f := range families {
			out = append(out, kernelSet{s, f})
		}
	}
	return out
}

// keyType returns the key type of a set as nftables knows it.
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

// configRanges returns the merged ranges of a configuration set.
func (s kernelSet) configRanges(cfg Config) []addrRange {
	return mergePrefixes(s.fromConfig(cfg), s.family)
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
