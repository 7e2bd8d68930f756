package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	netutils "k8s.io/utils/net"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

// What the validated configuration and the node's facts mean for each
// layer: Resolve, once per run, at start.

// Addresses are the configuration's addresses and CIDRs, parsed once, by
// validation (Complete).
type Addresses struct {
	// ExcludeCIDRs are --ipvs-exclude-cidrs.
	ExcludeCIDRs []netip.Prefix
	// NodePortCIDRs are --nodeport-addresses, unless NodePortPrimary
	// ("primary": the node's IPs); neither means every local address.
	NodePortCIDRs   []netip.Prefix
	NodePortPrimary bool
	// ClusterCIDRs are the CIDRs of --cluster-cidr that parse (checked
	// only with detect-local-mode ClusterCIDR, as kube-proxy does).
	ClusterCIDRs []netip.Prefix
	// BindAddress is --bind-address unless it is 0.0.0.0 or :: (then
	// invalid): kube-proxy takes it for the node's primary IP.
	BindAddress netip.Addr
}

// NodeFacts are what nftvs learns about its node at start.
type NodeFacts struct {
	Name string
	// Node is the Node as read at start; nil when it was not found.
	Node *v1.Node
	// IPv6 says the kernel has IPv6 and it is not disabled.
	IPv6 bool
	// APIServer are the API server's addresses, which no Service may
	// claim.
	APIServer []netip.Addr
}

// Resolved is the configuration of every layer on this node.
type Resolved struct {
	// Families are the IP families proxied, primary first.
	Families []v1.IPFamily
	// UsesIPv6 says the cluster uses IPv6 (the node has an IPv6 address,
	// or --bind-address, a --cluster-cidr or a podCIDR is IPv6).
	UsesIPv6 bool
	// NodePorts chooses the node port addresses among the host's.
	NodePorts NodePortAddresses
	// NFT is the nftables table's configuration.
	NFT nft.Config

	cfg  *Config
	node NodeFacts
}

// Runtime is what the proxier reads while it runs, and what the kernel
// offers (known once the kernel is set up).
type Runtime struct {
	// Schedulers are the IPVS schedulers the kernel offers.
	Schedulers []string
	// HostAddresses lists the addresses of the node's links.
	HostAddresses func() ([]InterfaceAddress, error)
	// Warn reports a part of a Service not programmed as asked.
	Warn func(service types.NamespacedName, reason, message string)
}

