package app

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/ipvs"
)

// hostAddresses lists the addresses of every link of this network
// namespace over rtnetlink.
func hostAddresses() ([]config.InterfaceAddress, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var addrs []netlink.Addr
	for range 5 { // a dump interrupted by a concurrent change is retried
		addrs, err = netlink.AddrList(nil, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := make([]config.InterfaceAddress, 0, len(addrs))
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		out = append(out, config.InterfaceAddress{Link: names[a.LinkIndex], Addr: ip.Unmap()})
	}
	return out, nil
}

// localAddresses are the node's own addresses (config.LocalAddresses)
// among every link's but kube-ipvs0's.
func localAddresses() ([]netip.Addr, error) {
	all, err := hostAddresses()
	if err != nil {
		return nil, err
	}
	host := make([]netip.Addr, 0, len(all))
	for _, ia := range all {
		if ia.Link != ipvs.DummyName {
			host = append(host, ia.Addr)
		}
	}
	return config.LocalAddresses(host), nil
}
