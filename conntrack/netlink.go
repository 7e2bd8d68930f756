package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/nftvs/nftvs/internal/l4"
	"net/netip"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ctnetlink message types and attributes, from
// include/uapi/linux/netfilter/nfnetlink_conntrack.h.
const (
	ipctnlMsgCtNew    = 0
	ipctnlMsgCtGet    = 1
	ipctnlMsgCtDelete = 2

	ipctnlMsgCtGetStats   = 5
	ctaStatsGlobalEntries = 1

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaMark       = 8
	ctaID         = 12
	ctaZone       = 18
	ctaMarkMask   = 21

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

	sizeofNfgenmsg = 4
)

const (
	// recvBufferSize holds any one netlink datagram: the kernel caps a
	// dump's datagrams at 32 KiB.
	recvBufferSize = 128 << 10
	// socketBuffer is the receive buffer asked for, so that the error
	// acknowledgements of a whole delete batch fit (each is its own skb).
	socketBuffer = 4 << 20
	// deleteBatch is the number of deletes sent in one datagram.
	deleteBatch = 128
	// defaultTimeout bounds one Clean; a dump of 500k entries takes about
	// 4 s on a 2-vCPU VM.
	defaultTimeout = 2 * time.Minute
)

// socket is a NETLINK_NETFILTER socket speaking ctnetlink.
type socket struct {
	fd       int
	seq      uint32
	deadline time.Time
	buf      []byte
}

// openSocket opens a ctnetlink socket in the network namespace nsFD, or in
// the current one when nsFD < 0.
func openSocket(nsFD int, timeout time.Duration) (*socket, error) {
	var fd int
	var err error
	if nsFD < 0 {
		fd, err = newNetfilterSocket()
	} else {
		fd, err = netfilterSocketAt(nsFD)
	}
	if err != nil {
		return nil, err
	}
	// The deadline bounds every wait, so that a kernel that never answers
	// cannot hang a sync.
	return &socket{fd: fd, seq: uint32(time.Now().UnixNano()), deadline: time.Now().Add(timeout), buf: make([]byte, recvBufferSize)}, nil
}

func newNetfilterSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind netfilter netlink socket: %w", err)
	}
	// Acknowledgements carry only the header of the request they answer.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	}
	return fd, nil
}

// netfilterSocketAt opens the socket on a thread that enters the target
// namespace; a socket stays in the namespace it was created in.
func netfilterSocketAt(nsFD int) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is unlocked only once back in its own namespace;
		// otherwise the runtime retires it when this goroutine exits.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{-1, fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(netns.NsHandle(nsFD)); err != nil {
			ch <- result{-1, fmt.Errorf("enter netns fd %d: %w", nsFD, err)}
			return
		}
		fd, err := newNetfilterSocket()
		if rerr := netns.Set(orig); rerr != nil {
			if fd >= 0 {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("return from netns fd %d: %w", nsFD, rerr)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

func (s *socket) close() { unix.Close(s.fd) }

func (s *socket) nextSeq() uint32 {
	s.seq++
	return s.seq
}

func (s *socket) send(b []byte) error {
	if err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send to ctnetlink: %w", err)
	}
	return nil
}

// recv reads one datagram and returns its messages' bytes (valid until the
// next recv). Each wait is bounded by what is left of the deadline.
func (s *socket) recv() ([]byte, error) {
	// Interrupted receives (a socket with a receive timeout is not
	// restarted after a signal) are retried until the deadline.
	for {
		left := time.Until(s.deadline)
		if left <= 0 {
			return nil, fmt.Errorf("receive from ctnetlink: %w", errTimeout)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, fmt.Errorf("set netlink receive timeout: %w", err)
		}
		n, _, err := unix.Recvfrom(s.fd, s.buf, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil, fmt.Errorf("receive from ctnetlink: %w", errTimeout)
		case err != nil:
			return nil, fmt.Errorf("receive from ctnetlink: %w", err)
		case n >= len(s.buf):
			return nil, fmt.Errorf("receive from ctnetlink: datagram larger than %d bytes", len(s.buf))
		}
		return s.buf[:n], nil
	}
}

var errTimeout = errors.New("timed out")

// message is one netlink message of a datagram.
type message struct {
	typ, flags uint16
	seq        uint32
	payload    []byte
}

// forEachMessage calls fn for each message of a datagram; an error from fn
// stops the walk.
func forEachMessage(b []byte, fn func(message) error) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return fmt.Errorf("short netlink message header (%d bytes)", len(b))
		}
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return fmt.Errorf("bad netlink message length %d (%d left)", l, len(b))
		}
		m := message{
			typ:     binary.NativeEndian.Uint16(b[4:6]),
			flags:   binary.NativeEndian.Uint16(b[6:8]),
			seq:     binary.NativeEndian.Uint32(b[8:12]),
			payload: b[unix.SizeofNlMsghdr:l],
		}
		if err := fn(m); err != nil {
			return err
		}
		b = b[min(align4(l), len(b)):]
	}
	return nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// nlError decodes an NLMSG_ERROR payload: the errno (0 for an
