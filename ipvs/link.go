package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DummyName is the link upstream kube-proxy's IPVS mode binds Service
// addresses to; nftvs keeps the name so `ip addr show kube-ipvs0` reads
// the same.
const DummyName = "kube-ipvs0"

// Addresses is the dummy link that holds every Service address (ClusterIP,
// ExternalIP, LoadBalancer IP) as a local /32 or /128, so the node accepts
// packets to them and IPVS's LOCAL_IN hook sees them. The link is kept DOWN,
// as kube-proxy keeps it: a local address needs no carrier, and a down link
// answers nothing itself.
type Addresses interface {
	// EnsureDummy creates the dummy link if it is missing and sets it
	// down if it is up. A link of that name that is not a dummy is an
	// error, and is left alone.
	EnsureDummy(name string) error
	// SyncAddresses makes the link hold exactly want (as /32 and /128):
	// it adds what is missing and removes what is not wanted. A wanted
	// address that already lives on another interface is not bound again;
	// those are reported in an *AddressInUseError (errors.As), which
	// alone means everything else was synced.
	SyncAddresses(name string, want []netip.Addr) (added, removed []netip.Addr, err error)
	// ReadAddresses reads what SyncAddresses diffs against: the
	// namespace's addresses, the link's and the others'.
	ReadAddresses(name string) (*AddressSnapshot, error)
	// SyncAddressesFrom is SyncAddresses diffing against an earlier
	// read: a periodic repair reads off the sync path. An address the
	// read saw wrongly is harmless: adding one held, or deleting one
	// gone, is not an error.
	SyncAddressesFrom(name string, want []netip.Addr, have *AddressSnapshot) (added, removed []netip.Addr, err error)
	// ListAddresses returns the link's addresses, sorted.
	ListAddresses(name string) ([]netip.Addr, error)
	// DeleteDummy deletes the link, if it exists, with its addresses.
	DeleteDummy(name string) error
}

// AddressInUseError lists wanted addresses that SyncAddresses left unbound
// because another interface already holds them (an ExternalIP or
// LoadBalancer IP that is the node's own, for example). The caller logs
// it; it is not a failure of the sync.
type AddressInUseError struct {
	Link  string // the dummy link
	InUse []AddressInUse
}

// AddressInUse is one address and the interface that holds it.
type AddressInUse struct {
	Addr netip.Addr
	Link string
}

func (e *AddressInUseError) Error() string {
	parts := make([]string, len(e.InUse))
	for i, a := range e.InUse {
		parts[i] = fmt.Sprintf("%s (on %s)", a.Addr, a.Link)
	}
	return fmt.Sprintf("not bound to %s, already on another interface: %s", e.Link, strings.Join(parts, ", "))
}

// AddressSnapshot is one read of a network namespace's addresses: those of
// one link (the dummy), and which link holds each other one.
type AddressSnapshot struct {
	own       map[netip.Addr]uint8 // prefix length
	elsewhere map[netip.Addr]int   // link index
}

// Has reports whether the link held a at the read.
func (s *AddressSnapshot) Has(a netip.Addr) bool {
	_, ok := s.own[a.Unmap()]
	return ok
}

// Elsewhere are the addresses the other links held at the read (the
// node's own addresses, when the link is kube-ipvs0), sorted.
func (s *AddressSnapshot) Elsewhere() []netip.Addr {
	out := make([]netip.Addr, 0, len(s.elsewhere))
	for a := range s.elsewhere {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// NetlinkAddresses is Addresses over rtnetlink.
type NetlinkAddresses struct {
	h *netlink.Handle
	// netnsPath is the namespace's ("" for the caller's), for the
	// batches' own socket (batch).
	netnsPath string
	seq       uint32
	// oneByOne adds addresses one netlink round trip each, as before
	// batch: for BenchmarkKernelAddresses's side by side.
	oneByOne bool
}

var _ Addresses = (*NetlinkAddresses)(nil)

// NewNetlinkAddresses manages links in the network namespace at netnsPath
// ("" is the calling thread's).
func NewNetlinkAddresses(netnsPath string) (*NetlinkAddresses, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if netnsPath == "" {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", netnsPath, err)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket: %w", err)
	}
	return &NetlinkAddresses{h: h, netnsPath: netnsPath}, nil
}

// Close closes the netlink socket.
func (n *NetlinkAddresses) Close() { n.h.Close() }

func (n *NetlinkAddresses) EnsureDummy(name string) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("look up link %s: %w", name, err)
		}
		err := n.h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create dummy link %s: %w", name, err)
		}
		if l, err = n.h.LinkByName(name); err != nil {
			return fmt.Errorf("look up link %s: %w", name, err)
		}
	}
	if l.Type() != "dummy" {
		return fmt.Errorf("link %s is a %s, not a dummy: not touching it", name, l.Type())
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		// Down, as upstream: an up dummy would answer neighbour
		// solicitations for the addresses itself. Taking it down drops
		// its IPv6 addresses; SyncAddresses puts them back.
		if err := n.h.LinkSetDown(l); err != nil {
			return fmt.Errorf("set link %s down: %w", name, err)
		}
	}
	return nil
}

