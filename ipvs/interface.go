package ipvs

import (
	"net/netip"
	"sync"
	"time"
)

// Interface is the kernel's IPVS table, one call per netlink round trip.
// Kernel is the real one, Fake an in-memory one. Errors keep the kernel's
// errno (errors.Is(err, syscall.EEXIST)): EEXIST for an object that is
// already there, ESRCH for a virtual server that is not, ENOENT for a real
// server that is not.
type Interface interface {
	GetVirtualServers() ([]VirtualServer, error)
	AddVirtualServer(VirtualServer) error
	UpdateVirtualServer(VirtualServer) error
	DeleteVirtualServer(VSKey) error
	GetRealServers(VSKey) ([]RealServer, error)
	// GetAllRealServers lists the real servers of every virtual server,
	// with their connection counts, in one read, where GetRealServers
	// costs a round trip per virtual server. A virtual server missing
	// from the answer is not known (created since, or the read could not
	// tell its family): ask GetRealServers.
	GetAllRealServers() (map[VSKey][]RealServerConnections, error)
	AddRealServer(VSKey, RealServer) error
	UpdateRealServer(VSKey, RealServer) error
	DeleteRealServer(VSKey, RealServer) error
	// GetConnections counts each real server's connections (one dump of
	// the virtual server's real servers).
	GetConnections(VSKey) (map[netip.AddrPort]Connections, error)
	// SetTimeouts sets the IPVS connection timeouts (ipvsadm --set);
	// a zero duration leaves that timeout as it is.
	SetTimeouts(tcp, tcpFin, udp time.Duration) error
}

// WriteCounts counts netlink write requests by kind, whether or not the
// kernel accepted them: each is one round trip.
type WriteCounts struct {
	AddVirtualServer    int
	UpdateVirtualServer int
	DeleteVirtualServer int
	AddRealServer       int
	UpdateRealServer    int
	DeleteRealServer    int
}

// Total is the number of write round trips.
func (w WriteCounts) Total() int {
	return w.AddVirtualServer + w.UpdateVirtualServer + w.DeleteVirtualServer +
		w.AddRealServer + w.UpdateRealServer + w.DeleteRealServer
}

// Add returns the sum of w and o.
func (w WriteCounts) Add(o WriteCounts) WriteCounts {
	return WriteCounts{
		AddVirtualServer:    w.AddVirtualServer + o.AddVirtualServer,
		UpdateVirtualServer: w.UpdateVirtualServer + o.UpdateVirtualServer,
		DeleteVirtualServer: w.DeleteVirtualServer + o.DeleteVirtualServer,
		AddRealServer:       w.AddRealServer + o.AddRealServer,
		UpdateRealServer:    w.UpdateRealServer + o.UpdateRealServer,
		DeleteRealServer:    w.DeleteRealServer + o.DeleteRealServer,
	}
}

// Counting wraps an Interface and counts the writes that go through it,
// and the reads: proof, independent of the Reconciler's own bookkeeping,
// of how many round trips a sync cost.
type Counting struct {
	Interface
	mu     sync.Mutex
	writes WriteCounts
	reads  int
}

// NewCounting counts the calls made to h.
func NewCounting(h Interface) *Counting { return &Counting{Interface: h} }

// Writes returns the writes counted so far.
func (c *Counting) Writes() WriteCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// Reads returns the number of dumps (of virtual or real servers) so far.
func (c *Counting) Reads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

// Reset sets the counts to zero.
func (c *Counting) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes, c.reads = WriteCounts{}, 0
}

func (c *Counting) count(f func(*WriteCounts)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.writes)
}

func (c *Counting) GetVirtualServers() ([]VirtualServer, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Interface.GetVirtualServers()
}

func (c *Counting) GetRealServers(k VSKey) ([]RealServer, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Interface.GetRealServers(k)
}

func (c *Counting) GetAllRealServers() (map[VSKey][]RealServerConnections, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Interface.GetAllRealServers()
}

func (c *Counting) GetConnections(k VSKey) (map[netip.AddrPort]Connections, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Interface.GetConnections(k)
}

func (c *Counting) AddVirtualServer(v VirtualServer) error {
	c.count(func(w *WriteCounts) { w.AddVirtualServer++ })
	return c.Interface.AddVirtualServer(v)
}

func (c *Counting) UpdateVirtualServer(v VirtualServer) error {
	c.count(func(w *WriteCounts) { w.UpdateVirtualServer++ })
	return c.Interface.UpdateVirtualServer(v)
}

func (c *Counting) DeleteVirtualServer(k VSKey) error {
	c.count(func(w *WriteCounts) { w.DeleteVirtualServer++ })
	return c.Interface.DeleteVirtualServer(k)
}

func (c *Counting) AddRealServer(k VSKey, r RealServer) error {
	c.count(func(w *WriteCounts) { w.AddRealServer++ })
	return c.Interface.AddRealServer(k, r)
}

func (c *Counting) UpdateRealServer(k VSKey, r RealServer) error {
	c.count(func(w *WriteCounts) { w.UpdateRealServer++ })
	return c.Interface.UpdateRealServer(k, r)
}

func (c *Counting) DeleteRealServer(k VSKey, r RealServer) error {
	c.count(func(w *WriteCounts) { w.DeleteRealServer++ })
	return c.Interface.DeleteRealServer(k, r)
}
