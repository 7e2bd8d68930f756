package config

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	netutils "k8s.io/utils/net"
)

// NodeHostIPs is kube-proxy's GetNodeHostIPs: the first InternalIP (or,
// without any, ExternalIP), and the first of the other family after it.
func NodeHostIPs(n *v1.Node) []netip.Addr {
	if n == nil {
		return nil
	}
	var all []netip.Addr
	for _, t := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != t {
				continue
			}
			if ip := netutils.ParseIPSloppy(a.Address); ip != nil {
				if addr, ok := netip.AddrFromSlice(ip); ok {
					all = append(all, addr.Unmap())
				}
			}
		}
	}
	if len(all) == 0 {
		return nil
	}
	out := []netip.Addr{all[0]}
	for _, ip := range all[1:] {
		if ip.Is6() != out[0].Is6() {
			out = append(out, ip)
			break
		}
	}
	return out
}

// detectNodeIPs is kube-proxy's: the node's IP of each family and which
// family is primary. A --bind-address that is not 0.0.0.0 or :: (bind,
// invalid otherwise) overrides the primary IP; without any, the IPs are
// 127.0.0.1 and ::1. (The set planning uses is proxier.NodeIPs.)
func detectNodeIPs(raw []netip.Addr, bind netip.Addr) (primaryIPv6 bool, v4, v6 netip.Addr) {
	v4, v6 = netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	if len(raw) > 0 {
		primaryIPv6 = raw[0].Is6()
		for _, ip := range raw[:min(len(raw), 2)] {
			if ip.Is6() {
				v6 = ip
			} else {
				v4 = ip
			}
		}
	}
	if bind.IsValid() && !bind.IsUnspecified() {
		primaryIPv6 = bind.Is6()
		if bind.Is6() {
			v6 = bind
		} else {
			v4 = bind
		}
	}
	return primaryIPv6, v4, v6
}
