package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Write is one write of a batch (Batcher): OpAddVirtualServer of
// VirtualServer, or OpAddRealServer of RealServer to VirtualServer's key.
type Write struct {
	Op            Op
	VirtualServer VirtualServer
	RealServer    RealServer
}

// Batcher is an Interface that sends many writes per system call. A
// first sync at 10k Services writes 10k virtual servers and 100k real
// servers: one round trip each (send, wait for the ACK) is most of its
// time under emulation.
type Batcher interface {
	// WriteBatch sends writes in order, each acknowledged on its own, and
	// returns each one's error, as the Interface call of the same write
	// would return it (nil: done; an error for a write that got no
	// answer, which may or may not have been applied).
	WriteBatch(writes []Write) []error
}

// BatchWrites is how many writes go out in one sendmsg: the kernel
// answers each with an ACK of its own, which must all fit the socket's
// receive buffer (batchRcvBuf) before they are read.
const BatchWrites = 256

const (
	// batchRcvBuf holds BatchWrites ACKs with room to spare (each costs
	// an skb of well under 2 KiB).
	batchRcvBuf = 4 << 20
	// batchWait bounds how long a batch waits for its ACKs.
	batchWait = 30 * time.Second
)

// IPVS generic netlink commands and attributes (include/uapi/linux/ip_vs.h).
const (
	ipvsCmdNewService = 1
	ipvsCmdNewDest    = 5

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAF        = 1
	ipvsSvcAttrProtocol  = 2
	ipvsSvcAttrAddr      = 3
	ipvsSvcAttrPort      = 4
	ipvsSvcAttrFWMark    = 5
	ipvsSvcAttrSchedName = 6
	ipvsSvcAttrFlags     = 7
	ipvsSvcAttrTimeout   = 8
	ipvsSvcAttrNetmask   = 9

	ipvsDestAttrAddr      = 1
	ipvsDestAttrPort      = 2
	ipvsDestAttrFwdMethod = 3
	ipvsDestAttrWeight    = 4
	ipvsDestAttrUThresh   = 5
	ipvsDestAttrLThresh   = 6
)

// batchSocket is a generic netlink socket of its own for batches, in the
// Kernel's namespace, with the IPVS family's id.
type batchSocket struct {
	s      *nl.NetlinkSocket
	family uint16
	seq    uint32
}

func newBatchSocket(netnsPath string) (*batchSocket, error) {
	fam, err := netlink.GenlFamilyGet("IPVS") // families are global, not per namespace
	if err != nil {
		return nil, fmt.Errorf("look up the IPVS generic netlink family: %w", err)
	}
	s, err := trainSocket(netnsPath, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("open IPVS netlink socket: %w", err)
	}
	return &batchSocket{s: s, family: fam.ID}, nil
}

func (b *batchSocket) close() { b.s.Close() }

// trainSocket opens a netlink socket of proto in the namespace at
// netnsPath ("" for the caller's) for sendTrain: a receive buffer that
// holds a train's answers, error ACKs without a copy of the request, and
// a receive timeout.
func trainSocket(netnsPath string, proto int) (*nl.NetlinkSocket, error) {
	ns := netns.None()
	if netnsPath != "" {
		var err error
		if ns, err = netns.GetFromPath(netnsPath); err != nil {
			return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
		}
		defer ns.Close()
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), proto)
	if err != nil {
		return nil, err
	}
	fd := s.GetFd()
	// Root may exceed rmem_max; otherwise the kernel caps SO_RCVBUF.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchRcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, batchRcvBuf)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := s.SetReceiveTimeout(&tv); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// errNoAnswer is a write's error when the batch's last ACK never came:
// the write may or may not have been applied.
var errNoAnswer = errors.New("no answer from the kernel")

