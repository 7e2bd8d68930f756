package ipvs

import (
	"net/netip"
	"sync"
)

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

// WriteBatch counts each write and passes the batch on (write by write
// if the wrapped Interface takes no batches).
func (c *Counting) WriteBatch(writes []Write) []error {
	c.count(func(w *WriteCounts) {
		for _, x := range writes {
			switch x.Op {
			case OpAddVirtualServer:
				w.AddVirtualServer++
			case OpAddRealServer:
				w.AddRealServer++
			}
		}
	})
	if b, ok := c.Interface.(Batcher); ok {
		return b.WriteBatch(writes)
	}
	return writeEach(c.Interface, writes)
}

// unbatched hides an Interface's WriteBatch: the Reconciler then writes
// one round trip at a time, as before batches.
type unbatched struct{ Interface }
