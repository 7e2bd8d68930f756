package conntrack

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Cleaner deletes stale conntrack entries over ctnetlink. Each Clean dumps
// the table once, matches every entry against a hash index of the stale
// list, and deletes the matches in batches.
type Cleaner struct {
	mu           sync.Mutex // one Clean at a time: each walks the whole table
	netns        int
	timeout      time.Duration
	kernelFilter bool
}

var _ Interface = (*Cleaner)(nil)

// Option configures a Cleaner.
type Option func(*Cleaner)

// WithNetNS makes the Cleaner work in the network namespace open as fd
// (tests); the default is the namespace of the calling process.
func WithNetNS(fd int) Option { return func(c *Cleaner) { c.netns = fd } }

// WithKernelFilter turns the kernel-side pre-filter of the dump on (the
// default) or off. It only ever narrows the dump to a superset of the
// entries to delete; turning it off costs time, not correctness, and is
// there for a kernel whose CTA_FILTER misbehaves.
func WithKernelFilter(on bool) Option { return func(c *Cleaner) { c.kernelFilter = on } }

// WithTimeout bounds one Clean (default two minutes).
func WithTimeout(d time.Duration) Option { return func(c *Cleaner) { c.timeout = d } }

// New returns a Cleaner after checking that ctnetlink answers (a request
// for the table's size, which walks nothing).
func New(opts ...Option) (*Cleaner, error) {
	c := &Cleaner{netns: -1, timeout: defaultTimeout, kernelFilter: true}
	for _, o := range opts {
		o(c)
	}
	if c.timeout <= 0 {
		return nil, fmt.Errorf("conntrack cleaner: timeout %v is not positive", c.timeout)
	}
	s, err := openSocket(c.netns, c.timeout)
	if err != nil {
		return nil, fmt.Errorf("conntrack cleaner: %w", err)
	}
	defer s.close()
	if _, err := s.count(); err != nil {
		return nil, fmt.Errorf("conntrack cleaner: %w", err)
	}
	return c, nil
}

// Clean deletes the conntrack entries named by stale, with at most one
// walk of the table. An entry that is gone by the time it is deleted is
// counted as Vanished, not as an error.
func (c *Cleaner) Clean(stale []Stale) (Result, error) {
	start := time.Now()
	var res Result
	ix, verr := newIndex(stale)
	if ix.empty() {
		return res, verr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := openSocket(c.netns, c.timeout)
	if err != nil {
		return res, errors.Join(verr, fmt.Errorf("clean conntrack: %w", err))
	}
	defer s.close()

	var ds []doomed
	collect := func(e *entry) {
		if ix.match(e.proto, e.origDst, e.replySrc) {
			ds = append(ds, newDoomed(e))
		}
	}
	// With both families, AF_UNSPEC returns both in the same walk.
	family, attrs, filtered := ix.dumpRequest(c.kernelFilter)
	res.Walks, res.Filtered = 1, filtered
	res.Scanned, err = s.dump(family, attrs, collect)
	if filtered && res.Scanned == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
		// The kernel refused the filter when the dump started, before
		// walking anything: dump unfiltered instead.
		res.Filtered = false
		res.Scanned, err = s.dump(family, nil, collect)
	}
	res.DumpDuration = time.Since(start)
	if err != nil {
		// A partial dump still names entries that must go.
		err = fmt.Errorf("clean conntrack: %w", err)
	}
	var derr error
	res.Deleted, res.Vanished, derr = s.deleteEntries(ds)
	if derr != nil {
		derr = fmt.Errorf("clean conntrack: %w", derr)
	}
	res.Duration = time.Since(start)
	return res, errors.Join(verr, err, derr)
}
