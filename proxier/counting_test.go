package proxier

import (
	"net/netip"
	"sync"

	"github.com/nftvs/nftvs/ipvs"
)

// counting (a copy of package ipvs's test helper Counting) wraps an
// ipvs.Interface and counts the writes that go through it,
// and the reads: proof, independent of the Reconciler's own bookkeeping,
// of how many round trips a sync cost.
type counting struct {
	ipvs.Interface
	mu     sync.Mutex
	writes ipvs.WriteCounts
	reads  int
	// beforeDump, if set, is called before each dump of the virtual
	// servers, without the lock: a test holds a repair's read there.
	beforeDump func()
}

// newCounting counts the calls made to h.
func newCounting(h ipvs.Interface) *counting { return &counting{Interface: h} }

// Writes returns the writes counted so far.
func (c *counting) Writes() ipvs.WriteCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// Reads returns the number of dumps (of virtual or real servers) so far.
func (c *counting) Reads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

// Reset sets the counts to zero.
func (c *counting) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes, c.reads = ipvs.WriteCounts{}, 0
}

func (c *counting) count(f func(*ipvs.WriteCounts)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.writes)
}

func (c *counting) GetVirtualServers() ([]ipvs.VirtualServer, error) {
	c.mu.Lock()
	c.reads++
	before := c.beforeDump
	c.mu.Unlock()
	if before != nil {
		before()
	}
	return c.Interface.GetVirtualServers()
}

func (c *counting) GetRealServers(k ipvs.VSKey) ([]ipvs.RealServer, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Interface.GetRealServers(k)
}

func (c *counting) GetAllRealServers() (map[ipvs.VSKey][]ipvs.RealServerConnections, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Interface.GetAllRealServers()
}

func (c *counting) GetConnections(k ipvs.VSKey) (map[netip.AddrPort]ipvs.Connections, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Interface.GetConnections(k)
}

func (c *counting) AddVirtualServer(v ipvs.VirtualServer) error {
	c.count(func(w *ipvs.WriteCounts) { w.AddVirtualServer++ })
	return c.Interface.AddVirtualServer(v)
}

func (c *counting) UpdateVirtualServer(v ipvs.VirtualServer) error {
	c.count(func(w *ipvs.WriteCounts) { w.UpdateVirtualServer++ })
	return c.Interface.UpdateVirtualServer(v)
}

func (c *counting) DeleteVirtualServer(k ipvs.VSKey) error {
	c.count(func(w *ipvs.WriteCounts) { w.DeleteVirtualServer++ })
	return c.Interface.DeleteVirtualServer(k)
}

func (c *counting) AddRealServer(k ipvs.VSKey, r ipvs.RealServer) error {
	c.count(func(w *ipvs.WriteCounts) { w.AddRealServer++ })
	return c.Interface.AddRealServer(k, r)
}

func (c *counting) UpdateRealServer(k ipvs.VSKey, r ipvs.RealServer) error {
	c.count(func(w *ipvs.WriteCounts) { w.UpdateRealServer++ })
	return c.Interface.UpdateRealServer(k, r)
}

func (c *counting) DeleteRealServer(k ipvs.VSKey, r ipvs.RealServer) error {
	c.count(func(w *ipvs.WriteCounts) { w.DeleteRealServer++ })
	return c.Interface.DeleteRealServer(k, r)
}

// WriteBatch counts each write and passes the batch on, as the kernel
// adapter takes it: a first sync creates its virtual and real servers in
// batches, and the tests and benchmarks go the way a node does.
func (c *counting) WriteBatch(writes []ipvs.Write) []error {
	c.count(func(w *ipvs.WriteCounts) {
		for _, x := range writes {
			switch x.Op {
			case ipvs.OpAddVirtualServer:
				w.AddVirtualServer++
			case ipvs.OpAddRealServer:
				w.AddRealServer++
			}
		}
	})
	return c.Interface.(ipvs.Batcher).WriteBatch(writes)
}
