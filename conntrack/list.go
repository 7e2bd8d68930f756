package conntrack

import (
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/nftvs/nftvs/internal/l4"
)

// List returns the conntrack entries whose original destination is one of
// frontends (of any protocol), in one dump of the table, for `nftvs
// explain`. It reads only: nothing is deleted.
func (c *Cleaner) List(frontends []netip.AddrPort) ([]Flow, error) {
	want := make(map[netip.AddrPort]bool, len(frontends))
	for _, f := range frontends {
		want[netip.AddrPortFrom(f.Addr().Unmap(), f.Port())] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := openSocket(c.netns, c.timeout)
	if err != nil {
		return nil, fmt.Errorf("list conntrack entries: %w", err)
	}
	defer s.close()
	var out []Flow
	_, err = s.dump(unix.AF_UNSPEC, nil, func(e *entry) {
		if want[e.origDst] {
			out = append(out, Flow{Protocol: l4.FromNumber(e.proto), OrigSrc: e.origSrc, OrigDst: e.origDst, ReplySrc: e.replySrc})
		}
	})
	if err != nil {
		return out, fmt.Errorf("list conntrack entries: %w", err)
	}
	slices.SortFunc(out, func(a, b Flow) int {
		if c := a.OrigDst.Compare(b.OrigDst); c != 0 {
			return c
		}
		return a.OrigSrc.Compare(b.OrigSrc)
	})
	return out, nil
}
