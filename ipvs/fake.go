package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Op names an Interface call, for Fake.Inject.
type Op string

const (
	OpGetVirtualServers   Op = "GetVirtualServers"
	OpAddVirtualServer    Op = "AddVirtualServer"
	OpUpdateVirtualServer Op = "UpdateVirtualServer"
	OpDeleteVirtualServer Op = "DeleteVirtualServer"
	OpGetRealServers      Op = "GetRealServers"
	OpGetAllRealServers   Op = "GetAllRealServers"
	OpGetConnections      Op = "GetConnections"
	OpAddRealServer       Op = "AddRealServer"
	OpUpdateRealServer    Op = "UpdateRealServer"
	OpDeleteRealServer    Op = "DeleteRealServer"
	OpSetTimeouts         Op = "SetTimeouts"
)

// Fake is an in-memory IPVS table with the kernel's strictness and errnos
// (EEXIST, ESRCH for a missing virtual server, ENOENT for a missing real
// server or scheduler, ERANGE for a negative weight). Like the kernel it
// reports FlagHashed on every virtual server. String prints it as
// `ipvsadm -Ln` would. It is stricter than the kernel on one point: a real
// server of the other address family is EINVAL, where the kernel, given
// no family by moby/ipvs, reads the address as the virtual server's family
// and stores a mangled real server.
type Fake struct {
	mu       sync.Mutex
	services map[VSKey]*fakeService
	// Writes counts write calls, failed ones included.
	Writes WriteCounts
	// Batches counts WriteBatch calls (their writes are in Writes).
	Batches int
	// Reads counts dumps: GetVirtualServers, GetRealServers,
	// GetAllRealServers and GetConnections calls.
	Reads int
	// Timeouts are the last non-zero values given to SetTimeouts.
	TCPTimeout, TCPFinTimeout, UDPTimeout time.Duration
	// Inject, when set, is asked before every call; a non-nil error fails
	// the call without changing anything (rs is nil for virtual server
	// calls).
	Inject func(op Op, key VSKey, rs *RealServer) error
	// MissingSchedulers fail as a scheduler whose module cannot be loaded.
	MissingSchedulers map[string]bool
}

type fakeService struct {
	vs VirtualServer
	rs map[netip.AddrPort]RealServer
	// conns are the connection counts SetConnections gave; they go with
	// the real server.
	conns map[netip.AddrPort]Connections
	// counters are what SetCounters gave (stats_fake.go).
	counters Stats
}

var (
	_ Interface = (*Fake)(nil)
	_ Batcher   = (*Fake)(nil)
)

// WriteBatch makes each write as its Interface call would (Inject
// included), in order.
func (f *Fake) WriteBatch(writes []Write) []error {
	f.mu.Lock()
	f.Batches++
	f.mu.Unlock()
	return writeEach(f, writes)
}

// NewFake returns an empty in-memory IPVS table.
func NewFake() *Fake { return &Fake{services: map[VSKey]*fakeService{}} }

func (f *Fake) inject(op Op, key VSKey, rs *RealServer) error {
	if f.Inject == nil {
		return nil
	}
	return f.Inject(op, key, rs)
}

func (f *Fake) GetVirtualServers() ([]VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Reads++
	if err := f.inject(OpGetVirtualServers, VSKey{}, nil); err != nil {
		return nil, fmt.Errorf("list virtual servers: %w", err)
	}
	out := make([]VirtualServer, 0, len(f.services))
	for _, s := range f.services {
		out = append(out, s.vs)
	}
	// The kernel reports in hash order; sort for readable tests.
	slices.SortFunc(out, func(a, b VirtualServer) int { return a.VSKey.Compare(b.VSKey) })
	return out, nil
}

func (f *Fake) checkScheduler(v VirtualServer) error {
	if v.Scheduler == "" || f.MissingSchedulers[v.Scheduler] {
		return syscall.ENOENT
	}
	return nil
}

func (f *Fake) AddVirtualServer(v VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes.AddVirtualServer++
	err := func() error {
		if err := f.inject(OpAddVirtualServer, v.Key(), nil); err != nil {
			return err
		}
		if v.VSKey.Validate() != nil {
			return syscall.EINVAL
		}
		if err := f.checkScheduler(v); err != nil {
			return err
		}
		if _, ok := f.services[v.Key()]; ok {
			return syscall.EEXIST
		}
		f.services[v.Key()] = &fakeService{vs: kernelView(v), rs: map[netip.AddrPort]RealServer{}}
		return nil
	}()
	if err != nil {
		return fmt.Errorf("add virtual server %s: %w", v, err)
	}
	return nil
}