// Resolve is kube-proxy's detectNodeIPs and platformCheckSupported, and
// what they mean for the nftables table and the node ports: the node's
// IPs, the families proxied (an IPv6 primary on a kernel without IPv6 is
// an error), local traffic detection and node port addresses. It logs
// what kube-proxy logs at that point.
func (c *Config) Resolve(n NodeFacts) (*Resolved, error) {
	hostIPs := NodeHostIPs(n.Node)
	if len(hostIPs) > 0 {
		klog.InfoS("Successfully retrieved NodeIPs", "NodeIPs", hostIPs)
	}
	primaryIPv6, ip4, ip6 := detectNodeIPs(hostIPs, c.BindAddress)
	if primaryIPv6 && ip6.IsLoopback() || !primaryIPv6 && ip4.IsLoopback() {
		klog.InfoS("Can't determine this node's IP, assuming loopback; if this is incorrect, please set the --bind-address flag")
	}
	r := &Resolved{cfg: c, node: n, Families: []v1.IPFamily{v1.IPv4Protocol}}
	if primaryIPv6 && !n.IPv6 {
		return nil, errors.New("no support for primary IP family IPv6 (IPv6 is disabled in this kernel)")
	}
	if n.IPv6 {
		r.Families = append(r.Families, v1.IPv6Protocol)
	}
	if primaryIPv6 {
		slices.Reverse(r.Families)
	}
	if len(r.Families) == 2 {
		klog.InfoS("nftvs running in dual-stack mode", "primary ipFamily", r.Families[0])
	} else {
		klog.InfoS("nftvs running in single-stack mode", "ipFamily", r.Families[0])
	}
	var podCIDRs []string
	if n.Node != nil {
		podCIDRs = n.Node.Spec.PodCIDRs
	}
	r.UsesIPv6 = n.IPv6 && c.UsesIPv6(hostIPs, podCIDRs)

	local, err := c.localTraffic(podCIDRs)
	if err != nil {
		return nil, err
	}
	if local.Interface == "" && len(local.PodCIDRs) == 0 {
		klog.InfoS("No local traffic detection: traffic from pods to ClusterIPs is masqueraded only with --masquerade-all",
			"detectLocalMode", c.KubeProxy.DetectLocalMode, "clusterCIDR", c.KubeProxy.ClusterCIDR, "podCIDRs", podCIDRs)
	}
	r.NFT = nft.Config{
		MasqueradeMark: c.MasqueradeMark,
		MasqueradeAll:  c.KubeProxy.IPTables.MasqueradeAll,
		LocalTraffic:   local,
		ExcludeCIDRs:   c.ExcludeCIDRs,
		// kube-proxy drops forwarded packets of conntrack state invalid
		// unless conntrack is told to be liberal.
		DropInvalid: !c.KubeProxy.Conntrack.TCPBeLiberal,
	}

	npCIDRs := c.NodePortCIDRs
	if c.NodePortPrimary {
		npCIDRs = primaryNodePortCIDRs([]netip.Addr{ip4, ip6})
	}
	if len(npCIDRs) == 0 {
		klog.InfoS("nodePortAddresses is unset; NodePort connections will be accepted on all local IPs. Consider using `--nodeport-addresses primary`")
	}
	r.NodePorts = NodePortAddresses{Dummy: ipvs.DummyName, CIDRs: npCIDRs, IPv4: true, IPv6: n.IPv6}
	return r, nil
}

// Proxier is the proxier's configuration, whole: the configuration, the
// node's facts and rt. kube-proxy's ipvs.minSyncPeriod 0 means "sync on
// every change"; the proxier reads 0 as its default (1s), so 0 is passed
// as the smallest positive period.
func (r *Resolved) Proxier(rt Runtime) proxier.Config {
	c, n := r.cfg, r.node
	minSyncPeriod := c.KubeProxy.IPVS.MinSyncPeriod.Duration
	if minSyncPeriod == 0 {
		minSyncPeriod = time.Nanosecond
	}
	var hostAddresses func() ([]netip.Addr, error)
	if rt.HostAddresses != nil {
		hostAddresses = func() ([]netip.Addr, error) {
			all, err := rt.HostAddresses()
			if err != nil {
				return nil, err
			}
			out := make([]netip.Addr, 0, len(all))
			for _, ia := range all {
				if ia.Link != r.NodePorts.Dummy {
					out = append(out, ia.Addr)
				}
			}
			return out, nil
		}
	}
	return proxier.Config{
		PlanConfig: proxier.PlanConfig{
			Node:       proxier.Node{Name: n.Name, IPs: proxier.NodeIPs(n.Node, c.BindAddress)},
			Scheduler:  c.KubeProxy.IPVS.Scheduler,
			Schedulers: rt.Schedulers,
			IPv4:       true,
			IPv6:       n.IPv6,
			// Per-Service bounds: a tenant's Service never asks every
			// node for more than these.
			MaxVirtualServers: c.MaxVirtualServers,
			MaxSourceRanges:   c.MaxSourceRanges,
			MasqueradeMark:    c.MasqueradeMark,
			ExcludeCIDRs:      c.ExcludeCIDRs,
			APIServer:         n.APIServer,
		},
		SyncPeriod:        c.KubeProxy.IPVS.SyncPeriod.Duration,
		MinSyncPeriod:     minSyncPeriod,
		DrainTimeout:      c.DrainTimeout,
		HostAddresses:     hostAddresses,
		NodePortAddresses: r.NodePorts.SelectAddrs,
		LocalAddresses:    LocalAddresses,
		Warn:              rt.Warn,
		BindAddress:       c.BindAddress,
	}
}

