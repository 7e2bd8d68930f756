package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Request is one IPVS write of a batch: Op is one of OpAddVirtualServer,
// OpUpdateVirtualServer, OpDeleteVirtualServer, OpAddRealServer,
// OpUpdateRealServer, OpDeleteRealServer. VirtualServer is the virtual
// server written, or, for a real server write, the one it belongs to
// (only its key counts).
type Request struct {
	Op            Op
	VirtualServer VirtualServer
	RealServer    RealServer
}

// Batcher is an Interface that can send many writes at once.
type Batcher interface {
	// WriteBatch sends reqs in order and returns one error per request,
	// each exactly what the matching Interface call would have returned
	// (same errno, same message), nil where the kernel accepted it. A
	// request the kernel refuses does not stop the ones after it.
	WriteBatch(reqs []Request) []error
}

// WriteBatch sends reqs through h: in batches if h is a Batcher, else one
// call at a time. Either way errs[i] is reqs[i]'s.
func WriteBatch(h Interface, reqs []Request) []error {
	if b, ok := h.(Batcher); ok {
		return b.WriteBatch(reqs)
	}
	return writeEach(h, reqs)
}

// writeEach is the one-at-a-time path, and the fallback of a batch.
func writeEach(h Interface, reqs []Request) []error {
	errs := make([]error, len(reqs))
	for i, r := range reqs {
		errs[i] = writeOne(h, r)
	}
	return errs
}

func writeOne(h Interface, r Request) error {
	switch r.Op {
	case OpAddVirtualServer:
		return h.AddVirtualServer(r.VirtualServer)
	case OpUpdateVirtualServer:
		return h.UpdateVirtualServer(r.VirtualServer)
	case OpDeleteVirtualServer:
		return h.DeleteVirtualServer(r.VirtualServer.VSKey)
	case OpAddRealServer:
		return h.AddRealServer(r.VirtualServer.VSKey, r.RealServer)
	case OpUpdateRealServer:
		return h.UpdateRealServer(r.VirtualServer.VSKey, r.RealServer)
	case OpDeleteRealServer:
		return h.DeleteRealServer(r.VirtualServer.VSKey, r.RealServer)
	}
	return fmt.Errorf("IPVS batch: %q is not a write", r.Op)
}

// wrap gives a request's kernel error the context the Interface call
// gives it, so a batched error reads and matches as the single one.
func (r Request) wrap(err error) error {
	if err == nil {
		return nil
	}
	key := r.VirtualServer.VSKey
	switch r.Op {
	case OpAddVirtualServer:
		return fmt.Errorf("add virtual server %s: %w", r.VirtualServer, err)
	case OpUpdateVirtualServer:
		return fmt.Errorf("update virtual server %s: %w", r.VirtualServer, err)
	case OpDeleteVirtualServer:
		return fmt.Errorf("delete virtual server %s: %w", key, err)
	case OpAddRealServer:
		return fmt.Errorf("add real server %s to %s: %w", r.RealServer.AddrPort(), key, err)
	case OpUpdateRealServer:
		return fmt.Errorf("update real server %s of %s to weight %d: %w", r.RealServer.AddrPort(), key, r.RealServer.Weight, err)
	case OpDeleteRealServer:
		return fmt.Errorf("delete real server %s from %s: %w", r.RealServer.AddrPort(), key, err)
	}
	return err
}

// IPVS generic netlink commands and attributes (include/uapi/linux/ip_vs.h),
// as moby/ipvs sends them.
const (
	ipvsCmdNewService = 1
	ipvsCmdSetService = 2
	ipvsCmdDelService = 3
	ipvsCmdNewDest    = 5
	ipvsCmdSetDest    = 6
	ipvsCmdDelDest    = 7

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAddressFamily = 1
	ipvsSvcAttrProtocol      = 2
	ipvsSvcAttrAddress       = 3
	ipvsSvcAttrPort          = 4
	ipvsSvcAttrFWMark        = 5
	ipvsSvcAttrSchedName     = 6
	ipvsSvcAttrFlags         = 7
	ipvsSvcAttrTimeout       = 8
	ipvsSvcAttrNetmask       = 9

	ipvsDestAttrAddress          = 1
	ipvsDestAttrPort             = 2
	ipvsDestAttrForwardingMethod = 3
	ipvsDestAttrWeight           = 4
	ipvsDestAttrUpperThreshold   = 5
	ipvsDestAttrLowerThreshold   = 6

	genlCtrlID            = 0x10
	genlCtrlCmdGetFamily  = 3
	genlCtrlAttrFamilyID  = 1
	genlCtrlAttrFamilyNam = 2
)