// kernelView is v as the kernel would report it.
func kernelView(v VirtualServer) VirtualServer {
	v.VSKey = v.Key()
	v.Flags |= FlagHashed
	return v
}

func (f *Fake) UpdateVirtualServer(v VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes.UpdateVirtualServer++
	err := func() error {
		if err := f.inject(OpUpdateVirtualServer, v.Key(), nil); err != nil {
			return err
		}
		s, ok := f.services[v.Key()]
		if !ok {
			return syscall.ESRCH
		}
		if err := f.checkScheduler(v); err != nil {
			return err
		}
		s.vs = kernelView(v)
		return nil
	}()
	if err != nil {
		return fmt.Errorf("update virtual server %s: %w", v, err)
	}
	return nil
}

func (f *Fake) DeleteVirtualServer(key VSKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes.DeleteVirtualServer++
	err := func() error {
		if err := f.inject(OpDeleteVirtualServer, key.Key(), nil); err != nil {
			return err
		}
		if _, ok := f.services[key.Key()]; !ok {
			return syscall.ESRCH
		}
		delete(f.services, key.Key())
		return nil
	}()
	if err != nil {
		return fmt.Errorf("delete virtual server %s: %w", key, err)
	}
	return nil
}

// GetRealServers lists nothing, without error, for a missing virtual
// server: the kernel's dump does the same.
func (f *Fake) GetRealServers(key VSKey) ([]RealServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.dumpRealServers(OpGetRealServers, key)
	if s == nil {
		return nil, err
	}
	out := make([]RealServer, 0, len(s.rs))
	for _, r := range s.rs {
		out = append(out, r)
	}
	sortRealServers(out)
	return out, nil
}

// GetAllRealServers lists every virtual server's real servers in one
// read, as the kernel's /proc/net/ip_vs does; like that file, it cannot
// tell the family of a fwmark virtual server without real servers, and
// leaves out the IPv6 one.
func (f *Fake) GetAllRealServers() (map[VSKey][]RealServerConnections, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Reads++
	if err := f.inject(OpGetAllRealServers, VSKey{}, nil); err != nil {
		return nil, err
	}
	out := make(map[VSKey][]RealServerConnections, len(f.services))
	for k, s := range f.services {
		if k.FWMark != 0 && k.IPv6 && len(s.rs) == 0 {
			continue
		}
		rss := make([]RealServerConnections, 0, len(s.rs))
		for ap, r := range s.rs {
			rss = append(rss, RealServerConnections{AddrPort: ap, Weight: r.Weight, Connections: s.conns[ap]})
		}
		out[k] = rss
	}
	return out, nil
}

// GetConnections counts, like GetRealServers, nothing for a missing
// virtual server; a real server's counts are what SetConnections gave.
func (f *Fake) GetConnections(key VSKey) (map[netip.AddrPort]Connections, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.dumpRealServers(OpGetConnections, key)
	if s == nil {
		return nil, err
	}
	out := make(map[netip.AddrPort]Connections, len(s.rs))
	for ap := range s.rs {
		out[ap] = s.conns[ap]
	}
	return out, nil
}

// dumpRealServers is one dump of key's real servers (op: what it is
// read for): the service, or nil when it is missing or the dump failed;
// f.mu is held.
func (f *Fake) dumpRealServers(op Op, key VSKey) (*fakeService, error) {
	f.Reads++
	if err := f.inject(op, key.Key(), nil); err != nil {
		return nil, fmt.Errorf("list real servers of %s: %w", key, err)
	}
	return f.services[key.Key()], nil
}

// SetConnections sets the connection counts of a real server, as traffic
// would; it is an error if the real server is not there.
func (f *Fake) SetConnections(key VSKey, rs netip.AddrPort, c Connections) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[key.Key()]
	if !ok {
		return syscall.ESRCH
	}
	if _, ok := s.rs[rs]; !ok {
		return syscall.ENOENT
	}
	if s.conns == nil {
		s.conns = map[netip.AddrPort]Connections{}
	}
	s.conns[rs] = c
	return nil
}

