package bench

import (
	"fmt"
	"net/netip"
	"slices"
)

// VirtualServer is an IPVS virtual server as the kernel reports it.
type VirtualServer struct {
	Protocol  uint16
	Address   netip.Addr
	Port      uint16
	FWMark    uint32
	Scheduler string
	Flags     uint32
	Timeout   uint32
	Netmask   uint32
	Real      []RealServer
}

// RealServer is one of its destinations.
type RealServer struct {
	Address netip.Addr
	Port    uint16
	Weight  int
	// Forward is the forwarding method (IP_VS_CONN_F_FWD_MASK bits of
	// the connection flags): 0 masquerade.
	Forward uint32
}

// flagHashed is set by the kernel on every hashed virtual server.
const flagHashed = 0x2

func protoName(p uint16) string {
	switch p {
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 132:
		return "SCTP"
	}
	return fmt.Sprintf("proto%d", p)
}

func fwdName(f uint32) string {
	switch f & 0x7 {
	case 0:
		return "masq"
	case 1:
		return "local"
	case 2:
		return "tunnel"
	case 3:
		return "route"
	case 4:
		return "bypass"
	}
	return fmt.Sprintf("fwd%d", f&0x7)
}

// NormalizeIPVS turns an IPVS table into sorted lines that two proxies'
// tables can be compared by: one per virtual server (scheduler, flags
// less the kernel's hashed bit, persistence timeout, netmask) and one per
// real server that takes traffic (weight > 0: draining ones at weight 0
// are left out, their lifetime differs by design), with weight and
// forwarding method.
func NormalizeIPVS(vss []VirtualServer) []string {
	var lines []string
	for _, v := range vss {
		key := fmt.Sprintf("%s %s", protoName(v.Protocol), netip.AddrPortFrom(v.Address.Unmap(), v.Port))
		if v.FWMark != 0 {
			fam := "IPv4"
			if v.Address.IsValid() && v.Address.Unmap().Is6() {
				fam = "IPv6"
			}
			key = fmt.Sprintf("FWM %d %s", v.FWMark, fam)
		}
		lines = append(lines, fmt.Sprintf("%s %s flags=%#x timeout=%d netmask=%#x",
			key, v.Scheduler, v.Flags&^flagHashed, v.Timeout, v.Netmask))
		for _, r := range v.Real {
			if r.Weight == 0 {
				continue
			}
			lines = append(lines, fmt.Sprintf("%s -> %s %s weight=%d",
				key, netip.AddrPortFrom(r.Address.Unmap(), r.Port), fwdName(r.Forward), r.Weight))
		}
	}
	slices.Sort(lines)
	return lines
}

// DiffLines returns the lines only in a and only in b (both sorted).
func DiffLines(a, b []string) (onlyA, onlyB []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || i < len(a) && a[i] < b[j]:
			onlyA = append(onlyA, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return onlyA, onlyB
}

// Differential compares nftvs's IPVS table with upstream IPVS mode's for
// the same objects; it returns nil when they are equal, otherwise an
// error listing up to 10 differences each way.
func Differential(nftvs, upstream []string) error {
	if len(nftvs) == 0 || len(upstream) == 0 {
		return fmt.Errorf("differential: an IPVS table is empty (nftvs %d lines, upstream %d)", len(nftvs), len(upstream))
	}
	a, b := DiffLines(nftvs, upstream)
	if len(a) == 0 && len(b) == 0 {
		return nil
	}
	show := func(ls []string) []string {
		if len(ls) > 10 {
			return append(slices.Clone(ls[:10]), fmt.Sprintf("... %d more", len(ls)-10))
		}
		return ls
	}
	return fmt.Errorf("differential: IPVS tables differ: %d lines only in nftvs's %q, %d only in upstream's %q",
		len(a), show(a), len(b), show(b))
}
