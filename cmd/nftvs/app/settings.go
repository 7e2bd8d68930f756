package app

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
	netutils "k8s.io/utils/net"
)

// What the validated configuration means for the packages it configures.

// syncPeriods are the proxier's sync periods. kube-proxy's
// ipvs.minSyncPeriod 0 means "sync on every change"; the proxier reads 0
// as its default (1s), so 0 is passed as the smallest positive period.
func (c *Config) syncPeriods() (syncPeriod, minSyncPeriod time.Duration) {
	minSyncPeriod = c.KubeProxy.IPVS.MinSyncPeriod.Duration
	if minSyncPeriod == 0 {
		minSyncPeriod = time.Nanosecond
	}
	return c.KubeProxy.IPVS.SyncPeriod.Duration, minSyncPeriod
}

// excludeCIDRs are --ipvs-exclude-cidrs.
func (c *Config) excludeCIDRs() ([]netip.Prefix, error) {
	return parseCIDRs(c.KubeProxy.IPVS.ExcludeCIDRs)
}

// nodePortCIDRs are --nodeport-addresses; primary says "the node's
// primary IPs", and neither means every local address.
func (c *Config) nodePortCIDRs() (cidrs []netip.Prefix, primary bool, err error) {
	if len(c.KubeProxy.NodePortAddresses) == 1 && c.KubeProxy.NodePortAddresses[0] == "primary" {
		return nil, true, nil
	}
	cidrs, err = parseCIDRs(c.KubeProxy.NodePortAddresses)
	return cidrs, false, err
}

// localTraffic is how the nft table recognises traffic from this node's
// pods (--detect-local-mode), as kube-proxy's getLocalDetectors: the first
// CIDR of each family of --cluster-cidr (ClusterCIDR) or of the Node's
// podCIDRs (NodeCIDR), or an input interface. ClusterCIDR without a CIDR
// detects nothing, as in kube-proxy.
func (c *Config) localTraffic(nodePodCIDRs []string) (nft.LocalTraffic, error) {
	switch c.KubeProxy.DetectLocalMode {
	case "ClusterCIDR":
		if c.KubeProxy.ClusterCIDR == "" {
			return nft.LocalTraffic{}, nil
		}
		p, err := firstCIDRPerFamily(strings.Split(c.KubeProxy.ClusterCIDR, ","))
		return nft.LocalTraffic{PodCIDRs: p}, err
	case "NodeCIDR":
		p, err := firstCIDRPerFamily(nodePodCIDRs)
		return nft.LocalTraffic{PodCIDRs: p}, err
	case "BridgeInterface":
		return nft.LocalTraffic{Interface: c.KubeProxy.DetectLocal.BridgeInterface}, nil
	case "InterfaceNamePrefix":
		return nft.LocalTraffic{Interface: c.KubeProxy.DetectLocal.InterfaceNamePrefix + "*"}, nil
	}
	return nft.LocalTraffic{}, nil
}

// nftConfig is the companion table's configuration.
func (c *Config) nftConfig(nodePodCIDRs []string) (nft.Config, error) {
	local, err := c.localTraffic(nodePodCIDRs)
	if err != nil {
		return nft.Config{}, err
	}
	exclude, err := c.excludeCIDRs()
	if err != nil {
		return nft.Config{}, err
	}
	return nft.Config{
		MasqueradeMark: 1 << uint(*c.KubeProxy.IPTables.MasqueradeBit),
		MasqueradeAll:  c.KubeProxy.IPTables.MasqueradeAll,
		LocalTraffic:   local,
		ExcludeCIDRs:   exclude,
		// kube-proxy drops forwarded packets of conntrack state invalid
		// unless conntrack is told to be liberal.
		DropInvalid: !c.KubeProxy.Conntrack.TCPBeLiberal,
	}, nil
}

// proxierConfig is the proxier's configuration, less what only the node
// can tell (its IPs, node port addresses).
func (c *Config) proxierConfig(nodeName string, ipv4, ipv6 bool) proxier.Config {
	syncPeriod, minSyncPeriod := c.syncPeriods()
	return proxier.Config{
		PlanConfig: proxier.PlanConfig{
			Node:      proxier.Node{Name: nodeName},
			Scheduler: c.KubeProxy.IPVS.Scheduler,
			IPv4:      ipv4,
			IPv6:      ipv6,
			// Per-Service bounds: a tenant's Service never asks every
			// node for more than these.
			MaxVirtualServers: c.MaxVirtualServers,
			MaxSourceRanges:   c.MaxSourceRanges,
		},
		SyncPeriod:    syncPeriod,
		MinSyncPeriod: minSyncPeriod,
		DrainTimeout:  c.DrainTimeout,
	}
}

// parseCIDRs parses CIDRs as kube-proxy does (leading zeros allowed),
// masked.
func parseCIDRs(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := parseCIDR(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	_, n, err := netutils.ParseCIDRSloppy(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %w", s, err)
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
	}
	a = a.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones).Masked(), nil
}

// firstCIDRPerFamily keeps the first CIDR of each family, in order.
func firstCIDRPerFamily(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var have4, have6 bool
	for _, s := range ss {
		if strings.TrimSpace(s) == "" {
			continue
		}
		p, err := parseCIDR(s)
		if err != nil {
			return nil, err
		}
		if p.Addr().Is4() && !have4 {
			have4 = true
			out = append(out, p)
		} else if p.Addr().Is6() && !have6 {
			have6 = true
			out = append(out, p)
		}
	}
	return out, nil
}
