package conntrack

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Kernel-side dump filtering (CTA_FILTER, Linux 5.9+). The kernel walks the
// whole table either way; what a filter saves is serialising, copying and
// parsing the entries that cannot match, which is most of a dump's cost
// (docs/architecture.md has the figures).
//
// The filter is only ever a superset of what the index matches: every
// entry is still matched in Go, so a kernel that ignores the filter (older
// than 5.9: unknown attributes are skipped) costs time, never correctness.
// Only fields common to every Stale are filtered on, and never an IPv6
// address: ctnetlink_filter_match_tuple compares IPv6 addresses with
// !ipv6_addr_cmp(), which skips exactly the entries that match (seen on
// 6.18: a filter on one IPv6 destination returned every other entry).

// CTA_FILTER attributes and flags, from include/uapi/linux/netfilter/
// nfnetlink_conntrack.h and net/netfilter/nf_internals.h.
const (
	ctaFilter           = 25
	ctaFilterOrigFlags  = 1
	ctaFilterReplyFlags = 2

	filterIPSrc     = 1 << 0
	filterIPDst     = 1 << 1
	filterProtoNum  = 1 << 3
	filterProtoSrcP = 1 << 4
	filterProtoDstP = 1 << 5
)

// dumpRequest returns the family and the extra attributes of the dump
// request for ix: the narrowest family, and with kernelFilter a CTA_FILTER
// on whatever all Stale share (protocol; frontend port and IPv4 address;
// endpoint port and IPv4 address). filtered says whether a CTA_FILTER was
// added.
func (ix *index) dumpRequest(kernelFilter bool) (family uint8, attrs []byte, filtered bool) {
	switch {
	case ix.v4 && !ix.v6:
		family = unix.AF_INET
	case ix.v6 && !ix.v4:
		family = unix.AF_INET6
	default:
		// CTA_FILTER needs one family.
		return unix.AF_UNSPEC, nil, false
	}
	proto, ok := only(ix.protos)
	if !kernelFilter || !ok {
		return family, nil, false
	}
	// The kernel compares ports for TCP and UDP only (SCTP entries pass).
	ported := proto == protoTCP || proto == protoUDP
	v4 := family == unix.AF_INET

	var origFlags, replyFlags uint32 = filterProtoNum, 0
	var orig, reply tupleFilter
	orig.proto, reply.proto = proto, proto
	if p, ok := only(ix.frontendPorts); ok && ported {
		origFlags |= filterProtoDstP
		orig.dstPort = p
	}
	if a, ok := only(ix.frontendAddrs); ok && v4 {
		origFlags |= filterIPDst
		orig.dst = a
	}
	if !ix.anyEndpoint {
		if p, ok := only(ix.endpointPorts); ok && ported {
			replyFlags |= filterProtoNum | filterProtoSrcP
			reply.srcPort = p
		}
		if a, ok := only(ix.endpointAddrs); ok && v4 {
			replyFlags |= filterProtoNum | filterIPSrc
			reply.src = a
		}
	}

	var f []byte
	f = appendAttr(f, ctaFilterOrigFlags, binary.NativeEndian.AppendUint32(nil, origFlags))
	attrs = appendAttr(attrs, unix.NLA_F_NESTED|ctaTupleOrig, orig.attrs())
	if replyFlags != 0 {
		f = appendAttr(f, ctaFilterReplyFlags, binary.NativeEndian.AppendUint32(nil, replyFlags))
		attrs = appendAttr(attrs, unix.NLA_F_NESTED|ctaTupleReply, reply.attrs())
	}
	attrs = appendAttr(attrs, unix.NLA_F_NESTED|ctaFilter, f)
	return family, attrs, true
}

// tupleFilter is the part of a tuple a filter names; zero fields are
// left out.
type tupleFilter struct {
	proto            uint8
	src, dst         netip.Addr // IPv4 only
	srcPort, dstPort uint16
}

func (t tupleFilter) attrs() []byte {
	var ip, proto, out []byte
	if t.src.IsValid() {
		ip = appendAttr(ip, ctaIPv4Src, t.src.AsSlice())
	}
	if t.dst.IsValid() {
		ip = appendAttr(ip, ctaIPv4Dst, t.dst.AsSlice())
	}
	proto = appendAttr(proto, ctaProtoNum, []byte{t.proto})
	if t.srcPort != 0 {
		proto = appendAttr(proto, ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, t.srcPort))
	}
	if t.dstPort != 0 {
		proto = appendAttr(proto, ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, t.dstPort))
	}
	if ip != nil {
		out = appendAttr(out, unix.NLA_F_NESTED|ctaTupleIP, ip)
	}
	return appendAttr(out, unix.NLA_F_NESTED|ctaTupleProto, proto)
}

// only returns the single key of m, if it has exactly one.
func only[K comparable](m map[K]struct{}) (K, bool) {
	var zero K
	if len(m) != 1 {
		return zero, false
	}
	for k := range m {
		return k, true
	}
	return zero, false
}