// acknowledgement) and the sequence number of the request it answers.
func nlError(p []byte) (syscall.Errno, uint32, error) {
	if len(p) < 4+unix.SizeofNlMsghdr {
		return 0, 0, fmt.Errorf("short netlink error message (%d bytes)", len(p))
	}
	code := int32(binary.NativeEndian.Uint32(p[0:4]))
	seq := binary.NativeEndian.Uint32(p[4+8 : 4+12])
	return syscall.Errno(-code), seq, nil
}

// appendHeader appends a netlink and nfgenmsg header whose length is fixed
// later by finishMessage.
func appendHeader(b []byte, msgType, flags uint16, seq uint32, family uint8) []byte {
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = binary.NativeEndian.AppendUint16(b, msgType)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel's
	return append(b, family, unix.NFNETLINK_V0, 0, 0)
}

func finishMessage(b []byte, start int) []byte {
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// appendAttr appends one attribute, padded to four bytes.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// appendRawAttr appends an attribute copied whole (header included) from a
// kernel message, padded to four bytes.
func appendRawAttr(b, attr []byte) []byte {
	b = append(b, attr...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// forEachAttr walks attributes; fn gets the type (flags masked), the value
// and the whole attribute.
func forEachAttr(b []byte, fn func(typ uint16, value, whole []byte)) error {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < 4 || l > len(b) {
			return fmt.Errorf("bad netlink attribute length %d (%d left)", l, len(b))
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[4:l], b[:l])
		b = b[min(align4(l), len(b)):]
	}
	return nil
}

// entry is what the cleaner reads of one dumped conntrack entry. The raw
// attributes alias the receive buffer.
type entry struct {
	family    uint8
	proto     uint8
	origSrc   netip.AddrPort
	origDst   netip.AddrPort
	replySrc  netip.AddrPort
	origTuple []byte // CTA_TUPLE_ORIG, whole
	id        []byte // CTA_ID, whole
	zone      []byte // CTA_ZONE, whole
}

// parseEntry reads one dumped entry into e (reused across entries, so that
// a dump allocates nothing per entry).
func parseEntry(e *entry, p []byte) error {
	*e = entry{}
	if len(p) < sizeofNfgenmsg {
		return fmt.Errorf("short ctnetlink message (%d bytes)", len(p))
	}
	e.family = p[0]
	var terr error
	err := forEachAttr(p[sizeofNfgenmsg:], func(typ uint16, v, whole []byte) {
		switch typ {
		case ctaTupleOrig:
			e.origTuple = whole
			var proto uint8
			proto, e.origSrc, e.origDst, terr = parseTuple(v)
			e.proto = proto
		case ctaTupleReply:
			var err error
			if _, e.replySrc, _, err = parseTuple(v); err != nil && terr == nil {
				terr = err
			}
		case ctaID:
			e.id = whole
		case ctaZone:
			e.zone = whole
		}
	})
	if err == nil {
		err = terr
	}
	return err
}

// parseTuple reads a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY value: protocol and
// source and destination address and port (ports stay zero for protocols
// without them).
func parseTuple(b []byte) (proto uint8, src, dst netip.AddrPort, err error) {
	var srcIP, dstIP netip.Addr
	var sport, dport uint16
	var inner error
	err = forEachAttr(b, func(typ uint16, v, _ []byte) {
		switch typ {
		case ctaTupleIP:
			inner = errors.Join(inner, forEachAttr(v, func(typ uint16, v, _ []byte) {
				switch {
				case (typ == ctaIPv4Src || typ == ctaIPv4Dst) && len(v) == 4,
					(typ == ctaIPv6Src || typ == ctaIPv6Dst) && len(v) == 16:
					a, _ := netip.AddrFromSlice(v)
					if typ == ctaIPv4Src || typ == ctaIPv6Src {
						srcIP = a
					} else {
						dstIP = a
					}
				}
			}))
		case ctaTupleProto:
			inner = errors.Join(inner, forEachAttr(v, func(typ uint16, v, _ []byte) {
				switch {
				case typ == ctaProtoNum && len(v) >= 1:
					proto = v[0]
				case typ == ctaProtoSrcPort && len(v) >= 2:
					sport = binary.BigEndian.Uint16(v)
				case typ == ctaProtoDstPort && len(v) >= 2:
					dport = binary.BigEndian.Uint16(v)
				}
			}))
		}
	})
	if err == nil {
		err = inner
	}
	return proto, netip.AddrPortFrom(srcIP, sport), netip.AddrPortFrom(dstIP, dport), err
}

// dump walks the conntrack table once. family narrows it (AF_UNSPEC for
// all), attrs are extra request attributes (kernel-side filters); fn sees
// each entry, valid only during the call.
func (s *socket) dump(family uint8, attrs []byte, fn func(*entry)) (int, error) {
	seq := s.nextSeq()
	req := appendHeader(nil, unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtGet, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, family)
	req = append(req, attrs...)
	if err := s.send(finishMessage(req, 0)); err != nil {
		return 0, fmt.Errorf("dump conntrack table: %w", err)
	}
	scanned := 0
	var e entry
	// Each datagram holds many entries and the table is finite; the
	// deadline bounds the loop should the kernel misbehave.
	for {
		b, err := s.recv()
		if err != nil {
			return scanned, fmt.Errorf("dump conntrack table after %d entries: %w", scanned, err)
		}
		done := false
		err = forEachMessage(b, func(m message) error {
			if m.seq != seq {
				return nil // an answer to an earlier request
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				done = true
				if len(m.payload) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.payload)); code < 0 {
						return syscall.Errno(-code)
					}
				}
			case unix.NLMSG_ERROR:
				code, _, err := nlError(m.payload)
				if err != nil {
					return err
				}
				if code != 0 {
					return code
				}
			case unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtNew:
				if err := parseEntry(&e, m.payload); err != nil {
					return err
				}
				scanned++
				fn(&e)
			}
			return nil
		})
		if err != nil {
			return scanned, fmt.Errorf("dump conntrack table after %d entries: %w", scanned, err)
		}
		if done {
			return scanned, nil
		}
	}
}

