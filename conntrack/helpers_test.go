package conntrack

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nftvs/nftvs/internal/netnstest"
	"golang.org/x/sys/unix"
)

// ctFlow is a conntrack entry to create: Flow plus what the cleaner does
// not look at but the kernel needs (reply destination, zone).
type ctFlow struct {
	Flow
	ReplyDst netip.AddrPort // default: OrigSrc (no source NAT)
	Zone     uint16
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// natFlow is a client's connection to a frontend that IPVS (or DNAT) sent
// to endpoint.
func natFlow(p Protocol, client, frontend, endpoint string) ctFlow {
	return ctFlow{Flow: Flow{Protocol: p, OrigSrc: ap(client), OrigDst: ap(frontend), ReplySrc: ap(endpoint)}}
}

// Values from include/uapi/linux/netfilter/nfnetlink_conntrack.h and the
// conntrack state enums.
const (
	ctaProtoinfo         = 4
	ctaTimeout           = 7
	ctaProtoinfoTCP      = 1
	ctaProtoinfoSCTP     = 3
	tcpConntrackEstab    = 3
	sctpConntrackEstab   = 3
	testTimeoutSeconds   = 3600
	createBatch          = 256
	ctaProtoinfoTCPState = 1
)

func appendTuple(b []byte, typ uint16, p Protocol, src, dst netip.AddrPort) []byte {
	var ip []byte
	if src.Addr().Is4() {
		ip = appendAttr(ip, ctaIPv4Src, src.Addr().AsSlice())
		ip = appendAttr(ip, ctaIPv4Dst, dst.Addr().AsSlice())
	} else {
		ip = appendAttr(ip, ctaIPv6Src, src.Addr().AsSlice())
		ip = appendAttr(ip, ctaIPv6Dst, dst.Addr().AsSlice())
	}
	num, _ := protocolNumber(p)
	var proto []byte
	proto = appendAttr(proto, ctaProtoNum, []byte{num})
	proto = appendAttr(proto, ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, src.Port()))
	proto = appendAttr(proto, ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, dst.Port()))
	var t []byte
	t = appendAttr(t, unix.NLA_F_NESTED|ctaTupleIP, ip)
	t = appendAttr(t, unix.NLA_F_NESTED|ctaTupleProto, proto)
	return appendAttr(b, unix.NLA_F_NESTED|typ, t)
}

func appendCreate(b []byte, seq uint32, ack bool, f ctFlow) []byte {
	family := uint8(unix.AF_INET)
	if !f.OrigSrc.Addr().Is4() {
		family = unix.AF_INET6
	}
	flags := uint16(unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_EXCL)
	if ack {
		flags |= unix.NLM_F_ACK
	}
	replyDst := f.ReplyDst
	if !replyDst.IsValid() {
		replyDst = f.OrigSrc
	}
	at := len(b)
	b = appendHeader(b, unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtNew, flags, seq, family)
	b = appendTuple(b, ctaTupleOrig, f.Protocol, f.OrigSrc, f.OrigDst)
	b = appendTuple(b, ctaTupleReply, f.Protocol, f.ReplySrc, replyDst)
	b = appendAttr(b, ctaTimeout, binary.BigEndian.AppendUint32(nil, testTimeoutSeconds))
	switch f.Protocol {
	case ProtocolTCP:
		tcp := appendAttr(nil, ctaProtoinfoTCPState, []byte{tcpConntrackEstab})
		b = appendAttr(b, unix.NLA_F_NESTED|ctaProtoinfo, appendAttr(nil, unix.NLA_F_NESTED|ctaProtoinfoTCP, tcp))
	case ProtocolSCTP:
		var sctp []byte
		sctp = appendAttr(sctp, 1, []byte{sctpConntrackEstab}) // state
		sctp = appendAttr(sctp, 2, binary.BigEndian.AppendUint32(nil, 0x1111))
		sctp = appendAttr(sctp, 3, binary.BigEndian.AppendUint32(nil, 0x2222))
		b = appendAttr(b, unix.NLA_F_NESTED|ctaProtoinfo, appendAttr(nil, unix.NLA_F_NESTED|ctaProtoinfoSCTP, sctp))
	}
	if f.Zone != 0 {
		b = appendAttr(b, ctaZone, binary.BigEndian.AppendUint16(nil, f.Zone))
	}
	return finishMessage(b, at)
}

