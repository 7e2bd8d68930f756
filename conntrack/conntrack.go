package conntrack

import (
	"errors"
	"fmt"
	"github.com/nftvs/nftvs/internal/l4"
	"net/netip"
	"strings"
	"time"
)

// Protocol is a Service port's protocol: one type for every kernel
// package (internal/l4).
type Protocol = l4.Protocol

// The protocols a Service port can have.
const (
	ProtocolTCP  = l4.TCP
	ProtocolUDP  = l4.UDP
	ProtocolSCTP = l4.SCTP
)

// IANA protocol numbers, as conntrack tuples carry them.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// protocolNumber is p's number in a conntrack tuple; false for a protocol
// a Service port cannot have.
func protocolNumber(p Protocol) (uint8, bool) { return p.Number(), p.Known() }

// Stale names conntrack entries to delete: those of Protocol whose original
// destination is one of Frontends (ClusterIP:port, external or
// LoadBalancer IP:port, node IP:nodePort) and whose reply source is
// Endpoint, a backend that was removed. An invalid (zero) Endpoint means
// any reply source: kube-proxy clears the entries a UDP Service collected
// while it had no endpoint, which would otherwise blackhole the client
// until they time out.
type Stale struct {
	Protocol  Protocol
	Frontends []netip.AddrPort
	Endpoint  netip.AddrPort
}

func (s Stale) String() string {
	fs := make([]string, len(s.Frontends))
	for i, f := range s.Frontends {
		fs[i] = f.String()
	}
	ep := "any"
	if s.Endpoint.IsValid() {
		ep = s.Endpoint.String()
	}
	return fmt.Sprintf("%s [%s] reply from %s", s.Protocol, strings.Join(fs, " "), ep)
}

// Result says what one Clean did.
type Result struct {
	// Walks is the number of conntrack table dumps: 0 for an empty (or
	// wholly invalid) stale list, otherwise 1.
	Walks int
	// Scanned is the number of entries the dump returned: the whole table
	// of the families concerned, or with Filtered the part of it that the
	// kernel-side filter let through.
	Scanned  int
	Filtered bool
	// Deleted is the number of entries deleted.
	Deleted int
	// Vanished is the number of matching entries that were gone (expired,
	// or replaced by a new connection with the same tuple) by the time
	// their delete arrived: not an error.
	Vanished int
	// Duration is the time of the whole Clean; DumpDuration the part of it
	// spent dumping the table and matching entries, the rest is deletes.
	Duration     time.Duration
	DumpDuration time.Duration
}

// Interface deletes stale conntrack entries. Cleaner is the kernel's,
// Fake an in-memory one.
type Interface interface {
	// Clean deletes the entries named by stale with at most one walk of
	// the conntrack table, however many Stale it is given; an empty list
	// does nothing. Invalid Stale entries are reported in the error and
	// the valid ones are still cleaned.
	Clean(stale []Stale) (Result, error)
}

// frontendKey is what the first lookup of every dumped entry is keyed by:
// most entries miss here and cost one map probe.
type frontendKey struct {
	proto uint8
	addr  netip.AddrPort
}

type frontendMatch struct {
	anyEndpoint bool
	endpoints   map[netip.AddrPort]struct{}
}

// index is the hash index of what to delete, built once per Clean.
type index struct {
	frontends map[frontendKey]*frontendMatch

	// What all entries have in common, for a kernel-side pre-filter of
	// the dump: families, protocols, frontend and endpoint addresses and
	// ports (anyEndpoint: some Stale accepts any reply source).
	v4, v6        bool
	protos        map[uint8]struct{}
	frontendAddrs map[netip.Addr]struct{}
	frontendPorts map[uint16]struct{}
	endpointAddrs map[netip.Addr]struct{}
	endpointPorts map[uint16]struct{}
	anyEndpoint   bool
}

// newIndex indexes stale; invalid entries (or frontends) are left out and
// reported in the error.
func newIndex(stale []Stale) (*index, error) {
	ix := &index{
		frontends:     map[frontendKey]*frontendMatch{},
		protos:        map[uint8]struct{}{},
		frontendAddrs: map[netip.Addr]struct{}{},
		frontendPorts: map[uint16]struct{}{},
		endpointAddrs: map[netip.Addr]struct{}{},
		endpointPorts: map[uint16]struct{}{},
	}
	var errs []error
	for _, s := range stale {
		proto, ok := protocolNumber(s.Protocol)
		if !ok {
			errs = append(errs, fmt.Errorf("stale %s: unknown protocol %q", s, s.Protocol))
			continue
		}
		ep := unmap(s.Endpoint)
		if s.Endpoint.IsValid() && (!ep.Addr().IsValid() || ep.Addr().IsUnspecified() || ep.Port() == 0) {
			errs = append(errs, fmt.Errorf("stale %s: invalid endpoint", s))
			continue
		}
		if len(s.Frontends) == 0 {
			errs = append(errs, fmt.Errorf("stale %s: no frontends", s))
			continue
		}
		for _, f := range s.Frontends {
			f = unmap(f)
			if !f.IsValid() || f.Addr().IsUnspecified() || f.Port() == 0 {
				errs = append(errs, fmt.Errorf("stale %s: invalid frontend %q", s, f))
				continue
			}
			if ep.IsValid() && ep.Addr().Is4() != f.Addr().Is4() {
				errs = append(errs, fmt.Errorf("stale %s: frontend %s and endpoint are of different families", s, f))
				continue
			}
			k := frontendKey{proto: proto, addr: f}
			m := ix.frontends[k]
			if m == nil {
				m = &frontendMatch{}
				ix.frontends[k] = m
			}
			if !ep.IsValid() {
				m.anyEndpoint = true
				ix.anyEndpoint = true
			} else {
				if m.endpoints == nil {
					m.endpoints = map[netip.AddrPort]struct{}{}
				}
				m.endpoints[ep] = struct{}{}
				ix.endpointAddrs[ep.Addr()] = struct{}{}
				ix.endpointPorts[ep.Port()] = struct{}{}
			}
			if f.Addr().Is4() {
				ix.v4 = true
			} else {
				ix.v6 = true
			}
			ix.protos[proto] = struct{}{}
			ix.frontendAddrs[f.Addr()] = struct{}{}
			ix.frontendPorts[f.Port()] = struct{}{}
		}
	}
	return ix, errors.Join(errs...)
}

func (ix *index) empty() bool { return len(ix.frontends) == 0 }

// match reports whether an entry of protocol proto, original destination
// origDst and reply source replySrc is to be deleted.
func (ix *index) match(proto uint8, origDst, replySrc netip.AddrPort) bool {
	m := ix.frontends[frontendKey{proto: proto, addr: origDst}]
	if m == nil {
		return false
	}
	if m.anyEndpoint {
		return true
	}
	_, ok := m.endpoints[replySrc]
	return ok
}

// unmap turns an IPv4-mapped IPv6 address into IPv4 and drops any zone:
// conntrack tuples carry neither.
func unmap(ap netip.AddrPort) netip.AddrPort {
	if !ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}