func (f *Fake) realServerCall(op Op, key VSKey, r RealServer, do func(s *fakeService, exists bool) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.inject(op, key.Key(), &r); err != nil {
		return err
	}
	s, ok := f.services[key.Key()]
	if !ok {
		return syscall.ESRCH
	}
	if r.Weight < 0 {
		return syscall.ERANGE
	}
	r.Address = r.Address.Unmap()
	if r.Address.Is6() != s.vs.IPv6 {
		return syscall.EINVAL
	}
	_, exists := s.rs[r.AddrPort()]
	return do(s, exists)
}

func (f *Fake) AddRealServer(key VSKey, r RealServer) error {
	f.mu.Lock()
	f.Writes.AddRealServer++
	f.mu.Unlock()
	err := f.realServerCall(OpAddRealServer, key, r, func(s *fakeService, exists bool) error {
		if exists {
			return syscall.EEXIST
		}
		s.rs[r.AddrPort()] = RealServer{Address: r.Address.Unmap(), Port: r.Port, Weight: r.Weight}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add real server %s to %s: %w", r.AddrPort(), key, err)
	}
	return nil
}

func (f *Fake) UpdateRealServer(key VSKey, r RealServer) error {
	f.mu.Lock()
	f.Writes.UpdateRealServer++
	f.mu.Unlock()
	err := f.realServerCall(OpUpdateRealServer, key, r, func(s *fakeService, exists bool) error {
		if !exists {
			return syscall.ENOENT
		}
		s.rs[r.AddrPort()] = RealServer{Address: r.Address.Unmap(), Port: r.Port, Weight: r.Weight}
		return nil
	})
	if err != nil {
		return fmt.Errorf("update real server %s of %s to weight %d: %w", r.AddrPort(), key, r.Weight, err)
	}
	return nil
}

func (f *Fake) DeleteRealServer(key VSKey, r RealServer) error {
	f.mu.Lock()
	f.Writes.DeleteRealServer++
	f.mu.Unlock()
	r.Weight = 0 // the kernel ignores it on delete
	err := f.realServerCall(OpDeleteRealServer, key, r, func(s *fakeService, exists bool) error {
		if !exists {
			return syscall.ENOENT
		}
		delete(s.rs, r.AddrPort())
		delete(s.conns, r.AddrPort())
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete real server %s from %s: %w", r.AddrPort(), key, err)
	}
	return nil
}

func (f *Fake) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.inject(OpSetTimeouts, VSKey{}, nil); err != nil {
		return fmt.Errorf("set IPVS timeouts: %w", err)
	}
	for _, t := range []struct {
		v   time.Duration
		dst *time.Duration
	}{{tcp, &f.TCPTimeout}, {tcpFin, &f.TCPFinTimeout}, {udp, &f.UDPTimeout}} {
		if t.v > 0 {
			*t.dst = t.v
		}
	}
	return nil
}

// Services returns the table, sorted, with real servers sorted and the
// hashed flag as the kernel reports it.
func (f *Fake) Services() []Service {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Service, 0, len(f.services))
	for _, s := range f.services {
		svc := Service{VirtualServer: s.vs}
		for _, r := range s.rs {
			svc.RealServers = append(svc.RealServers, r)
		}
		sortRealServers(svc.RealServers)
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b Service) int { return a.VSKey.Compare(b.VSKey) })
	return out
}

// ResetCounts sets Writes and Reads to zero.
func (f *Fake) ResetCounts() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes, f.Reads = WriteCounts{}, 0
}

// String prints the table as Format does.
func (f *Fake) String() string { return Format(f.Services()) }

// Format prints services in the shape of `ipvsadm -Ln` (less the
// connection counters), in the order given, without the hashed flag.
func Format(services []Service) string {
	var b strings.Builder
	for _, s := range services {
		b.WriteString(s.VSKey.String() + " " + s.normalized().Scheduler)
		if fl := s.Flags.comparable(); fl != 0 {
			b.WriteString(" " + fl.String())
		}
		if s.Timeout != 0 {
			fmt.Fprintf(&b, " timeout %d", s.Timeout)
		}
		b.WriteByte('\n')
		for _, r := range s.RealServers {
			fmt.Fprintf(&b, "  -> %-28s Masq %d\n", r.AddrPort(), r.Weight)
		}
	}
	return b.String()
}