// count asks the kernel for the number of entries in the namespace's
// table: one round trip, no walk.
func (s *socket) count() (int, error) {
	seq := s.nextSeq()
	req := appendHeader(nil, unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtGetStats, unix.NLM_F_REQUEST, seq, unix.AF_UNSPEC)
	if err := s.send(finishMessage(req, 0)); err != nil {
		return 0, fmt.Errorf("get conntrack count: %w", err)
	}
	n := -1
	for range 8 { // the answer, after anything left from earlier requests
		b, err := s.recv()
		if err != nil {
			return 0, fmt.Errorf("get conntrack count: %w", err)
		}
		err = forEachMessage(b, func(m message) error {
			if m.seq != seq {
				return nil
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				code, _, err := nlError(m.payload)
				if err == nil && code != 0 {
					err = code
				}
				return err
			case unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtGetStats:
				if len(m.payload) < sizeofNfgenmsg {
					return fmt.Errorf("short ctnetlink message (%d bytes)", len(m.payload))
				}
				return forEachAttr(m.payload[sizeofNfgenmsg:], func(typ uint16, v, _ []byte) {
					if typ == ctaStatsGlobalEntries && len(v) == 4 {
						n = int(binary.BigEndian.Uint32(v))
					}
				})
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("get conntrack count: %w", err)
		}
		if n >= 0 {
			return n, nil
		}
	}
	return 0, fmt.Errorf("get conntrack count: no answer")
}

// doomed is a matched entry: the body of its delete request (original
// tuple, id and zone copied from the dump) and what to say about it.
type doomed struct {
	family uint8
	body   []byte
	desc   string
}

func newDoomed(e *entry) doomed {
	var body []byte
	body = appendRawAttr(body, e.origTuple)
	// With the id the kernel deletes only the entry that was dumped, not a
	// new connection that reused the tuple since (mostly: the kernel hashes
	// the id from the entry's address and original tuple, so a new entry
	// with the same tuple in the same slab slot has the same id).
	if e.id != nil {
		body = appendRawAttr(body, e.id)
	}
	if e.zone != nil {
		body = appendRawAttr(body, e.zone)
	}
	return doomed{
		family: e.family,
		body:   body,
		desc:   fmt.Sprintf("%s %s -> %s reply from %s", l4.FromNumber(e.proto), e.origSrc, e.origDst, e.replySrc),
	}
}

func startsWithTuple(body []byte) bool {
	return len(body) > 4 && binary.NativeEndian.Uint16(body[2:4])&nlaTypeMask == ctaTupleOrig
}

// deleteEntries deletes entries in batches of deleteBatch requests per
// datagram. Only the last request of a batch asks for an acknowledgement:
// the kernel handles a datagram's requests in order and reports every
// failure, so that acknowledgement arrives after all the batch's errors.
func (s *socket) deleteEntries(ds []doomed) (deleted, vanished int, err error) {
	var errs []error
	failed := 0
	for start := 0; start < len(ds); start += deleteBatch {
		batch := ds[start:min(start+deleteBatch, len(ds))]
		first := s.seq + 1
		var req []byte
		for i, d := range batch {
			if !startsWithTuple(d.body) {
				// A delete without a tuple flushes the whole table.
				return deleted, vanished, fmt.Errorf("internal error: delete of %s without a tuple", d.desc)
			}
			flags := uint16(unix.NLM_F_REQUEST)
			if i == len(batch)-1 {
				flags |= unix.NLM_F_ACK
			}
			at := len(req)
			req = appendHeader(req, unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtDelete, flags, s.nextSeq(), d.family)
			req = append(req, d.body...)
			req = finishMessage(req, at)
		}
		if err := s.send(req); err != nil {
			return deleted, vanished, errors.Join(append(errs, fmt.Errorf("delete %d conntrack entries: %w", len(batch), err))...)
		}
		bad := 0
		for done := false; !done; {
			b, err := s.recv()
			if err != nil {
				return deleted, vanished, errors.Join(append(errs, fmt.Errorf("delete %d conntrack entries: %w", len(batch), err))...)
			}
			err = forEachMessage(b, func(m message) error {
				if m.typ != unix.NLMSG_ERROR {
					return nil
				}
				code, seq, err := nlError(m.payload)
				if err != nil {
					return err
				}
				i := seq - first // wraps with the counter
				if i >= uint32(len(batch)) {
					return nil
				}
				if i == uint32(len(batch)-1) {
					done = true
				}
				switch {
				case code == 0:
				case code == unix.ENOENT:
					vanished++
					bad++
				default:
					failed++
					bad++
					if len(errs) < 3 {
						errs = append(errs, fmt.Errorf("delete conntrack entry %s: %w", batch[i].desc, code))
					}
				}
				return nil
			})
			if err != nil {
				return deleted, vanished, errors.Join(append(errs, fmt.Errorf("delete %d conntrack entries: %w", len(batch), err))...)
			}
		}
		deleted += len(batch) - bad
	}
	if failed > 0 {
		return deleted, vanished, fmt.Errorf("%d of %d stale conntrack entries not deleted: %w", failed, len(ds), errors.Join(errs...))
	}
	return deleted, vanished, nil
}
