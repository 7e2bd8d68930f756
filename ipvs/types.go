package ipvs

import (
	"cmp"
	"fmt"
	"github.com/nftvs/nftvs/internal/l4"
	"net/netip"
	"slices"
	"strings"
)

// Protocol is a virtual server's protocol: one type for every kernel
// package (internal/l4).
type Protocol = l4.Protocol

const (
	TCP  = l4.TCP
	UDP  = l4.UDP
	SCTP = l4.SCTP
)

// Flags are a virtual server's IP_VS_SVC_F_* flags.
type Flags uint32

const (
	// FlagPersistent keeps a client on one real server for Timeout seconds
	// (sessionAffinity: ClientIP).
	FlagPersistent Flags = 0x1
	// FlagHashed is set by the kernel on every virtual server in its hash
	// table: it is reported, never requested, and ignored when comparing.
	FlagHashed Flags = 0x2
	// FlagOnePacket schedules every UDP datagram on its own.
	FlagOnePacket Flags = 0x4
	// FlagSched1..3 mean what the scheduler makes of them: for sh and mh,
	// 1 is "fallback" (skip real servers of weight 0 or overloaded) and
	// 2 is "port" (hash the source port too).
	FlagSched1 Flags = 0x8
	FlagSched2 Flags = 0x10
	FlagSched3 Flags = 0x20

	// FlagMHPort makes mh hash the source port too (kube-proxy sets it
	// with --ipvs-scheduler=mh).
	FlagMHPort = FlagSched2
)

// comparable strips what the kernel adds on its own.
func (f Flags) comparable() Flags { return f &^ FlagHashed }

// String spells the flags as ipvsadm does ("persistent|mh-port").
func (f Flags) String() string {
	var parts []string
	for _, n := range []struct {
		f    Flags
		name string
	}{
		{FlagPersistent, "persistent"},
		{FlagHashed, "hashed"},
		{FlagOnePacket, "ops"},
		{FlagSched1, "flag-1"},
		{FlagSched2, "flag-2"},
		{FlagSched3, "flag-3"},
	} {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(parts, "|")
}

// Schedulers are the IPVS schedulers upstream kube-proxy accepts for
// --ipvs-scheduler; each is the kernel module ip_vs_<name>.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"}

// SchedulerFlags are the flags a scheduler needs on every virtual server.
// As upstream kube-proxy does, "mh" gets IP_VS_SVC_F_SCHED_MH_PORT
// (flag-2): Maglev hashes the source address and port, so clients behind
// one NAT address still spread over the real servers. Fallback (flag-1) is
// left off, as upstream: with it a client whose real server drops to
// weight 0 is re-hashed at once, which we leave to the real server's
// removal.
func SchedulerFlags(scheduler string) Flags {
	if scheduler == "mh" {
		return FlagMHPort
	}
	return 0
}

// VSKey identifies a virtual server: Address, Protocol and Port, or, when
// FWMark is not 0, the firewall mark and the address family (IPv6).
type VSKey struct {
	Address  netip.Addr
	Protocol Protocol
	Port     uint16
	FWMark   uint32
	// IPv6 is the address family of a fwmark virtual server; for the
	// others it follows Address (Key sets it).
	IPv6 bool
}

// Key returns the canonical form of k: unmapped address, family from the
// address, and for fwmark services only the mark and family.
func (k VSKey) Key() VSKey {
	if k.FWMark != 0 {
		return VSKey{FWMark: k.FWMark, IPv6: k.IPv6}
	}
	a := k.Address.Unmap()
	return VSKey{Address: a, Protocol: k.Protocol, Port: k.Port, IPv6: a.Is6()}
}

// Validate says why the kernel would refuse the key, if it would.
func (k VSKey) Validate() error {
	if k.FWMark != 0 {
		return nil
	}
	if !k.Address.IsValid() {
		return fmt.Errorf("virtual server has no address")
	}
	if k.Protocol.Number() == 0 {
		return fmt.Errorf("virtual server %s: unknown protocol %q", k, k.Protocol)
	}
	return nil
}

// String spells the key as ipvsadm -Ln does: "TCP  10.96.0.1:443",
// "FWM  16384 IPv6".
func (k VSKey) String() string {
	if k.FWMark != 0 {
		if k.IPv6 {
			return fmt.Sprintf("FWM  %d IPv6", k.FWMark)
		}
		return fmt.Sprintf("FWM  %d", k.FWMark)
	}
	return fmt.Sprintf("%s  %s", k.Protocol, netip.AddrPortFrom(k.Address.Unmap(), k.Port))
}

// Compare orders keys: IPv4 before IPv6, address services before fwmark
// ones, then by address, protocol, port and mark.
func (k VSKey) Compare(o VSKey) int {
	k, o = k.Key(), o.Key()
	if c := boolCompare(k.IPv6, o.IPv6); c != 0 {
		return c
	}
	if c := boolCompare(k.FWMark != 0, o.FWMark != 0); c != 0 {
		return c
	}
	if c := k.Address.Compare(o.Address); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Protocol, o.Protocol); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Port, o.Port); c != 0 {
		return c
	}
	return cmp.Compare(k.FWMark, o.FWMark)
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// VirtualServer is an IPVS service: a frontend with its scheduling.
type VirtualServer struct {
	VSKey
	// Scheduler is the IPVS scheduler (rr, wrr, lc, wlc, sh, dh, sed, nq,
	// mh, ...); empty means rr.
	Scheduler string
	// Flags are IP_VS_SVC_F_*; FlagHashed is ignored.
	Flags Flags
	// Timeout is the persistence timeout in seconds, used with
	// FlagPersistent.
	Timeout uint32
}