func (n *NetlinkAddresses) DeleteDummy(name string) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if l.Type() != "dummy" {
		return fmt.Errorf("link %s is a %s, not a dummy: not deleting it", name, l.Type())
	}
	if err := n.h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// batch sends one RTM_NEWADDR (cmd, to add) or RTM_DELADDR per address
// for the link at index, encoded as netlink.AddrAdd and AddrDel encode
// them, BatchWrites per sendmsg on a socket of its own (sendTrain): a
// first sync at 10k Services adds 10k addresses, one round trip each
// before. errs[i] is addrs[i]'s.
func (n *NetlinkAddresses) batch(cmd int, index int, addrs []*netlink.Addr) []error {
	errs := make([]error, len(addrs))
	if len(addrs) == 0 {
		return errs
	}
	if n.oneByOne {
		link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: index}}
		for i, a := range addrs {
			if cmd == unix.RTM_NEWADDR {
				errs[i] = n.h.AddrAdd(link, a)
			} else {
				errs[i] = n.h.AddrDel(link, a)
			}
		}
		return errs
	}
	sock, err := trainSocket(n.netnsPath, unix.NETLINK_ROUTE)
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("open rtnetlink socket: %w", err)
		}
		return errs
	}
	defer sock.Close()
	flags := 0
	if cmd == unix.RTM_NEWADDR {
		flags = unix.NLM_F_CREATE | unix.NLM_F_EXCL
	}
	for start := 0; start < len(addrs); start += BatchWrites {
		chunk := addrs[start:min(start+BatchWrites, len(addrs))]
		first := n.seq + 1
		var buf []byte
		for i, a := range chunk {
			n.seq++
			req := nl.NewNetlinkRequest(cmd, flags|trainFlags(i, len(chunk)))
			req.Seq = n.seq
			encodeAddr(req, index, a)
			buf = append(buf, req.Serialize()...)
		}
		sendTrain(sock.GetFd(), buf, first, errs[start:start+len(chunk)], "address writes")
	}
	return errs
}

// encodeAddr is a's ifaddrmsg and attributes as netlink.AddrAdd sends
// them: the local address, the peer (the address itself without one),
// and for IPv4 a broadcast and label when a has or implies them.
func encodeAddr(req *nl.NetlinkRequest, index int, a *netlink.Addr) {
	ip := a.IP.To4()
	family := unix.AF_INET
	if ip == nil {
		ip, family = a.IP.To16(), unix.AF_INET6
	}
	msg := nl.NewIfAddrmsg(family)
	msg.Index, msg.Scope = uint32(index), uint8(a.Scope)
	mask := a.Mask
	peer := ip
	if a.Peer != nil {
		mask = a.Peer.Mask
		if peer = a.Peer.IP.To4(); family == unix.AF_INET6 {
			peer = a.Peer.IP.To16()
		}
	}
	prefixlen, _ := mask.Size()
	msg.Prefixlen = uint8(prefixlen)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, ip))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, peer))
	if family == unix.AF_INET {
		brd := a.Broadcast.To4()
		if brd == nil && prefixlen < 31 {
			brd = make([]byte, 4)
			for i := range brd {
				brd[i] = ip[i] | ^mask[len(mask)-4+i]
			}
		}
		if brd != nil && !brd.Equal(net.IPv4zero) {
			req.AddData(nl.NewRtAttr(unix.IFA_BROADCAST, brd))
		}
		if a.Label != "" {
			req.AddData(nl.NewRtAttr(unix.IFA_LABEL, nl.ZeroTerminated(a.Label)))
		}
	}
}

