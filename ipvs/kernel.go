package ipvs

import (
	"fmt"
	"github.com/nftvs/nftvs/internal/l4"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kernel is the kernel's IPVS table over two generic netlink sockets
// (github.com/moby/ipvs): one for writes, one for dumps. A socket answers
// one request at a time, so the calls on each are serialised; with two, a
// dump of 10k virtual servers (a periodic repair reading the kernel) does
// not hold up the writes of a change meanwhile.
type Kernel struct {
	mu sync.Mutex
	h  *mobyipvs.Handle
	// readMu serialises the dumps on read.
	readMu sync.Mutex
	read   *mobyipvs.Handle
	// netns is the namespace's path ("" for the caller's), for the proc
	// file GetAllRealServers reads and the batch socket.
	netns string
	// batch is WriteBatch's socket, opened at its first call; mu guards it.
	batch *batchSocket
}

var _ Batcher = (*Kernel)(nil)

var _ Interface = (*Kernel)(nil)

// NewKernel opens IPVS in the network namespace at netnsPath ("" is the
// calling thread's). The first call in a process runs `modprobe ip_vs`.
func NewKernel(netnsPath string) (*Kernel, error) {
	h, err := mobyipvs.New(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open IPVS netlink socket: %w", err)
	}
	// moby/ipvs only logs when it cannot resolve the IPVS generic netlink
	// family; a cheap read tells now rather than at the first sync.
	if err := getConfig(h); err != nil {
		h.Close()
		return nil, fmt.Errorf("IPVS does not answer (is the ip_vs module available?): %w", err)
	}
	read, err := mobyipvs.New(netnsPath)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open IPVS netlink socket: %w", err)
	}
	return &Kernel{h: h, read: read, netns: netnsPath}, nil
}

// getConfig is h.GetConfig, which panics (index out of range) when the
// kernel has no IPVS: moby/ipvs then sends to generic netlink family 0
// and reads an empty answer as a message.
func getConfig(h *mobyipvs.Handle) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("no IPVS generic netlink family (%v)", r)
		}
	}()
	_, err = h.GetConfig()
	return err
}

// Close closes the netlink socket.
func (k *Kernel) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.h.Close()
	if k.batch != nil {
		k.batch.close()
	}
	k.readMu.Lock()
	defer k.readMu.Unlock()
	k.read.Close()
}

func (k *Kernel) GetVirtualServers() ([]VirtualServer, error) {
	k.readMu.Lock()
	svcs, err := k.read.GetServices()
	k.readMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("list virtual servers: %w", err)
	}
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		v, err := fromService(s)
		if err != nil {
			return nil, fmt.Errorf("list virtual servers: %w", err)
		}
		out = append(out, v)
	}
	return out, nil
}

func (k *Kernel) AddVirtualServer(v VirtualServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.NewService(toService(v)); err != nil {
		return fmt.Errorf("add virtual server %s: %w", v, err)
	}
	return nil
}

func (k *Kernel) UpdateVirtualServer(v VirtualServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.UpdateService(toService(v)); err != nil {
		return fmt.Errorf("update virtual server %s: %w", v, err)
	}
	return nil
}

func (k *Kernel) DeleteVirtualServer(key VSKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.DelService(toService(VirtualServer{VSKey: key})); err != nil {
		return fmt.Errorf("delete virtual server %s: %w", key, err)
	}
	return nil
}

func (k *Kernel) GetRealServers(key VSKey) ([]RealServer, error) {
	dests, err := k.destinations(key)
	if err != nil {
		return nil, err
	}
	out := make([]RealServer, 0, len(dests))
	for _, d := range dests {
		out = append(out, d.RealServer)
	}
	return out, nil
}

func (k *Kernel) GetConnections(key VSKey) (map[netip.AddrPort]Connections, error) {
	dests, err := k.destinations(key)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.AddrPort]Connections, len(dests))
	for _, d := range dests {
		out[d.AddrPort()] = d.conns
	}
	return out, nil
}

// GetAllRealServers reads /proc/net/ip_vs of the handle's namespace: every
// virtual server with its real servers, in one read of a few syscalls.
// IPVS's generic netlink has no dump of every real server (one dump per
// virtual server: 10k round trips at 10k Services), and a netlink socket
// runs one dump at a time, so dumps cannot be pipelined either. The file
// gives what a restart needs (address, port, weight); a fwmark virtual
// server without real servers is filed under IPv4 only (the file does not
// print the family), so the IPv6 one is left to GetRealServers.
func (k *Kernel) GetAllRealServers() (map[VSKey][]RealServerConnections, error) {
	f, err := k.openProc()
	if err != nil {
		return nil, fmt.Errorf("read every real server: %w", err)
	}
	defer f.Close()
	m, err := ParseProcIPVS(f)
	if err != nil {
		return nil, fmt.Errorf("read every real server from %s: %w", ProcIPVS, err)
	}
	return m, nil
}