// batchSize is how many requests go in one sendmsg. The kernel answers
// each with an ACK queued on the socket before sendmsg returns; an ACK
// that does not fit the receive buffer is dropped (ENOBUFS). 256 ACKs
// take well under the 4 MiB the socket asks for, and under the default
// rmem_max (≈208 KiB, doubled) when it cannot have more.
const batchSize = 256

// genlConn is a generic netlink socket for IPVS writes that sends many
// requests per sendmsg, each with NLM_F_ACK and its own sequence
// number, and reads the answers back by sequence number.
type genlConn struct {
	sock   *nl.NetlinkSocket
	fd     int
	family uint16
	seq    uint32
	out    []byte // one sendmsg, reused
	in     []byte // one recvfrom, reused (not zeroed)
}

// openGenl opens the socket in the namespace at netnsPath ("" is the
// calling thread's) and resolves the IPVS family.
func openGenl(netnsPath string) (*genlConn, error) {
	ns := netns.None()
	if netnsPath != "" {
		h, err := netns.GetFromPath(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
		}
		defer h.Close()
		ns = h
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_GENERIC)
	if err != nil {
		return nil, err
	}
	c := &genlConn{sock: sock, fd: sock.GetFd(), in: make([]byte, 1<<16)}
	// Room for every ACK of a batch; SO_RCVBUFFORCE needs CAP_NET_ADMIN,
	// which nftvs has, SO_RCVBUF is capped at rmem_max.
	if unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	// An error ACK then carries only the request's header, not its body.
	_ = unix.SetsockoptInt(c.fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// A lost answer must not hang a sync forever.
	tv := unix.Timeval{Sec: 30}
	_ = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := c.resolveFamily(); err != nil {
		sock.Close()
		return nil, fmt.Errorf("resolve the IPVS generic netlink family: %w", err)
	}
	return c, nil
}

func (c *genlConn) Close() { c.sock.Close() }

func (c *genlConn) resolveFamily() error {
	attr := nl.NewRtAttr(genlCtrlAttrFamilyNam, nl.ZeroTerminated("IPVS")).Serialize()
	c.out = c.out[:0]
	c.out = c.appendMsg(c.out, genlCtrlID, genlCtrlCmdGetFamily, attr)
	seq := c.seq
	if err := unix.Sendto(c.fd, c.out, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	for {
		msgs, err := c.receive()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			if m.Header.Type == unix.NLMSG_ERROR {
				if e := ackErrno(m.Data); e != 0 {
					return e
				}
				return errors.New("no answer")
			}
			if len(m.Data) < 4 {
				return errors.New("short answer")
			}
			attrs, err := nl.ParseRouteAttr(m.Data[4:])
			if err != nil {
				return err
			}
			for _, a := range attrs {
				if a.Attr.Type == genlCtrlAttrFamilyID && len(a.Value) >= 2 {
					c.family = nl.NativeEndian().Uint16(a.Value)
					return nil
				}
			}
			return errors.New("no family id in the answer")
		}
	}
}

// appendMsg appends one request (NLM_F_REQUEST|NLM_F_ACK, the next
// sequence number) to b.
func (c *genlConn) appendMsg(b []byte, family uint16, cmd uint8, attrs ...[]byte) []byte {
	c.seq++
	n := unix.NLMSG_HDRLEN + 4
	for _, a := range attrs {
		n += len(a)
	}
	ne := binary.NativeEndian
	b = ne.AppendUint32(b, uint32(n))
	b = ne.AppendUint16(b, family)
	b = ne.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	b = ne.AppendUint32(b, c.seq)
	b = ne.AppendUint32(b, 0) // the kernel fills in our port id
	b = append(b, cmd, 1, 0, 0)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func (c *genlConn) receive() ([]syscall.NetlinkMessage, error) {
	n, _, err := unix.Recvfrom(c.fd, c.in, 0)
	if err != nil {
		return nil, err
	}
	if n < unix.NLMSG_HDRLEN {
		return nil, fmt.Errorf("short netlink read: %d bytes", n)
	}
	return syscall.ParseNetlinkMessage(c.in[:n])
}

// ackErrno is the errno of an NLMSG_ERROR body, 0 for an ACK.
func ackErrno(data []byte) syscall.Errno {
	if len(data) < 4 {
		return syscall.EBADMSG
	}
	return syscall.Errno(-int32(nl.NativeEndian().Uint32(data[:4])))
}

// errBatch is a batch that failed as a whole: what it holds is unknown.
type errBatch struct{ err error }

func (e errBatch) Error() string { return "IPVS batch: " + e.err.Error() }

// send writes reqs (at most batchSize) in one sendmsg and returns each
// one's kernel errno (0: accepted). answered[i] says whether request i got
// its answer; when the batch fails as a whole (the send, or a read:
// ENOBUFS, timeout), err says why and the unanswered ones are unknown.
func (c *genlConn) send(reqs []Request) (errnos []syscall.Errno, answered []bool, err error) {
	c.out = c.out[:0]
	first := c.seq + 1
	for _, r := range reqs {
		cmd, attrs := encode(r)
		c.out = c.appendMsg(c.out, c.family, cmd, attrs...)
	}
	errnos = make([]syscall.Errno, len(reqs))
	answered = make([]bool, len(reqs))
	if err := unix.Sendto(c.fd, c.out, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return errnos, answered, errBatch{fmt.Errorf("send %d requests: %w", len(reqs), err)}
	}
	left := len(reqs)
	for left > 0 {
		msgs, err := c.receive()
		if err != nil {
			return errnos, answered, errBatch{fmt.Errorf("read answers (%d of %d missing): %w", left, len(reqs), err)}
		}
		for _, m := range msgs {
			i := int(m.Header.Seq - first) // wraps to a large int for a stale answer
			if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq-first >= uint32(len(reqs)) || answered[i] {
				continue // a late answer of an earlier, failed batch
			}
			errnos[i], answered[i] = ackErrno(m.Data), true
			left--
		}
	}
	return errnos, answered, nil
}

// encode builds a request's command and attributes exactly as moby/ipvs
// does for the matching Handle call (toService, toDestination).
func encode(r Request) (uint8, [][]byte) {
	svc := serviceAttr(toService(r.VirtualServer))
	switch r.Op {
	case OpAddVirtualServer:
		return ipvsCmdNewService, [][]byte{svc}
	case OpUpdateVirtualServer:
		return ipvsCmdSetService, [][]byte{svc}
	case OpDeleteVirtualServer:
		return ipvsCmdDelService, [][]byte{serviceAttr(toService(VirtualServer{VSKey: r.VirtualServer.VSKey}))}
	}
	svc = serviceAttr(toService(VirtualServer{VSKey: r.VirtualServer.VSKey}))
	dest := destinationAttr(toDestination(r.RealServer))
	switch r.Op {
	case OpAddRealServer:
		return ipvsCmdNewDest, [][]byte{svc, dest}
	case OpUpdateRealServer:
		return ipvsCmdSetDest, [][]byte{svc, dest}
	default:
		return ipvsCmdDelDest, [][]byte{svc, dest}
	}
}

func serviceAttr(s *mobyipvs.Service) []byte {
	a := nl.NewRtAttr(ipvsCmdAttrService, nil)
	a.AddRtAttr(ipvsSvcAttrAddressFamily, nl.Uint16Attr(s.AddressFamily))
	if s.FWMark != 0 {
		a.AddRtAttr(ipvsSvcAttrFWMark, nl.Uint32Attr(s.FWMark))
	} else {
		a.AddRtAttr(ipvsSvcAttrProtocol, nl.Uint16Attr(s.Protocol))
		a.AddRtAttr(ipvsSvcAttrAddress, rawIP(s.Address))
		a.AddRtAttr(ipvsSvcAttrPort, binary.BigEndian.AppendUint16(nil, s.Port))
	}
	a.AddRtAttr(ipvsSvcAttrSchedName, nl.ZeroTerminated(s.SchedName))
	flags := struct{ flags, mask uint32 }{s.Flags, 0xffffffff}
	a.AddRtAttr(ipvsSvcAttrFlags, (*[8]byte)(unsafe.Pointer(&flags))[:])
	a.AddRtAttr(ipvsSvcAttrTimeout, nl.Uint32Attr(s.Timeout))
	a.AddRtAttr(ipvsSvcAttrNetmask, nl.Uint32Attr(s.Netmask))
	return a.Serialize()
}

func destinationAttr(d *mobyipvs.Destination) []byte {
	a := nl.NewRtAttr(ipvsCmdAttrDest, nil)
	a.AddRtAttr(ipvsDestAttrAddress, rawIP(d.Address))
	a.AddRtAttr(ipvsDestAttrPort, binary.BigEndian.AppendUint16(nil, d.Port))
	a.AddRtAttr(ipvsDestAttrForwardingMethod, nl.Uint32Attr(d.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask))
	a.AddRtAttr(ipvsDestAttrWeight, nl.Uint32Attr(uint32(d.Weight)))
	a.AddRtAttr(ipvsDestAttrUpperThreshold, nl.Uint32Attr(d.UpperThreshold))
	a.AddRtAttr(ipvsDestAttrLowerThreshold, nl.Uint32Attr(d.LowerThreshold))
	return a.Serialize()
}

func rawIP(ip []byte) []byte {
	if len(ip) == 16 {
		if v4 := ip[12:]; string(ip[:12]) == "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff" {
			return v4
		}
	}
	return ip
}

// WriteBatch sends reqs batchSize per sendmsg on a socket of its own and
// maps each answer back to its request by sequence number; the kernel
// goes on after a refused request, so each error is that request's alone,
// as if sent alone. When a batch fails as a whole (the send fails, or an
// answer is lost: ENOBUFS, timeout), its requests left without an answer
// are sent again one at a time through the single calls. A request the
// kernel had already applied then answers as a repeated one would
// (EEXIST on an add, ENOENT or ESRCH on a delete), which the Reconciler
// takes as it takes drift.
func (k *Kernel) WriteBatch(reqs []Request) []error {
	if k.batch == nil {
		return writeEach(k, reqs)
	}
	errs := make([]error, len(reqs))
	for start := 0; start < len(reqs); start += batchSize {
		chunk := reqs[start:min(start+batchSize, len(reqs))]
		k.mu.Lock()
		errnos, answered, err := k.batch.send(chunk)
		k.mu.Unlock()
		if err != nil {
			klog.V(2).InfoS("IPVS batch failed; sending its unanswered requests one at a time", "err", err)
		}
		for i, r := range chunk {
			switch {
			case !answered[i]:
				errs[start+i] = writeOne(k, r)
			case errnos[i] != 0:
				errs[start+i] = r.wrap(errnos[i])
			}
		}
	}
	return errs
}

// WriteBatch counts each request as the single call would be counted.
func (c *Counting) WriteBatch(reqs []Request) []error {
	c.count(func(w *WriteCounts) {
		for _, r := range reqs {
			w.count(r.Op)
		}
	})
	return WriteBatch(c.Interface, reqs)
}

// count adds one write of kind op.
func (w *WriteCounts) count(op Op) {
	switch op {
	case OpAddVirtualServer:
		w.AddVirtualServer++
	case OpUpdateVirtualServer:
		w.UpdateVirtualServer++
	case OpDeleteVirtualServer:
		w.DeleteVirtualServer++
	case OpAddRealServer:
		w.AddRealServer++
	case OpUpdateRealServer:
		w.UpdateRealServer++
	case OpDeleteRealServer:
		w.DeleteRealServer++
	}
}