// linkAddr is one address of the namespace, as dumpAddresses reads it.
type linkAddr struct {
	addr      netip.Addr // unmapped
	index     int32      // its link's
	prefixLen uint8
}

// addrList dumps every address of every link; a dump interrupted by a
// concurrent change is retried, a few times.
//
// It reads the answers itself rather than through the netlink package's
// AddrList, which parses every attribute of every address into slices
// and structs of their own: at 10k Services, 20 MB of garbage a dump
// (kube-ipvs0 holds every ClusterIP), against 3 MB here.
func (n *NetlinkAddresses) addrList() ([]linkAddr, error) {
	var err error
	for range 5 {
		var addrs []linkAddr
		addrs, err = n.dumpAddresses()
		if err == nil {
			return addrs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list addresses: %w", err)
}

// dumpAddresses is one RTM_GETADDR dump of the namespace, over a socket
// of its own there, read by the netlink package's ExecuteIter (sequence,
// errors, NLM_F_DUMP_INTR) but parsed here.
func (n *NetlinkAddresses) dumpAddresses() ([]linkAddr, error) {
	sock, err := trainSocket(n.netnsPath, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket: %w", err)
	}
	defer sock.Close()
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfAddrmsg(unix.AF_UNSPEC))
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}}
	var out []linkAddr
	err = req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWADDR, func(m []byte) bool {
		if a, ok := parseAddrMsg(m); ok {
			out = append(out, a)
		}
		return true
	})
	return out, err
}

// parseAddrMsg reads one RTM_NEWADDR: an ifaddrmsg and its attributes.
// The address is IFA_LOCAL, or IFA_ADDRESS without it, as `ip addr`
// and the netlink package take it (IFA_ADDRESS is the peer of a
// point-to-point address).
func parseAddrMsg(b []byte) (linkAddr, bool) {
	if len(b) < unix.SizeofIfAddrmsg {
		return linkAddr{}, false
	}
	out := linkAddr{prefixLen: b[1], index: int32(nl.NativeEndian().Uint32(b[4:8]))}
	var local, address []byte
	for rest := b[unix.SizeofIfAddrmsg:]; len(rest) >= unix.SizeofRtAttr; {
		l := int(nl.NativeEndian().Uint16(rest[0:2]))
		if l < unix.SizeofRtAttr || l > len(rest) {
			break
		}
		switch nl.NativeEndian().Uint16(rest[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case unix.IFA_LOCAL:
			local = rest[unix.SizeofRtAttr:l]
		case unix.IFA_ADDRESS:
			address = rest[unix.SizeofRtAttr:l]
		}
		rest = rest[min((l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1), len(rest)):]
	}
	ip := local
	if ip == nil {
		ip = address
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return linkAddr{}, false
	}
	out.addr = a.Unmap()
	return out, true
}

// prefixAddr is a as the netlink package writes it, with its prefix
// length (an address is deleted by address and prefix).
func prefixAddr(a netip.Addr, bits uint8) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(int(bits), a.BitLen())}}
}

