package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Interface is what the proxier sees of the nftables companion table.
type Interface interface {
	// SetElements declares every element owner needs, replacing what owner
	// declared before; nil or empty removes owner. Elements that cannot be
	// programmed are left out and reported in the error; the others are
	// kept.
	SetElements(owner string, elems []Element) error
	// Sync sends what changed since the last Sync in one atomic
	// transaction. With full set, it also repairs drift: when anyone
	// changed the ruleset since our last commit, the table is rebuilt
	// whole, in one transaction.
	Sync(full bool) (SyncResult, error)
	// Cleanup deletes the table, and nothing else.
	Cleanup() error
}

// SyncResult says what a Sync did.
type SyncResult struct {
	Rebuilt  bool // the whole table was rewritten
	Added    int  // elements added (all of them on a rebuild)
	Deleted  int  // elements deleted (0 on a rebuild)
	Elements int  // elements in the table after the sync
	Rules    int  // rules in the table (constant for a configuration)
}

// maxCommentLen keeps element comments well under the kernel's 256-byte
// userdata limit.
const maxCommentLen = 128

// kernelElement is an element as programmed, with its comment.
type kernelElement struct {
	Element
	Comment string
}

// transaction is one batch for a backend.
type transaction struct {
	rebuild bool
	add     []kernelElement
	del     []kernelElement
}

// backend applies transactions to a kernel (or to a fake).
type backend interface {
	apply(cfg Config, tx transaction) error
	// generation is the ruleset generation: it changes with every commit
	// by anyone.
	generation() (uint32, error)
	deleteTable(name string) error
}

// Table is the companion table: a mirror of its elements with owner
// counts, and a backend that programs them.
type Table struct {
	cfg     Config
	backend backend

	mu      sync.Mutex
	owners  map[Element]map[string]Element // kernel key → owner → element
	byOwner map[string][]Element
	// ranges indexes LoadBalancerSourceRanges keys by frontend, to find
	// overlaps without walking every element.
	ranges     map[Element]map[Element]struct{}
	programmed map[Element]kernelElement // kernel key → as programmed
	dirty      map[Element]struct{}      // kernel keys to reconcile
	needsBuild bool                      // next sync rebuilds the table
	lastGen    uint32
}

func newTable(cfg Config, b backend) (*Table, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Table{
		cfg:        cfg,
		backend:    b,
		owners:     map[Element]map[string]Element{},
		byOwner:    map[string][]Element{},
		ranges:     map[Element]map[Element]struct{}{},
		programmed: map[Element]kernelElement{},
		dirty:      map[Element]struct{}{},
		needsBuild: true,
	}, nil
}

// SetElements implements Interface.
func (t *Table) SetElements(owner string, elems []Element) error {
	t.mu.Lock()
	defer t.mu.Unlock()

	for _, e := range t.byOwner[owner] {
		k := e.kernelKey()
		delete(t.owners[k], owner)
		if len(t.owners[k]) == 0 {
			delete(t.owners, k)
			if k.Set == LoadBalancerSourceRanges {
				delete(t.ranges[frontend(k)], k)
			}
		}
		t.dirty[k] = struct{}{}
	}
	delete(t.byOwner, owner)

	var errs []error
	var kept []Element
	for _, e := range normalizeSourceRanges(elems) {
		if err := e.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		k := e.kernelKey()
		if err := t.conflict(owner, e); err != nil {
			errs = append(errs, err)
			continue
		}
		if t.owners[k] == nil {
			t.owners[k] = map[string]Element{}
			if k.Set == LoadBalancerSourceRanges {
				if t.ranges[frontend(k)] == nil {
					t.ranges[frontend(k)] = map[Element]struct{}{}
				}
				t.ranges[frontend(k)][k] = struct{}{}
			}
		}
		if _, dup := t.owners[k][owner]; dup {
			continue
		}
		t.owners[k][owner] = e
		t.dirty[k] = struct{}{}
		kept = append(kept, e)
	}
	if len(kept) > 0 {
		t.byOwner[owner] = kept
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w", owner, errors.Join(errs...))
	}
	return nil
}

// conflict refuses an element the kernel would reject because another
// owner's element overlaps it: a different map value for the same key, or
// an overlapping source range for the same frontend.
func (t *Table) conflict(owner string, e Element) error {
	k := e.kernelKey()
	for o, other := range t.owners[k] {
		if o != owner && other.Mark != e.Mark {
			return fmt.Errorf("%s %s: already mapped to %#x by %s", e.Set, e, other.Mark, o)
		}
	}
	if e.Set != LoadBalancerSourceRanges {
		return nil
	}
	for ok := range t.ranges[frontend(k)] {
		if ok != k && ok.Source.Overlaps(e.Source) {
			return fmt.Errorf("%s %s: overlaps %s", e.Set, e, ok.Source)
		}
	}
	return nil
}

// frontend is a source range element without its range.
func frontend(e Element) Element {
	return Element{Set: e.Set, Addr: e.Addr, Protocol: e.Protocol, Port: e.Port}
}