// normalized is v as the kernel reports it back, less the hashed flag.
func (v VirtualServer) normalized() VirtualServer {
	v.VSKey = v.Key()
	if v.Scheduler == "" {
		v.Scheduler = "rr"
	}
	v.Flags = v.Flags.comparable()
	return v
}

// Equal reports whether two virtual servers are the same in the kernel's
// eyes: same key, scheduler, flags (less hashed) and timeout.
func (v VirtualServer) Equal(o VirtualServer) bool {
	return v.normalized() == o.normalized()
}

func (v VirtualServer) String() string {
	s := v.VSKey.String() + " " + v.normalized().Scheduler
	if f := v.Flags.comparable(); f != 0 {
		s += " " + f.String()
	}
	if v.Timeout != 0 {
		s += fmt.Sprintf(" timeout %d", v.Timeout)
	}
	return s
}

// RealServer is an IPVS destination. Forwarding is always masquerade
// (NAT), as in kube-proxy.
type RealServer struct {
	Address netip.Addr
	Port    uint16
	// Weight 0 takes no new connections; existing ones go on.
	Weight int
}

// AddrPort identifies the real server within its virtual server.
func (r RealServer) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(r.Address.Unmap(), r.Port)
}

func (r RealServer) String() string {
	return fmt.Sprintf("%s weight %d", r.AddrPort(), r.Weight)
}

// Connections are a real server's connection entries, as ipvsadm -Ln
// counts them: Active are established TCP connections, Inactive every
// other entry (TCP connections opening or closing, UDP flows). An entry
// lives until its IPVS timeout, after the flow itself has ended.
type Connections struct{ Active, Inactive int }

// Idle reports whether no connection entry uses the real server: it can
// be removed without cutting anything.
func (c Connections) Idle() bool { return c.Active+c.Inactive == 0 }

// maxWeight is the largest weight that survives a round trip through
// moby/ipvs, which reads the kernel's 32-bit weight as 16 bits.
const maxWeight = 65535

func (r RealServer) validate(k VSKey) error {
	if !r.Address.IsValid() {
		return fmt.Errorf("real server of %s has no address", k)
	}
	if k.FWMark == 0 && r.Address.Unmap().Is6() != k.Address.Unmap().Is6() ||
		k.FWMark != 0 && r.Address.Unmap().Is6() != k.IPv6 {
		return fmt.Errorf("real server %s of %s: address family differs from the virtual server's (the kernel takes that only for tunnels)", r.AddrPort(), k)
	}
	if r.Weight < 0 || r.Weight > maxWeight {
		return fmt.Errorf("real server %s of %s: weight %d out of range 0..%d", r.AddrPort(), k, r.Weight, maxWeight)
	}
	return nil
}

// Service is a desired virtual server with its real servers.
type Service struct {
	VirtualServer
	RealServers []RealServer
}

// Validate says why the kernel would refuse the service, if it would.
func (s Service) Validate() error {
	if err := s.VSKey.Validate(); err != nil {
		return err
	}
	for _, r := range s.RealServers {
		if err := r.validate(s.VSKey); err != nil {
			return err
		}
	}
	// The proxier gives real servers sorted: a twice-listed one is next
	// to itself, and no map is needed (one per virtual server, the first
	// sync's garbage).
	byAddr := func(a, b RealServer) int { return a.AddrPort().Compare(b.AddrPort()) }
	rss := s.RealServers
	if !slices.IsSortedFunc(rss, byAddr) {
		rss = slices.Clone(rss)
		slices.SortFunc(rss, byAddr)
	}
	for i := 1; i < len(rss); i++ {
		if rss[i].AddrPort() == rss[i-1].AddrPort() {
			return fmt.Errorf("real server %s listed twice in %s", rss[i].AddrPort(), s.VSKey)
		}
	}
	return nil
}

// RemovedRealServer is a real server taken out of a virtual server, for the
// conntrack cleaner: flows to the virtual server answered by this real
// server are stale.
type RemovedRealServer struct {
	VirtualServer VSKey
	RealServer    RealServer
}

func (r RemovedRealServer) String() string {
	return fmt.Sprintf("%s -> %s", r.VirtualServer, r.RealServer.AddrPort())
}

func sortRealServers(rs []RealServer) {
	slices.SortFunc(rs, func(a, b RealServer) int { return a.AddrPort().Compare(b.AddrPort()) })
}