func (n *NetlinkAddresses) ListAddresses(name string) ([]netip.Addr, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	all, err := n.addrList()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range all {
		if int(a.index) == l.Attrs().Index {
			out = append(out, a.addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

func (n *NetlinkAddresses) SyncAddresses(name string, want []netip.Addr) (added, removed []netip.Addr, err error) {
	have, err := n.ReadAddresses(name)
	if err != nil {
		return nil, nil, err
	}
	return n.SyncAddressesFrom(name, want, have)
}

func (n *NetlinkAddresses) ReadAddresses(name string) (*AddressSnapshot, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	ours, elsewhere, err := n.addressesOf(l.Attrs().Index)
	if err != nil {
		return nil, err
	}
	return &AddressSnapshot{own: ours, elsewhere: elsewhere}, nil
}

func (n *NetlinkAddresses) SyncAddressesFrom(name string, want []netip.Addr, have *AddressSnapshot) (added, removed []netip.Addr, err error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return nil, nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	wanted, toAdd, inUse := diffAddresses(want, have.Has, func(a netip.Addr) string {
		if idx, ok := have.elsewhere[a]; ok {
			return n.linkName(idx)
		}
		return ""
	})
	var errs []error
	adds := make([]*netlink.Addr, len(toAdd))
	for i, a := range toAdd {
		adds[i] = &netlink.Addr{IPNet: hostNet(a)}
	}
	for i, err := range n.batch(unix.RTM_NEWADDR, l.Attrs().Index, adds) {
		a := toAdd[i]
		switch {
		case err == nil:
			added = append(added, a)
		case errors.Is(err, unix.EEXIST):
			// Added since the read: it is there, which is what we want.
		default:
			errs = append(errs, fmt.Errorf("add address %s to %s: %w", a, name, err))
		}
	}
	var toDel []netip.Addr
	for a := range have.own {
		if !wanted[a] {
			toDel = append(toDel, a)
		}
	}
	slices.SortFunc(toDel, netip.Addr.Compare)
	dels := make([]*netlink.Addr, len(toDel))
	for i, a := range toDel {
		dels[i] = prefixAddr(a, have.own[a])
	}
	for i, err := range n.batch(unix.RTM_DELADDR, l.Attrs().Index, dels) {
		a := toDel[i]
		switch {
		case err == nil:
			removed = append(removed, a)
		case errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ENOENT):
			// Gone since the read.
		default:
			errs = append(errs, fmt.Errorf("delete address %s from %s: %w", a, name, err))
		}
	}
	if len(inUse) > 0 {
		errs = append(errs, &AddressInUseError{Link: name, InUse: inUse})
	}
	return added, removed, errors.Join(errs...)
}

// RemoveAddresses removes those of addrs that the link holds, and
// returns them. A missing link holds nothing.
func (n *NetlinkAddresses) RemoveAddresses(name string, addrs []netip.Addr) (removed []netip.Addr, err error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	ours, _, err := n.addressesOf(l.Attrs().Index)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, a := range addrs {
		bits, ok := ours[a.Unmap()]
		if !ok {
			continue
		}
		if err := n.h.AddrDel(l, prefixAddr(a.Unmap(), bits)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("delete address %s from %s: %w", a, name, err))
			continue
		}
		removed = append(removed, a.Unmap())
	}
	return removed, errors.Join(errs...)
}

// addressesOf lists every address of the namespace once: those of the
// link index, and the others with the link holding them.
func (n *NetlinkAddresses) addressesOf(index int) (ours map[netip.Addr]uint8, elsewhere map[netip.Addr]int, err error) {
	all, err := n.addrList()
	if err != nil {
		return nil, nil, err
	}
	ours, elsewhere = make(map[netip.Addr]uint8, len(all)), map[netip.Addr]int{}
	for _, a := range all {
		if int(a.index) == index {
			ours[a.addr] = a.prefixLen
		} else {
			elsewhere[a.addr] = int(a.index)
		}
	}
	return ours, elsewhere, nil
}

// diffAddresses returns the wanted addresses, those to add (sorted), and
// those another link holds already, which are not bound again (sorted):
// have says whether the link has an address, holder names the other link
// that has it ("" for none).
func diffAddresses(want []netip.Addr, have func(netip.Addr) bool, holder func(netip.Addr) string) (wanted map[netip.Addr]bool, toAdd []netip.Addr, inUse []AddressInUse) {
	wanted = map[netip.Addr]bool{}
	for _, a := range want {
		if !a.IsValid() {
			continue
		}
		a = a.Unmap()
		if wanted[a] {
			continue
		}
		wanted[a] = true
		if have(a) {
			continue
		}
		if other := holder(a); other != "" {
			inUse = append(inUse, AddressInUse{Addr: a, Link: other})
			continue
		}
		toAdd = append(toAdd, a)
	}
	slices.SortFunc(toAdd, netip.Addr.Compare)
	slices.SortFunc(inUse, func(a, b AddressInUse) int { return a.Addr.Compare(b.Addr) })
	return wanted, toAdd, inUse
}

func (n *NetlinkAddresses) linkName(index int) string {
	if l, err := n.h.LinkByIndex(index); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("ifindex %d", index)
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// FakeAddresses is an in-memory Addresses. Links other than dummies are
// made with AddLink, to hold addresses SyncAddresses must not bind again.
type FakeAddresses struct {
	mu        sync.Mutex
	links     map[string]*fakeLink
	lastIndex int
}

type fakeLink struct {
	index int
	dummy bool
	up    bool
	addrs map[netip.Addr]bool
}

var _ Addresses = (*FakeAddresses)(nil)

// NewFakeAddresses returns a namespace with no links.
func NewFakeAddresses() *FakeAddresses {
	return &FakeAddresses{links: map[string]*fakeLink{}}
}

// AddLink adds a non-dummy, up link holding addrs.
func (f *FakeAddresses) AddLink(name string, addrs ...netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := &fakeLink{index: f.nextIndex(), up: true, addrs: map[netip.Addr]bool{}}
	for _, a := range addrs {
		l.addrs[a.Unmap()] = true
	}
	f.links[name] = l
}

// SetUp sets a link up or down, as an admin might behind our back.
func (f *FakeAddresses) SetUp(name string, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.links[name]; l != nil {
		l.up = up
	}
}

// IsUp reports whether the link exists and is up.
func (f *FakeAddresses) IsUp(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[name]
	return l != nil && l.up
}

// Exists reports whether the link exists.
func (f *FakeAddresses) Exists(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.links[name] != nil
}

func (f *FakeAddresses) EnsureDummy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[name]
	if l == nil {
		f.links[name] = &fakeLink{index: f.nextIndex(), dummy: true, addrs: map[netip.Addr]bool{}}
		return nil
	}
	if !l.dummy {
		return fmt.Errorf("link %s is not a dummy: not touching it", name)
	}
	if l.up {
		l.up = false
		for a := range l.addrs {
			if a.Is6() {
				delete(l.addrs, a) // as the kernel does on link down
			}
		}
	}
	return nil
}

func (f *FakeAddresses) DeleteDummy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[name]
	if l == nil {
		return nil
	}
	if !l.dummy {
		return fmt.Errorf("link %s is not a dummy: not deleting it", name)
	}
	delete(f.links, name)
	return nil
}

func (f *FakeAddresses) ListAddresses(name string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[name]
	if l == nil {
		return nil, fmt.Errorf("look up link %s: %w", name, netlink.LinkNotFoundError{})
	}
	out := make([]netip.Addr, 0, len(l.addrs))
	for a := range l.addrs {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

func (f *FakeAddresses) SyncAddresses(name string, want []netip.Addr) (added, removed []netip.Addr, err error) {
	have, err := f.ReadAddresses(name)
	if err != nil {
		return nil, nil, err
	}
	return f.SyncAddressesFrom(name, want, have)
}

func (f *FakeAddresses) ReadAddresses(name string) (*AddressSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.links[name] == nil {
		return nil, fmt.Errorf("look up link %s: %w", name, netlink.LinkNotFoundError{})
	}
	s := &AddressSnapshot{own: map[netip.Addr]uint8{}, elsewhere: map[netip.Addr]int{}}
	for n, l := range f.links {
		for a := range l.addrs {
			if n == name {
				s.own[a] = uint8(a.BitLen())
			} else if i, ok := s.elsewhere[a]; !ok || l.index < i {
				s.elsewhere[a] = l.index
			}
		}
	}
	return s, nil
}

// SyncAddressesFrom diffs against have and writes as the kernel takes
// writes: adding an address held, or deleting one gone, changes nothing
// and is not reported.
func (f *FakeAddresses) SyncAddressesFrom(name string, want []netip.Addr, have *AddressSnapshot) (added, removed []netip.Addr, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[name]
	if l == nil {
		return nil, nil, fmt.Errorf("look up link %s: %w", name, netlink.LinkNotFoundError{})
	}
	wanted, toAdd, inUse := diffAddresses(want, have.Has, func(a netip.Addr) string {
		if i, ok := have.elsewhere[a]; ok {
			return f.linkName(i)
		}
		return ""
	})
	for _, a := range toAdd {
		if !l.addrs[a] {
			l.addrs[a] = true
			added = append(added, a)
		}
	}
	for a := range have.own {
		if !wanted[a] && l.addrs[a] {
			delete(l.addrs, a)
			removed = append(removed, a)
		}
	}
	slices.SortFunc(removed, netip.Addr.Compare)
	if len(inUse) > 0 {
		return added, removed, &AddressInUseError{Link: name, InUse: inUse}
	}
	return added, removed, nil
}

// nextIndex is a new link's index; f.mu is held.
func (f *FakeAddresses) nextIndex() int {
	f.lastIndex++
	return f.lastIndex
}

// linkName is the name of the link with index i; f.mu is held.
func (f *FakeAddresses) linkName(i int) string {
	for name, l := range f.links {
		if l.index == i {
			return name
		}
	}
	return fmt.Sprintf("ifindex %d", i)
}
