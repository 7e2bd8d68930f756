package ipvs

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

// WatchAddresses calls onChange whenever an address is added to or
// removed from a link of the calling thread's network namespace, except
// the link named ignore (kube-ipvs0: its addresses are the proxier's own
// doing, and there are thousands). A VIP that fails over, a new
// interface or a second IP then reaches the proxier within its minimum
// sync period instead of at its next full sync. It returns once
// subscribed; the watch runs until ctx ends. When notifications are lost
// (the socket overflowed), it subscribes again and calls onChange, since
// a change may be among those lost.
func WatchAddresses(ctx context.Context, ignore string, onChange func()) error {
	sub, err := subscribeAddresses(ctx)
	if err != nil {
		return err
	}
	go func() {
		ignored := -1 // ignore's link index, once seen
		for {
			for u := range sub {
				if u.LinkIndex == ignored || !serviceable(u.LinkAddress.IP) {
					continue
				}
				if l, err := netlink.LinkByIndex(u.LinkIndex); err == nil && l.Attrs().Name == ignore {
					ignored = u.LinkIndex
					continue
				}
				klog.V(2).InfoS("Address changed", "address", u.LinkAddress.String(), "linkIndex", u.LinkIndex, "added", u.NewAddr)
				onChange()
			}
			if ctx.Err() != nil {
				return
			}
			for sub = nil; sub == nil; {
				if sub, err = subscribeAddresses(ctx); err != nil {
					klog.ErrorS(err, "Watching the node's addresses again; retrying in a second")
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Second):
					}
				}
			}
			onChange()
		}
	}()
	return nil
}

// serviceable says whether an address can matter to Services: loopback
// and link-local ones never do (nftvs refuses them as Service addresses
// and serves no node port on them). Every veth a pod starts with gains
// an IPv6 link-local address, which must not replan every Service.
func serviceable(ip net.IP) bool {
	return ip != nil && !ip.IsLoopback() && !ip.IsLinkLocalUnicast()
}

// subscribeAddresses subscribes to RTM_NEWADDR and RTM_DELADDR; the
// channel closes when ctx ends or the subscription fails.
func subscribeAddresses(ctx context.Context) (<-chan netlink.AddrUpdate, error) {
	ch := make(chan netlink.AddrUpdate, 1024)
	err := netlink.AddrSubscribeWithOptions(ch, ctx.Done(), netlink.AddrSubscribeOptions{
		// kube-ipvs0 gains an address per Service at the first sync:
		// room for them, so that a burst does not overflow the socket.
		ReceiveBufferSize:      8 << 20,
		ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			klog.V(2).InfoS("Address notifications", "err", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to address changes: %w", err)
	}
	return ch, nil
}