// UsesIPv6 says whether the cluster uses IPv6, and so needs IPv6
// forwarding: one of nodeIPs is IPv6, or --bind-address, a
// --cluster-cidr or one of podCIDRs is.
func (c *Config) UsesIPv6(nodeIPs []netip.Addr, podCIDRs []string) bool {
	if slices.ContainsFunc(nodeIPs, netip.Addr.Is6) || c.BindAddress.Is6() {
		return true
	}
	if slices.ContainsFunc(c.ClusterCIDRs, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		return true
	}
	return slices.ContainsFunc(podCIDRs, func(s string) bool {
		p, err := parseCIDR(strings.TrimSpace(s))
		return err == nil && strings.TrimSpace(s) != "" && p.Addr().Is6()
	})
}

// localTraffic is how the nft table recognises traffic from pods
// (--detect-local-mode), as kube-proxy's getLocalDetectors: the first
// CIDR of each family of --cluster-cidr (ClusterCIDR) or of the Node's
// podCIDRs (NodeCIDR), or an input interface. ClusterCIDR without a CIDR
// detects nothing, as in kube-proxy. In both CIDR modes the Node's
// podCIDRs also say which pods are this node's own, the only ones
// internal to externalTrafficPolicy Local frontends: --cluster-cidr covers
// other nodes' pods too. In ClusterCIDR mode a node without podCIDRs (or
// with ones that do not parse) has no such short-cut, as in kube-proxy's
// IPVS mode: restricting more, never less.
func (c *Config) localTraffic(nodePodCIDRs []string) (nft.LocalTraffic, error) {
	node, nodeErr := parsePodCIDRs(nodePodCIDRs)
	switch c.KubeProxy.DetectLocalMode {
	case "ClusterCIDR":
		if nodeErr != nil {
			klog.ErrorS(nodeErr, "The node's podCIDRs do not parse: traffic from its pods to externalTrafficPolicy Local frontends is external", "podCIDRs", nodePodCIDRs)
		}
		cluster := firstPerFamily(c.ClusterCIDRs)
		if len(cluster) == 0 {
			return nft.LocalTraffic{}, nil
		}
		return nft.LocalTraffic{PodCIDRs: cluster, NodePodCIDRs: node}, nil
	case "NodeCIDR":
		if nodeErr != nil {
			return nft.LocalTraffic{}, nodeErr
		}
		return nft.LocalTraffic{PodCIDRs: node, NodePodCIDRs: node}, nil
	case "BridgeInterface":
		return nft.LocalTraffic{Interface: c.KubeProxy.DetectLocal.BridgeInterface}, nil
	case "InterfaceNamePrefix":
		return nft.LocalTraffic{Interface: c.KubeProxy.DetectLocal.InterfaceNamePrefix + "*"}, nil
	}
	return nft.LocalTraffic{}, nil
}

// parsePodCIDRs parses a Node's podCIDRs (blanks skipped): the first of
// each family, or an error for the first that does not parse.
func parsePodCIDRs(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		if strings.TrimSpace(s) == "" {
			continue
		}
		p, err := parseCIDR(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return firstPerFamily(out), nil
}

// parseCIDR parses a CIDR as kube-proxy does (leading zeros allowed),
// masked, unmapped.
func parseCIDR(s string) (netip.Prefix, error) {
	_, n, err := netutils.ParseCIDRSloppy(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %w", s, err)
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), nil
}

// addrFromIP converts a parsed IP, unmapped.
func addrFromIP(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// firstPerFamily keeps the first CIDR of each family, in order.
func firstPerFamily(cidrs []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	var have4, have6 bool
	for _, p := range cidrs {
		if p.Addr().Is4() && !have4 {
			have4 = true
			out = append(out, p)
		} else if p.Addr().Is6() && !have6 {
			have6 = true
			out = append(out, p)
		}
	}
	return out
}