// normalizeSourceRanges drops source ranges contained in a wider range of
// the same frontend: the kernel refuses overlapping intervals.
func normalizeSourceRanges(elems []Element) []Element {
	out := make([]Element, 0, len(elems))
	for i, e := range elems {
		covered := false
		if e.Set == LoadBalancerSourceRanges && e.Source.IsValid() {
			for j, o := range elems {
				if i == j || o.Set != LoadBalancerSourceRanges || !o.Source.IsValid() ||
					o.Addr != e.Addr || o.Protocol != e.Protocol || o.Port != e.Port {
					continue
				}
				wider := o.Source.Bits() < e.Source.Bits() && o.Source.Contains(e.Source.Addr())
				same := o.Source.Masked() == e.Source.Masked() && j < i
				if wider || same {
					covered = true
					break
				}
			}
		}
		if !covered {
			out = append(out, e)
		}
	}
	return out
}

// desired is the element the kernel should hold for key k, if any.
func (t *Table) desired(k Element) (kernelElement, bool) {
	owners := t.owners[k]
	if len(owners) == 0 {
		return kernelElement{}, false
	}
	names := make([]string, 0, len(owners))
	for o := range owners {
		names = append(names, o)
	}
	sort.Strings(names)
	comment := strings.Join(names, ", ")
	if len(comment) > maxCommentLen {
		comment = comment[:maxCommentLen-3] + "..."
	}
	return kernelElement{Element: owners[names[0]], Comment: comment}, true
}

// Sync implements Interface.
func (t *Table) Sync(full bool) (SyncResult, error) {
	t.mu.Lock()
	defer t.mu.Unlock()

	if full && !t.needsBuild {
		gen, err := t.backend.generation()
		if err != nil || gen != t.lastGen {
			t.needsBuild = true
		}
	}
	res := SyncResult{Rules: t.cfg.ruleCount()}
	var tx transaction
	if t.needsBuild {
		tx.rebuild = true
		for k := range t.owners {
			d, _ := t.desired(k)
			tx.add = append(tx.add, d)
		}
	} else {
		for k := range t.dirty {
			want, ok := t.desired(k)
			have, programmed := t.programmed[k]
			switch {
			case ok && programmed && have == want:
			case ok && programmed:
				// A new map value or comment: replace in the same
				// transaction, so the key never goes missing.
				tx.del = append(tx.del, have)
				tx.add = append(tx.add, want)
			case ok:
				tx.add = append(tx.add, want)
			case programmed:
				tx.del = append(tx.del, have)
			}
		}
	}
	if !tx.rebuild && len(tx.add) == 0 && len(tx.del) == 0 {
		clear(t.dirty)
		res.Elements = len(t.programmed)
		return res, nil
	}
	sortElements(tx.add)
	sortElements(tx.del)
	if err := t.backend.apply(t.cfg, tx); err != nil {
		// The transaction is atomic: the kernel is unchanged. Rebuild next
		// time, in case the failure came from drift (an element someone
		// deleted or added behind our back).
		t.needsBuild = true
		return res, fmt.Errorf("nftables transaction (%d adds, %d deletes, rebuild=%v): %w",
			len(tx.add), len(tx.del), tx.rebuild, err)
	}
	if tx.rebuild {
		clear(t.programmed)
	}
	for _, e := range tx.del {
		delete(t.programmed, e.kernelKey())
	}
	for _, e := range tx.add {
		t.programmed[e.kernelKey()] = e
	}
	clear(t.dirty)
	t.needsBuild = false
	if gen, err := t.backend.generation(); err == nil {
		t.lastGen = gen
	}
	res.Rebuilt, res.Added, res.Deleted, res.Elements = tx.rebuild, len(tx.add), len(tx.del), len(t.programmed)
	return res, nil
}

// Cleanup implements Interface.
func (t *Table) Cleanup() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.backend.deleteTable(t.cfg.TableName); err != nil {
		return fmt.Errorf("delete table inet %s: %w", t.cfg.TableName, err)
	}
	clear(t.programmed)
	t.needsBuild = true
	return nil
}

func sortElements(es []kernelElement) {
	slices.SortFunc(es, func(a, b kernelElement) int {
		if c := strings.Compare(string(a.Set), string(b.Set)); c != 0 {
			return c
		}
		if fa, fb := a.family(), b.family(); fa != fb {
			return int(fa) - int(fb)
		}
		return compareElements(a.Element, b.Element)
	})
}

func compareElements(a, b Element) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := strings.Compare(string(a.Protocol), string(b.Protocol)); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	if c := a.Source.Addr().Compare(b.Source.Addr()); c != 0 {
		return c
	}
	return a.Source.Bits() - b.Source.Bits()
}

func (cfg Config) ruleCount() int {
	n := 0
	for _, c := range cfg.chains() {
		n += len(c.rules)
	}
	return n
}

// addrRange is an inclusive address range.
type addrRange struct{ first, last netip.Addr }

// mergePrefixes turns a CIDR list into sorted, disjoint ranges of family
// f, merging overlapping and adjacent ones: interval sets refuse overlaps.
func mergePrefixes(ps []netip.Prefix, f Family) []addrRange {
	var rs []addrRange
	for _, p := range ps {
		if p.Addr().Is4() != (f == IPv4) {
			continue
		}
		first, last := prefixRange(p)
		rs = append(rs, addrRange{first, last})
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return a.first.Compare(b.first) })
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			prev := &out[n-1]
			next := prev.last.Next()
			if r.first.Compare(prev.last) <= 0 || (next.IsValid() && r.first == next) {
				if r.last.Compare(prev.last) > 0 {
					prev.last = r.last
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}
