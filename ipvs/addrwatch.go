package ipvs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// WatchAddresses calls onChange whenever an address is added to or
// removed from a link of the calling thread's network namespace, except
// the link named ignore (kube-ipvs0: its addresses are the proxier's own
// doing, and there are thousands). A VIP that fails over, a new
// interface or a second IP then reaches the proxier within its minimum
// sync period instead of at its next full sync. It returns once
// subscribed; the watch runs until ctx ends. When notifications are lost
// (the socket overflowed), it calls onChange, since a change may be
// among those lost.
//
// The first notification from ignore attaches a socket filter that drops
// ignore's notifications in the kernel: a first sync at 10k Services adds
// 10k addresses to kube-ipvs0, and receiving (and skipping) each of them
// cost nftvs 1.9 s of CPU under emulation, beside its IPVS writes.
func WatchAddresses(ctx context.Context, ignore string, onChange func()) error {
	w, err := newAddrWatch(ignore)
	if err != nil {
		return err
	}
	go w.run(ctx, onChange)
	return nil
}

// addrWatch is a NETLINK_ROUTE socket subscribed to the IPv4 and IPv6
// address groups.
type addrWatch struct {
	fd     int
	ignore string
	// links looks up link names in the watch's own namespace (the
	// reader runs on any thread).
	links *netlink.Handle
	// filtered is ignore's link index once its notifications are dropped
	// in the kernel; ignoredAfter counts those that arrived anyway since
	// (for tests).
	filtered     atomic.Int32
	ignoredAfter atomic.Int64
}

func newAddrWatch(ignore string) (*addrWatch, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("subscribe to address changes: %w", err)
	}
	links, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("subscribe to address changes: %w", err)
	}
	w := &addrWatch{fd: fd, ignore: ignore, links: links}
	// Room for bursts (a first sync's own addresses arrive before the
	// filter is on); FORCE needs CAP_NET_ADMIN, which nftvs has.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	// A receive that times out lets the reader see ctx end.
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		w.close()
		return nil, fmt.Errorf("subscribe to address changes: receive timeout: %w", err)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}
	if err := unix.Bind(fd, sa); err != nil {
		w.close()
		return nil, fmt.Errorf("subscribe to address changes: %w", err)
	}
	return w, nil
}

func (w *addrWatch) close() {
	unix.Close(w.fd)
	w.links.Close()
}

func (w *addrWatch) run(ctx context.Context, onChange func()) {
	defer w.close()
	buf := make([]byte, 64<<10)
	ignored := -1 // ignore's link index, once seen
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			// The socket overflowed: notifications were lost, and a
			// change may be among them. The socket stays subscribed.
			klog.V(2).InfoS("Address notifications lost (socket overflowed); rechecking the node's addresses")
			onChange()
			continue
		case err != nil:
			klog.ErrorS(err, "Reading the node's address changes; rechecking its addresses, and reading again in a second")
			onChange()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for i := range msgs {
			index, addr, ok := parseAddrMessage(&msgs[i])
			if !ok || !serviceable(addr) {
				continue
			}
			if index == ignored {
				if index == int(w.filtered.Load()) {
					w.ignoredAfter.Add(1) // the filter let it through
				}
				continue
			}
			if l, err := w.links.LinkByIndex(index); err == nil && l.Attrs().Name == w.ignore {
				ignored = index
				w.dropInKernel(index)
				continue
			}
			klog.V(2).InfoS("Address changed", "address", addr.String(), "linkIndex", index, "added", msgs[i].Header.Type == unix.RTM_NEWADDR)
			onChange()
		}
	}
}

// dropInKernel attaches a classic BPF filter that drops every
// notification about link index (the ifaddrmsg's ifa_index, right after
// the 16-byte netlink header, in host byte order; BPF loads big-endian).
// Address notifications come one message to a datagram. Without the
// filter the watch still works: it skips them here.
func (w *addrWatch) dropInKernel(index int) {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], uint32(index))
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: unix.SizeofNlMsghdr + 4},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: binary.BigEndian.Uint32(b[:])},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(w.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		klog.V(2).InfoS("Not filtering the dummy link's address notifications in the kernel; skipping them here", "link", w.ignore, "err", err)
		return
	}
	w.filtered.Store(int32(index))
}

// parseAddrMessage is an RTM_NEWADDR or RTM_DELADDR's link index and
// address (IFA_LOCAL when present: on a point-to-point link IFA_ADDRESS
// is the peer's).
func parseAddrMessage(m *syscall.NetlinkMessage) (index int, addr net.IP, ok bool) {
	if m.Header.Type != unix.RTM_NEWADDR && m.Header.Type != unix.RTM_DELADDR || len(m.Data) < unix.SizeofIfAddrmsg {
		return 0, nil, false
	}
	index = int(binary.NativeEndian.Uint32(m.Data[4:8]))
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil {
		return 0, nil, false
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFA_LOCAL:
			return index, net.IP(a.Value), true
		case unix.IFA_ADDRESS:
			addr = net.IP(a.Value)
		}
	}
	return index, addr, addr != nil
}

// serviceable says whether an address can matter to Services: loopback
// and link-local ones never do (nftvs refuses them as Service addresses
// and serves no node port on them). Every veth a pod starts with gains
// an IPv6 link-local address, which must not replan every Service.
func serviceable(ip net.IP) bool {
	return ip != nil && !ip.IsLoopback() && !ip.IsLinkLocalUnicast()
}
