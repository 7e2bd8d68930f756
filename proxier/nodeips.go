package proxier

import (
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	netutils "k8s.io/utils/net"
)

// NodeIPs are the node's IPs as planning sees them (Node.IPs): every
// InternalIP and ExternalIP of the Node, then bindAddress (a
// --bind-address other than 0.0.0.0 or ::, which kube-proxy takes for
// the node's primary IP) when it is valid; unmapped, loopback ones left
// out, each once. It is the one derivation of the set, used at start
// (config.Resolve) and on every Node update (the Node handler), so that
// the two never disagree.
func NodeIPs(n *v1.Node, bindAddress netip.Addr) []netip.Addr {
	var out []netip.Addr
	add := func(ip netip.Addr) {
		ip = ip.Unmap()
		if ip.IsValid() && !ip.IsLoopback() && !ip.IsUnspecified() && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	if n != nil {
		for _, a := range n.Status.Addresses {
			if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
				continue
			}
			if ip := netutils.ParseIPSloppy(a.Address); ip != nil {
				if addr, ok := netip.AddrFromSlice(ip); ok {
					add(addr)
				}
			}
		}
	}
	add(bindAddress)
	return out
}
