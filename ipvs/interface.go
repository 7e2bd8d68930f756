package ipvs

import (
	"net/netip"
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
// kernel accepted them: each is one round trip, but in a batch
// (Batcher), where many go out per system call.
type WriteCounts struct {
	AddVirtualServer    int
	UpdateVirtualServer int
	DeleteVirtualServer int
	AddRealServer       int
	UpdateRealServer    int
	DeleteRealServer    int
}

// Total is the number of write requests.
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