// write sends writes (at most BatchWrites, every one of a batchable Op)
// in one sendmsg; errs[i] is writes[i]'s.
func (b *batchSocket) write(writes []Write, errs []error) {
	first := b.seq + 1
	var buf []byte
	for i, w := range writes {
		b.seq++
		buf = append(buf, encodeWrite(b.family, b.seq, trainFlags(i, len(writes)), w)...)
	}
	sendTrain(b.s.GetFd(), buf, first, errs, "IPVS writes")
}

// trainFlags are the netlink flags of request i of n in a train: only the
// last asks for an ACK.
func trainFlags(i, n int) int {
	if i == n-1 {
		return unix.NLM_F_ACK
	}
	return 0
}

// sendTrain sends buf — len(errs) netlink requests numbered from first,
// of which only the last asks for an ACK (trainFlags) — in one sendmsg
// over fd, and reads the answers: errs[i] is request i's. The kernel runs
// the requests of one sendmsg in order before it returns, answering only
// the failed ones (NLMSG_ERROR) and the last, so that ACK says every
// answer is in.
func sendTrain(fd int, buf []byte, first uint32, errs []error, what string) {
	n := len(errs)
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("send a batch of %d %s: %w", n, what, err)
		}
		return
	}
	unknown := func(err error) {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	rb := make([]byte, 64<<10)
	deadline := time.Now().Add(batchWait)
	for time.Now().Before(deadline) {
		got, _, err := unix.Recvfrom(fd, rb, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// ENOBUFS: answers were dropped, which ones is not known.
			unknown(fmt.Errorf("read the answers to a batch of %s: %w", what, err))
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(rb[:got])
		if err != nil {
			unknown(fmt.Errorf("read the answers to a batch of %s: %w", what, err))
			return
		}
		for _, m := range msgs {
			i := int(m.Header.Seq - first) // wraps for an earlier batch's
			if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq < first || i >= n || len(m.Data) < 4 {
				continue
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				errs[i] = syscall.Errno(-code)
			}
			if i == n-1 {
				return // the last one's answer: every answer is in
			}
		}
	}
	unknown(errNoAnswer)
}

// encodeWrite is w (a batchable Op) as one generic netlink request, its
// attributes as moby/ipvs sends them for the same call.
func encodeWrite(family uint16, seq uint32, flags int, w Write) []byte {
	cmd := uint8(ipvsCmdNewService)
	if w.Op == OpAddRealServer {
		cmd = ipvsCmdNewDest
	}
	req := nl.NewNetlinkRequest(int(family), flags)
	req.Seq = seq
	req.AddData(genlHeader{cmd: cmd})
	if w.Op == OpAddVirtualServer {
		req.AddData(serviceAttr(toService(w.VirtualServer), true))
	} else {
		req.AddData(serviceAttr(toService(VirtualServer{VSKey: w.VirtualServer.VSKey}), true))
		req.AddData(destinationAttr(toDestination(w.RealServer)))
	}
	return req.Serialize()
}

// genlHeader is struct genlmsghdr, version 1 as moby/ipvs sends it.
type genlHeader struct{ cmd uint8 }

func (h genlHeader) Len() int          { return 4 }
func (h genlHeader) Serialize() []byte { return []byte{h.cmd, 1, 0, 0} }

// serviceAttr is moby/ipvs's fillService: the service's identity, and
// with full its scheduling too (moby always sends it).
func serviceAttr(s *mobyipvs.Service, full bool) *nl.RtAttr {
	a := nl.NewRtAttr(ipvsCmdAttrService, nil)
	a.AddRtAttr(ipvsSvcAttrAF, nl.Uint16Attr(s.AddressFamily))
	if s.FWMark != 0 {
		a.AddRtAttr(ipvsSvcAttrFWMark, nl.Uint32Attr(s.FWMark))
	} else {
		a.AddRtAttr(ipvsSvcAttrProtocol, nl.Uint16Attr(s.Protocol))
		a.AddRtAttr(ipvsSvcAttrAddr, rawIP(s.Address))
		a.AddRtAttr(ipvsSvcAttrPort, binary.BigEndian.AppendUint16(nil, s.Port))
	}
	if !full {
		return a
	}
	a.AddRtAttr(ipvsSvcAttrSchedName, nl.ZeroTerminated(s.SchedName))
	flags := binary.NativeEndian.AppendUint32(nil, s.Flags)
	a.AddRtAttr(ipvsSvcAttrFlags, binary.NativeEndian.AppendUint32(flags, 0xffffffff))
	a.AddRtAttr(ipvsSvcAttrTimeout, nl.Uint32Attr(s.Timeout))
	a.AddRtAttr(ipvsSvcAttrNetmask, nl.Uint32Attr(s.Netmask))
	return a
}

// destinationAttr is moby/ipvs's fillDestination.
func destinationAttr(d *mobyipvs.Destination) *nl.RtAttr {
	a := nl.NewRtAttr(ipvsCmdAttrDest, nil)
	a.AddRtAttr(ipvsDestAttrAddr, rawIP(d.Address))
	a.AddRtAttr(ipvsDestAttrPort, binary.BigEndian.AppendUint16(nil, d.Port))
	a.AddRtAttr(ipvsDestAttrFwdMethod, nl.Uint32Attr(d.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask))
	a.AddRtAttr(ipvsDestAttrWeight, nl.Uint32Attr(uint32(d.Weight)))
	a.AddRtAttr(ipvsDestAttrUThresh, nl.Uint32Attr(d.UpperThreshold))
	a.AddRtAttr(ipvsDestAttrLThresh, nl.Uint32Attr(d.LowerThreshold))
	return a
}

// rawIP is an address as moby/ipvs sends it: 4 bytes for IPv4.
func rawIP(ip []byte) []byte {
	if len(ip) == 16 && ip[10] == 0xff && ip[11] == 0xff && allZero(ip[:10]) {
		return ip[12:]
	}
	return ip
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// writeEach makes writes through h's Interface calls, one round trip
// each (a Batcher without batches).
func writeEach(h Interface, writes []Write) []error {
	errs := make([]error, len(writes))
	for i, w := range writes {
		switch w.Op {
		case OpAddVirtualServer:
			errs[i] = h.AddVirtualServer(w.VirtualServer)
		case OpAddRealServer:
			errs[i] = h.AddRealServer(w.VirtualServer.VSKey, w.RealServer)
		default:
			errs[i] = fmt.Errorf("%s cannot be batched", w.Op)
		}
	}
	return errs
}

// batchable says whether WriteBatch sends op.
func batchable(op Op) bool { return op == OpAddVirtualServer || op == OpAddRealServer }

// WriteBatch sends writes BatchWrites per sendmsg over a socket of its
// own, under the write lock. Its errors read as the Interface calls'.
func (k *Kernel) WriteBatch(writes []Write) []error {
	errs := make([]error, len(writes))
	var send []Write
	var at []int // send[j] is writes[at[j]]
	for i, w := range writes {
		if !batchable(w.Op) {
			errs[i] = fmt.Errorf("%s cannot be batched", w.Op)
			continue
		}
		send, at = append(send, w), append(at, i)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.batch == nil {
		b, err := newBatchSocket(k.netns)
		if err != nil {
			for _, i := range at {
				errs[i] = err
			}
			return errs
		}
		k.batch = b
	}
	sent := make([]error, len(send))
	for start := 0; start < len(send); start += BatchWrites {
		end := min(start+BatchWrites, len(send))
		k.batch.write(send[start:end], sent[start:end])
	}
	for j, err := range sent {
		if err == nil {
			continue
		}
		w := send[j]
		if w.Op == OpAddVirtualServer {
			errs[at[j]] = fmt.Errorf("add virtual server %s: %w", w.VirtualServer, err)
		} else {
			errs[at[j]] = fmt.Errorf("add real server %s to %s: %w", w.RealServer.AddrPort(), w.VirtualServer.VSKey, err)
		}
	}
	return errs
}
