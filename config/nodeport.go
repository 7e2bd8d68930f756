package config

import (
	"net/netip"
	"slices"
)

// InterfaceAddress is a local address and the link that holds it.
type InterfaceAddress struct {
	Link string
	Addr netip.Addr
}

// NodePortAddresses chooses the addresses node ports are served on
// (one IPVS virtual server per address and node port).
type NodePortAddresses struct {
	// Dummy is the link holding Service addresses (kube-ipvs0): never a
	// node port address.
	Dummy string
	// CIDRs, when not empty, keep only addresses inside one of them
	// (--nodeport-addresses; "primary" is the node's IPs as /32 and /128).
	CIDRs []netip.Prefix
	// IPv4 and IPv6 are the families proxied.
	IPv4, IPv6 bool
}

// MatchAll reports whether every local address is a node port address.
func (n NodePortAddresses) MatchAll() bool { return len(n.CIDRs) == 0 }

// Select returns the node port addresses among the host's addresses,
// sorted: every address but kube-ipvs0's, loopback ones and IPv6
// link-local ones (a virtual server cannot tell which link's fe80:: it
// would be), or only those inside CIDRs.
func (n NodePortAddresses) Select(addrs []InterfaceAddress) []netip.Addr {
	var out []netip.Addr
	for _, ia := range addrs {
		a := ia.Addr.Unmap()
		switch {
		case !a.IsValid(), ia.Link == n.Dummy, a.IsLoopback(), a.IsUnspecified(),
			a.Is6() && a.IsLinkLocalUnicast(),
			a.Is4() && !n.IPv4, a.Is6() && !n.IPv6:
			continue
		}
		if !n.MatchAll() && !slices.ContainsFunc(n.CIDRs, func(p netip.Prefix) bool { return p.Contains(a) }) {
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// SelectAddrs is Select of addresses none of which is on the Dummy link.
func (n NodePortAddresses) SelectAddrs(addrs []netip.Addr) []netip.Addr {
	ias := make([]InterfaceAddress, len(addrs))
	for i, a := range addrs {
		ias[i].Addr = a
	}
	return n.Select(ias)
}

// LocalAddresses are the node's own among the addresses of its links but
// kube-ipvs0's: an external or load-balancer IP among them is the
// node's. Loopback and link-local ones are left out: such Service
// addresses are refused anyway, and pods' veths come and go with
// link-local addresses.
func LocalAddresses(host []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range host {
		if a = a.Unmap(); a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out
}

// primaryNodePortCIDRs is kube-proxy's "primary": the node's IP of each
// family as a /32 or /128, loopback ones (node IP unknown) left out, so
// that no IP at all means every address.
func primaryNodePortCIDRs(nodeIPs []netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, ip := range nodeIPs {
		if ip.IsValid() && !ip.IsLoopback() {
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
		}
	}
	return out
}
