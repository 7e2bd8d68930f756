package ipvs

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink/nl"
)

// TestAppendWrite: the batch encoder writes, byte for byte, the requests
// that moby/ipvs's attribute code writes through nl.RtAttr trees (the
// reference below, the encoder nftvs used before), for virtual servers
// of every shape and real servers of both families, one train after
// another in one buffer.
func TestAppendWrite(t *testing.T) {
	v4 := VirtualServer{VSKey: key(TCP, "10.96.0.10:80"), Scheduler: "rr"}
	v6 := VirtualServer{VSKey: key(UDP, "[fd00:96::a]:53"), Scheduler: "mh", Flags: FlagHashed | 0x10, Timeout: 300}
	fw := VirtualServer{VSKey: VSKey{FWMark: 0x75801008}, Scheduler: "sh", Timeout: 10800}
	fw6 := VirtualServer{VSKey: VSKey{FWMark: 0x4000, IPv6: true}, Scheduler: "wlc"}
	sctp := VirtualServer{VSKey: key(SCTP, "192.0.2.1:3868"), Scheduler: "lc", Flags: 0x1}
	rs4 := RealServer{Address: netip.MustParseAddr("10.244.1.11"), Port: 8080, Weight: 1}
	rs4m := RealServer{Address: netip.MustParseAddr("::ffff:10.244.1.12"), Port: 8080, Weight: 0}
	rs6 := RealServer{Address: netip.MustParseAddr("fd00:244:1::b"), Port: 53, Weight: 100000}
	writes := []Write{
		{Op: OpAddVirtualServer, VirtualServer: v4},
		{Op: OpAddRealServer, VirtualServer: v4, RealServer: rs4},
		{Op: OpAddRealServer, VirtualServer: v4, RealServer: rs4m},
		{Op: OpAddVirtualServer, VirtualServer: v6},
		{Op: OpAddRealServer, VirtualServer: v6, RealServer: rs6},
		{Op: OpAddVirtualServer, VirtualServer: fw},
		{Op: OpAddRealServer, VirtualServer: fw, RealServer: rs4},
		{Op: OpAddVirtualServer, VirtualServer: fw6},
		{Op: OpAddRealServer, VirtualServer: fw6, RealServer: rs6},
		{Op: OpAddVirtualServer, VirtualServer: sctp},
		{Op: OpAddRealServer, VirtualServer: sctp, RealServer: rs4},
	}
	var got, want []byte
	for i, w := range writes {
		flags := trainFlags(i, len(writes))
		v := w.VirtualServer
		if w.Op == OpAddRealServer {
			v = VirtualServer{VSKey: v.VSKey}
		}
		got = appendWrite(got, 0x1a, uint32(100+i), flags, w, appendServiceAttr(nil, v))
		want = append(want, referenceWrite(0x1a, uint32(100+i), flags, w)...)
		if !bytes.Equal(got, want) {
			t.Fatalf("write %d (%s %v %v):\n got %x\nwant %x", i, w.Op, w.VirtualServer, w.RealServer, got, want)
		}
	}
	if n := binary.NativeEndian.Uint32(got); n < 40 || int(n) > len(got) {
		t.Fatalf("first request's length %d", n)
	}
}

// referenceWrite is w encoded through nl.RtAttr as moby/ipvs encodes the
// same call: the encoder nftvs used before appendWrite.
func referenceWrite(family uint16, seq uint32, flags int, w Write) []byte {
	cmd := uint8(ipvsCmdNewService)
	if w.Op == OpAddRealServer {
		cmd = ipvsCmdNewDest
	}
	req := nl.NewNetlinkRequest(int(family), flags)
	req.Seq = seq
	req.AddData(refGenlHeader{cmd: cmd})
	if w.Op == OpAddVirtualServer {
		req.AddData(refServiceAttr(toService(w.VirtualServer)))
	} else {
		req.AddData(refServiceAttr(toService(VirtualServer{VSKey: w.VirtualServer.VSKey})))
		req.AddData(refDestinationAttr(toDestination(w.RealServer)))
	}
	return req.Serialize()
}

type refGenlHeader struct{ cmd uint8 }

func (h refGenlHeader) Len() int          { return 4 }
func (h refGenlHeader) Serialize() []byte { return []byte{h.cmd, 1, 0, 0} }

func refServiceAttr(s *mobyipvs.Service) *nl.RtAttr {
	a := nl.NewRtAttr(ipvsCmdAttrService, nil)
	a.AddRtAttr(ipvsSvcAttrAF, nl.Uint16Attr(s.AddressFamily))
	if s.FWMark != 0 {
		a.AddRtAttr(ipvsSvcAttrFWMark, nl.Uint32Attr(s.FWMark))
	} else {
		a.AddRtAttr(ipvsSvcAttrProtocol, nl.Uint16Attr(s.Protocol))
		a.AddRtAttr(ipvsSvcAttrAddr, rawIP(s.Address))
		a.AddRtAttr(ipvsSvcAttrPort, binary.BigEndian.AppendUint16(nil, s.Port))
	}
	a.AddRtAttr(ipvsSvcAttrSchedName, nl.ZeroTerminated(s.SchedName))
	flags := binary.NativeEndian.AppendUint32(nil, s.Flags)
	a.AddRtAttr(ipvsSvcAttrFlags, binary.NativeEndian.AppendUint32(flags, 0xffffffff))
	a.AddRtAttr(ipvsSvcAttrTimeout, nl.Uint32Attr(s.Timeout))
	a.AddRtAttr(ipvsSvcAttrNetmask, nl.Uint32Attr(s.Netmask))
	return a
}

func refDestinationAttr(d *mobyipvs.Destination) *nl.RtAttr {
	a := nl.NewRtAttr(ipvsCmdAttrDest, nil)
	a.AddRtAttr(ipvsDestAttrAddr, rawIP(d.Address))
	a.AddRtAttr(ipvsDestAttrPort, binary.BigEndian.AppendUint16(nil, d.Port))
	a.AddRtAttr(ipvsDestAttrFwdMethod, nl.Uint32Attr(d.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask))
	a.AddRtAttr(ipvsDestAttrWeight, nl.Uint32Attr(uint32(d.Weight)))
	a.AddRtAttr(ipvsDestAttrUThresh, nl.Uint32Attr(d.UpperThreshold))
	a.AddRtAttr(ipvsDestAttrLThresh, nl.Uint32Attr(d.LowerThreshold))
	return a
}

// BenchmarkAppendWrite: a first sync's train of 256 real server writes.
func BenchmarkAppendWrite(b *testing.B) {
	v := VirtualServer{VSKey: key(TCP, "10.96.0.10:80"), Scheduler: "rr"}
	var writes []Write
	for i := range 256 {
		writes = append(writes, Write{Op: OpAddRealServer, VirtualServer: v,
			RealServer: RealServer{Address: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), Port: 8080, Weight: 1}})
	}
	b.Run("appendWrite", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for range b.N {
			buf = buf[:0]
			svc := appendServiceAttr(nil, VirtualServer{VSKey: v.VSKey})
			for i, w := range writes {
				buf = appendWrite(buf, 0x1a, uint32(i), 0, w, svc)
			}
		}
	})
	b.Run("nl.RtAttr", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for range b.N {
			buf = buf[:0]
			for i, w := range writes {
				buf = append(buf, referenceWrite(0x1a, uint32(i), 0, w)...)
			}
		}
	})
}
