package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Flow is a conntrack entry as the Fake holds it: the original direction's
// source and destination (client → what it connected to) and the reply
// direction's source (who answers: the endpoint, after IPVS or DNAT).
type Flow struct {
	Protocol Protocol
	OrigSrc  netip.AddrPort
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
}

func (f Flow) String() string {
	return fmt.Sprintf("%s %s -> %s reply from %s", f.Protocol, f.OrigSrc, f.OrigDst, f.ReplySrc)
}

// Fake records every Clean call and applies it, with the Cleaner's
// matching, to an in-memory conntrack table, so proxier tests can assert
// both on what was asked and on which flows survive.
type Fake struct {
	mu    sync.Mutex
	calls [][]Stale
	flows []Flow
	// Err, when set, is returned by every Clean, which then deletes
	// nothing (the call is still recorded).
	Err error
}

var _ Interface = (*Fake)(nil)

// NewFake returns a Fake holding flows.
func NewFake(flows ...Flow) *Fake { return &Fake{flows: slices.Clone(flows)} }

// AddFlows adds entries to the fake table.
func (f *Fake) AddFlows(flows ...Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows = append(f.flows, flows...)
}

// Flows returns the entries left in the fake table.
func (f *Fake) Flows() []Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.flows)
}

// Calls returns the stale lists of every Clean call, in order, empty ones
// included.
func (f *Fake) Calls() [][]Stale {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]Stale, len(f.calls))
	for i, c := range f.calls {
		out[i] = cloneStale(c)
	}
	return out
}

// Stale returns the Stale entries of every call, in order.
func (f *Fake) Stale() []Stale {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Stale
	for _, c := range f.calls {
		out = append(out, cloneStale(c)...)
	}
	return out
}

// Reset forgets the recorded calls (not the flows).
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// Clean records stale and deletes the matching flows.
func (f *Fake) Clean(stale []Stale) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, cloneStale(stale))
	var res Result
	ix, verr := newIndex(stale)
	if ix.empty() {
		return res, verr
	}
	if f.Err != nil {
		return res, errors.Join(verr, f.Err)
	}
	res.Walks, res.Scanned = 1, len(f.flows)
	kept := f.flows[:0]
	for _, fl := range f.flows {
		proto, ok := protocolNumber(fl.Protocol)
		if ok && ix.match(proto, unmap(fl.OrigDst), unmap(fl.ReplySrc)) {
			res.Deleted++
			continue
		}
		kept = append(kept, fl)
	}
	clear(f.flows[len(kept):])
	f.flows = kept
	return res, verr
}

func cloneStale(in []Stale) []Stale {
	out := make([]Stale, len(in))
	for i, s := range in {
		s.Frontends = slices.Clone(s.Frontends)
		out[i] = s
	}
	return out
}
