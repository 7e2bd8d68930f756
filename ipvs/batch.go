package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
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
	buf    []byte // a train's requests, kept between trains
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

// trainAnswers holds the buffers sendTrain reads answers into: 64 KiB
// each, one per train of 256 requests (a first sync at 10k Services sends
// about 470 trains).
var trainAnswers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// errNoAnswer is a write's error when the batch's last ACK never came:
// the write may or may not have been applied.
var errNoAnswer = errors.New("no answer from the kernel")

// write sends writes (at most BatchWrites, every one of a batchable Op)
// in one sendmsg; errs[i] is writes[i]'s.
func (b *batchSocket) write(writes []Write, errs []error) {
	first := b.seq + 1
	b.buf = b.buf[:0]
	var svc []byte // the service attribute of the last virtual server
	var svcOf VirtualServer
	for i, w := range writes {
		v := w.VirtualServer
		if w.Op == OpAddRealServer {
			v = VirtualServer{VSKey: v.VSKey} // moby sends only its identity
		}
		if svc == nil || v != svcOf {
			svc, svcOf = appendServiceAttr(svc[:0], v), v
		}
		b.seq++
		b.buf = appendWrite(b.buf, b.family, b.seq, trainFlags(i, len(writes)), w, svc)
	}
	sendTrain(b.s.GetFd(), b.buf, first, errs, "IPVS writes")
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
	rbp := trainAnswers.Get().(*[]byte)
	defer trainAnswers.Put(rbp)
	rb := *rbp
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

// appendWrite appends w (a batchable Op) to buf as one generic netlink
// request: the bytes moby/ipvs sends for the same call (TestAppendWrite
// holds them equal to its encoding), written in place. svc is the
// request's service attribute, encoded once per virtual server
// (appendServiceAttr): a first sync at 10k Services sends 110k requests,
// and encoding each through nl.RtAttr trees was 9 of a batch's 13.5 s of
// CPU under emulation, the kernel's own work 4.4 s.
func appendWrite(buf []byte, family uint16, seq uint32, flags int, w Write, svc []byte) []byte {
	cmd := uint8(ipvsCmdNewService)
	if w.Op == OpAddRealServer {
		cmd = ipvsCmdNewDest
	}
	start := len(buf)
	ne := binary.NativeEndian
	buf = ne.AppendUint32(buf, 0) // nlmsghdr's length, set below
	buf = ne.AppendUint16(buf, family)
	buf = ne.AppendUint16(buf, uint16(unix.NLM_F_REQUEST|flags))
	buf = ne.AppendUint32(buf, seq)
	buf = ne.AppendUint32(buf, 0)   // pid: the kernel's
	buf = append(buf, cmd, 1, 0, 0) // genlmsghdr, version 1
	buf = append(buf, svc...)
	if w.Op == OpAddRealServer {
		buf = appendDestinationAttr(buf, w.RealServer)
	}
	ne.PutUint32(buf[start:], uint32(len(buf)-start))
	return buf
}

// appendServiceAttr appends the service attribute of v as moby/ipvs's
// fillService writes it: the identity, and with full the scheduling too
// (moby always sends it).
func appendServiceAttr(buf []byte, v VirtualServer) []byte {
	s := toService(v)
	ne := binary.NativeEndian
	nest := len(buf)
	buf = append(buf, 0, 0, 0, 0)
	buf = appendAttr(buf, ipvsSvcAttrAF, ne.AppendUint16(nil, s.AddressFamily))
	if s.FWMark != 0 {
		buf = appendAttr(buf, ipvsSvcAttrFWMark, ne.AppendUint32(nil, s.FWMark))
	} else {
		buf = appendAttr(buf, ipvsSvcAttrProtocol, ne.AppendUint16(nil, s.Protocol))
		buf = appendAttr(buf, ipvsSvcAttrAddr, rawIP(s.Address))
		buf = appendAttr(buf, ipvsSvcAttrPort, binary.BigEndian.AppendUint16(nil, s.Port))
	}
	buf = appendAttr(buf, ipvsSvcAttrSchedName, append([]byte(s.SchedName), 0))
	buf = appendAttr(buf, ipvsSvcAttrFlags, ne.AppendUint32(ne.AppendUint32(nil, s.Flags), 0xffffffff))
	buf = appendAttr(buf, ipvsSvcAttrTimeout, ne.AppendUint32(nil, s.Timeout))
	buf = appendAttr(buf, ipvsSvcAttrNetmask, ne.AppendUint32(nil, s.Netmask))
	return endNest(buf, nest, ipvsCmdAttrService)
}

// appendDestinationAttr appends r as moby/ipvs's fillDestination writes
// it (a masquerading destination, toDestination), without allocating.
func appendDestinationAttr(buf []byte, r RealServer) []byte {
	ne := binary.NativeEndian
	var u32 [4]byte
	u32attr := func(buf []byte, typ uint16, v uint32) []byte {
		ne.PutUint32(u32[:], v)
		return appendAttr(buf, typ, u32[:])
	}
	nest := len(buf)
	buf = append(buf, 0, 0, 0, 0)
	a := r.Address.Unmap()
	if a.Is4() {
		b := a.As4()
		buf = appendAttr(buf, ipvsDestAttrAddr, b[:])
	} else {
		b := a.As16()
		buf = appendAttr(buf, ipvsDestAttrAddr, rawIP(b[:]))
	}
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], r.Port)
	buf = appendAttr(buf, ipvsDestAttrPort, port[:])
	buf = u32attr(buf, ipvsDestAttrFwdMethod, mobyipvs.ConnectionFlagMasq&mobyipvs.ConnectionFlagFwdMask)
	buf = u32attr(buf, ipvsDestAttrWeight, uint32(r.Weight))
	buf = u32attr(buf, ipvsDestAttrUThresh, 0)
	buf = u32attr(buf, ipvsDestAttrLThresh, 0)
	return endNest(buf, nest, ipvsCmdAttrDest)
}