// createFlows creates conntrack entries in ns over ctnetlink, in batches;
// any refusal fails the test.
func createFlows(tb testing.TB, ns *netnstest.NS, flows []ctFlow) {
	tb.Helper()
	s, err := openSocket(ns.FD(), defaultTimeout)
	if err != nil {
		tb.Fatal(err)
	}
	defer s.close()
	for start := 0; start < len(flows); start += createBatch {
		batch := flows[start:min(start+createBatch, len(flows))]
		first := s.seq + 1
		var req []byte
		for i, f := range batch {
			req = appendCreate(req, s.nextSeq(), i == len(batch)-1, f)
		}
		if err := s.send(req); err != nil {
			tb.Fatal(err)
		}
		for done := false; !done; {
			b, err := s.recv()
			if err != nil {
				tb.Fatal(err)
			}
			err = forEachMessage(b, func(m message) error {
				if m.typ != unix.NLMSG_ERROR {
					return nil
				}
				code, seq, err := nlError(m.payload)
				if err != nil {
					return err
				}
				i := seq - first
				if i >= uint32(len(batch)) {
					return nil
				}
				done = done || i == uint32(len(batch)-1)
				if code != 0 {
					return fmt.Errorf("create %v: %w", batch[i], code)
				}
				return nil
			})
			if err != nil {
				tb.Fatal(err)
			}
		}
	}
}

// procFlows reads the namespace's table from /proc/net/nf_conntrack, a
// reader independent of the code under test.
func procFlows(tb testing.TB, ns *netnstest.NS) []ctFlow {
	tb.Helper()
	out := ns.Run(tb, "cat", "/proc/net/nf_conntrack")
	var flows []ctFlow
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f, err := parseProcLine(sc.Text())
		if err != nil {
			tb.Fatalf("parse %q: %v", sc.Text(), err)
		}
		flows = append(flows, f)
	}
	return flows
}

// parseProcLine reads a line like
//
//	ipv4 2 tcp 6 3599 ESTABLISHED src=A dst=B sport=1 dport=2 src=C dst=D sport=3 dport=4 [ASSURED] mark=0 zone=5 use=1
func parseProcLine(line string) (ctFlow, error) {
	fields := strings.Fields(line)
	if len(fields) < 4 {
		return ctFlow{}, errors.New("short line")
	}
	var f ctFlow
	f.Protocol = Protocol(strings.ToUpper(fields[2]))
	var addrs []netip.Addr
	var ports []uint16
	for _, kv := range fields[4:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "src", "dst":
			a, err := netip.ParseAddr(v)
			if err != nil {
				return f, err
			}
			addrs = append(addrs, a)
		case "sport", "dport":
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return f, err
			}
			ports = append(ports, uint16(p))
		case "zone":
			z, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return f, err
			}
			f.Zone = uint16(z)
		}
	}
	if len(addrs) != 4 || len(ports) != 4 {
		return f, fmt.Errorf("want 4 addresses and 4 ports, got %v %v", addrs, ports)
	}
	f.OrigSrc = netip.AddrPortFrom(addrs[0], ports[0])
	f.OrigDst = netip.AddrPortFrom(addrs[1], ports[1])
	f.ReplySrc = netip.AddrPortFrom(addrs[2], ports[2])
	f.ReplyDst = netip.AddrPortFrom(addrs[3], ports[3])
	return f, nil
}

func flowKey(f ctFlow) string {
	rd := f.ReplyDst
	if !rd.IsValid() {
		rd = f.OrigSrc
	}
	return fmt.Sprintf("%s %s>%s %s>%s zone=%d", f.Protocol, f.OrigSrc, f.OrigDst, f.ReplySrc, rd, f.Zone)
}

func flowKeys(fs []ctFlow) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = flowKey(f)
	}
	slices.Sort(out)
	return out
}