// openProc opens /proc/net/ip_vs of the handle's namespace. The file
// belongs to the namespace of the thread that opens it: for another
// namespace, it is opened on a thread of its own that enters it and
// ends with its goroutine (never handed back to the scheduler).
func (k *Kernel) openProc() (*os.File, error) {
	if k.netns == "" {
		return os.Open(ProcIPVS)
	}
	type opened struct {
		f   *os.File
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread ends here
		ns, err := netns.GetFromPath(k.netns)
		if err != nil {
			ch <- opened{nil, fmt.Errorf("open netns %s: %w", k.netns, err)}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- opened{nil, fmt.Errorf("enter netns %s: %w", k.netns, err)}
			return
		}
		f, err := os.Open(ProcIPVS)
		ch <- opened{f, err}
	}()
	o := <-ch
	return o.f, o.err
}

type destination struct {
	RealServer
	conns Connections
}

// destinations dumps the real servers of key with their counters.
func (k *Kernel) destinations(key VSKey) ([]destination, error) {
	k.readMu.Lock()
	dests, err := k.read.GetDestinations(toService(VirtualServer{VSKey: key}))
	k.readMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("list real servers of %s: %w", key, err)
	}
	out := make([]destination, 0, len(dests))
	for _, d := range dests {
		a, ok := netip.AddrFromSlice(d.Address)
		if !ok {
			return nil, fmt.Errorf("list real servers of %s: kernel reported address %v", key, d.Address)
		}
		out = append(out, destination{RealServer{Address: a.Unmap(), Port: d.Port, Weight: d.Weight},
			Connections{Active: d.ActiveConnections, Inactive: d.InactiveConnections}})
	}
	return out, nil
}

func (k *Kernel) AddRealServer(key VSKey, r RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.NewDestination(toService(VirtualServer{VSKey: key}), toDestination(r)); err != nil {
		return fmt.Errorf("add real server %s to %s: %w", r.AddrPort(), key, err)
	}
	return nil
}

func (k *Kernel) UpdateRealServer(key VSKey, r RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.UpdateDestination(toService(VirtualServer{VSKey: key}), toDestination(r)); err != nil {
		return fmt.Errorf("update real server %s of %s to weight %d: %w", r.AddrPort(), key, r.Weight, err)
	}
	return nil
}

func (k *Kernel) DeleteRealServer(key VSKey, r RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.DelDestination(toService(VirtualServer{VSKey: key}), toDestination(r)); err != nil {
		return fmt.Errorf("delete real server %s from %s: %w", r.AddrPort(), key, err)
	}
	return nil
}

func (k *Kernel) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.SetConfig(&mobyipvs.Config{TimeoutTCP: tcp, TimeoutTCPFin: tcpFin, TimeoutUDP: udp}); err != nil {
		return fmt.Errorf("set IPVS timeouts (tcp %v, tcpfin %v, udp %v): %w", tcp, tcpFin, udp, err)
	}
	return nil
}

// Timeouts returns the IPVS connection timeouts (ipvsadm -L --timeout).
func (k *Kernel) Timeouts() (tcp, tcpFin, udp time.Duration, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.h.GetConfig()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("get IPVS timeouts: %w", err)
	}
	return c.TimeoutTCP, c.TimeoutTCPFin, c.TimeoutUDP, nil
}

func toService(v VirtualServer) *mobyipvs.Service {
	v = v.normalized()
	s := &mobyipvs.Service{
		SchedName:     v.Scheduler,
		Flags:         uint32(v.Flags),
		Timeout:       v.Timeout,
		AddressFamily: unix.AF_INET,
		// The persistence netmask: one client address, as ipvsadm and
		// kube-proxy set it. For IPv6 it is a prefix length, and the
		// kernel refuses 0.
		Netmask: 0xffffffff,
	}
	if v.IPv6 {
		s.AddressFamily, s.Netmask = unix.AF_INET6, 128
	}
	if v.FWMark != 0 {
		s.FWMark = v.FWMark
		return s
	}
	s.Address = net.IP(v.Address.AsSlice())
	s.Protocol = uint16(v.Protocol.Number())
	s.Port = v.Port
	return s
}

// toDestination builds a masquerading destination. moby/ipvs does not send
// the address family: the kernel then takes the virtual server's, which
// is right since nftvs never mixes families.
func toDestination(r RealServer) *mobyipvs.Destination {
	d := &mobyipvs.Destination{
		Address:         net.IP(r.Address.Unmap().AsSlice()),
		Port:            r.Port,
		Weight:          r.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq,
		AddressFamily:   unix.AF_INET,
	}
	if r.Address.Unmap().Is6() {
		d.AddressFamily = unix.AF_INET6
	}
	return d
}

func fromService(s *mobyipvs.Service) (VirtualServer, error) {
	v := VirtualServer{Scheduler: s.SchedName, Flags: Flags(s.Flags), Timeout: s.Timeout}
	switch s.AddressFamily {
	case unix.AF_INET:
	case unix.AF_INET6:
		v.IPv6 = true
	default:
		return v, fmt.Errorf("kernel reported a virtual server of address family %d", s.AddressFamily)
	}
	if s.FWMark != 0 {
		v.FWMark = s.FWMark
		return v, nil
	}
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return v, fmt.Errorf("kernel reported a virtual server with address %v", s.Address)
	}
	v.Address = a.Unmap()
	v.Protocol = l4.FromNumber(uint8(s.Protocol))
	v.Port = s.Port
	return v, nil
}