// appendAttr appends one netlink attribute, padded to 4 bytes; its
// length counts the data, not the padding.
func appendAttr(buf []byte, typ uint16, data []byte) []byte {
	ne := binary.NativeEndian
	buf = ne.AppendUint16(buf, uint16(4+len(data)))
	buf = ne.AppendUint16(buf, typ)
	buf = append(buf, data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	return buf
}

// endNest sets the header of the nested attribute begun at nest: its
// length spans its attributes, padding included.
func endNest(buf []byte, nest int, typ uint16) []byte {
	binary.NativeEndian.PutUint16(buf[nest:], uint16(len(buf)-nest))
	binary.NativeEndian.PutUint16(buf[nest+2:], typ)
	return buf
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
	// send[j] is writes[at(j)]: writes itself when all can be batched, as
	// they always are from the reconciler (a copy grown write by write
	// was 58 MB of a first sync's garbage at 10k Services).
	send, index := writes, []int(nil)
	at := func(j int) int {
		if index == nil {
			return j
		}
		return index[j]
	}
	if slices.ContainsFunc(writes, func(w Write) bool { return !batchable(w.Op) }) {
		send = make([]Write, 0, len(writes))
		index = make([]int, 0, len(writes))
		for i, w := range writes {
			if !batchable(w.Op) {
				errs[i] = fmt.Errorf("%s cannot be batched", w.Op)
				continue
			}
			send, index = append(send, w), append(index, i)
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.batch == nil {
		b, err := newBatchSocket(k.netns)
		if err != nil {
			for j := range send {
				errs[at(j)] = err
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
			errs[at(j)] = fmt.Errorf("add virtual server %s: %w", w.VirtualServer, err)
		} else {
			errs[at(j)] = fmt.Errorf("add real server %s to %s: %w", w.RealServer.AddrPort(), w.VirtualServer.VSKey, err)
		}
	}
	return errs
}
