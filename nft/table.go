package nft

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/nftvs/nftvs/internal/mapsize"
)

// Interface is what the proxier sees of the nftables companion table.
type Interface interface {
	// SetElements declares every element owner needs, replacing what owner
	// declared before; nil or empty removes owner. Elements that cannot be
	// programmed are left out and reported in the error; the others are
	// kept.
	SetElements(owner string, elems []Element) error
	// Reserve says that about n elements are about to be declared (a first
	// or full sync), so that the mirror sizes its maps once.
	Reserve(n int)
	// Sync sends what changed since the last Sync in one atomic
	// transaction. With full set, it also repairs drift: when anyone
	// changed the ruleset since our last commit (with a drift watch up:
	// when the watch saw someone change the table), the table is rebuilt
	// whole, in one transaction. When the kernel refuses a transaction,
	// it is retried (as a rebuild if the ruleset may have drifted), then
	// owner by owner: the error is then a *RefusedError naming the owners
	// left out, and the rest is applied.
	Sync(full bool) (SyncResult, error)
	// Cleanup deletes the table, and nothing else.
	Cleanup() error
	// WatchDrift calls onDrift soon after someone else changes the
	// table; the next Sync then rebuilds it. See Table.WatchDrift.
	WatchDrift(ctx context.Context, onDrift func()) error
	// ReadAhead reads the kernel's table for the first Sync ahead of
	// time (at start, while the informers list). See Table.ReadAhead.
	ReadAhead()
}

// SyncResult says what a Sync did.
type SyncResult struct {
	Rebuilt  bool // the whole table was rewritten
	Added    int  // elements added (all of them on a rebuild)
	Deleted  int  // elements deleted (0 on a rebuild)
	Elements int  // elements in the table after the sync
	Rules    int  // rules in the table (constant for a configuration)
	// Adopted: this first sync of the process found the table as
	// configured and diffed against it instead of rebuilding it (a
	// restart); NotAdopted says why it did not, when it did not.
	Adopted    bool
	NotAdopted string
}

// maxCommentLen keeps element comments well under the kernel's 256-byte
// userdata limit.
const maxCommentLen = 128

// KernelElement is an element as the kernel holds it: with the comment
// naming its owners.
type KernelElement struct {
	Element
	Comment string
}

// transaction is one batch for a backend.
type transaction struct {
	rebuild bool
	add     []KernelElement
	del     []KernelElement
}

// backend applies transactions to a kernel (or to a fake).
type backend interface {
	// apply commits tx in one transaction and returns the ruleset
	// generation that commit made.
	apply(cfg Config, tx transaction) (uint32, error)
	// generation is the ruleset generation: it changes with every commit
	// by anyone.
	generation() (uint32, error)
	// deleteTable deletes the table if it exists, and returns the
	// generation of that commit (0 when there was nothing to delete).
	deleteTable(name string) (uint32, error)
	// read reads the table as the kernel holds it, for the first sync of
	// a process (adopt).
	read(cfg Config) (tableRead, error)
	// watch calls on for every ruleset generation committed from now
	// until ctx is done, in order, from one goroutine; first with a lost
	// event from generation from up to the one it started at, last with a
	// down event.
	watch(ctx context.Context, table string, from uint32, on func(genEvent)) error
}

// Table is the companion table: a mirror of its elements with owner
// counts, and a backend that programs them.
type Table struct {
	cfg     Config
	backend backend

	mu      sync.Mutex
	owners  map[elemKey]owners // kernel key → its owners and the map value each asks for
	byOwner map[string][]elemKey
	// ranges indexes LoadBalancerSourceRanges keys by frontend, to find
	// overlaps without walking every element.
	ranges     map[elemKey]map[elemKey]struct{}
	programmed map[elemKey]programmedAs // kernel key → as programmed
	dirty      map[elemKey]struct{}     // kernel keys to reconcile
	needsBuild bool                     // next sync rebuilds the table
	// lastGen is the ruleset generation of our last commit; own holds
	// our recent ones, so that drift watching can tell them from others'.
	lastGen uint32
	own     generations
	// watching: a drift watch sees every change to the ruleset, so a
	// full sync need not compare generations.
	watching bool
	// readKernel: the first sync has read the kernel's table (adopt).
	readKernel bool
	// ahead is the table as ReadAhead read it, for adopt.
	ahead *tableRead
}

func newTable(cfg Config, b backend) (*Table, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Table{
		cfg:        cfg,
		backend:    b,
		owners:     map[elemKey]owners{},
		byOwner:    map[string][]elemKey{},
		ranges:     map[elemKey]map[elemKey]struct{}{},
		programmed: map[elemKey]programmedAs{},
		dirty:      map[elemKey]struct{}{},
		needsBuild: true,
	}, nil
}

// Reserve implements Interface. Only a mirror far smaller than n is
// sized again (a first sync): grown from empty, the owners and dirty keys
// of a first sync at 10k Services (20k elements) were 21 MB of garbage.
func (t *Table) Reserve(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.owners = mapsize.Grown(t.owners, n)
	t.dirty = mapsize.Grown(t.dirty, n)
}

// SetElements implements Interface.
func (t *Table) SetElements(owner string, elems []Element) error {
	t.mu.Lock()
	defer t.mu.Unlock()

	for _, k := range t.byOwner[owner] {
		hs := t.owners[k]
		hs.remove(owner)
		if hs.len() == 0 {
			delete(t.owners, k)
			if k.setName() == LoadBalancerSourceRanges {
				delete(t.ranges[k.frontend()], k)
			}
		} else {
			t.owners[k] = hs
		}
		t.dirty[k] = struct{}{}
	}
	delete(t.byOwner, owner)

	var errs []error
	var kept []elemKey
	others := map[elemKey]sortedRanges{} // by frontend, built when needed
	for _, e := range normalizeSourceRanges(elems) {
		if err := e.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if spec := setSpecs[e.Set]; spec.isMap && e.Mark&t.cfg.MasqueradeMark == 0 {
			errs = append(errs, fmt.Errorf("%s %s: fwmark lacks the masquerade bit %#x", e.Set, e, t.cfg.MasqueradeMark))
			continue
		}
		// One lookup of the key's holders an element: the first sync
		// declares 20k elements at 10k Services.
		k := packKey(e)
		hs, held := t.owners[k]
		if err := t.conflict(owner, e, &hs, others); err != nil {
			errs = append(errs, err)
			continue
		}
		if !hs.add(owner, e.Mark) {
			continue
		}
		t.owners[k] = hs
		if !held && e.Set == LoadBalancerSourceRanges {
			fe := k.frontend()
			if t.ranges[fe] == nil {
				t.ranges[fe] = map[elemKey]struct{}{}
			}
			t.ranges[fe][k] = struct{}{}
		}
		t.dirty[k] = struct{}{}
		kept = append(kept, k)
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
// an overlapping source range for the same frontend. others caches, per
// frontend, the ranges held before this SetElements call; hs holds e's
// key.
func (t *Table) conflict(owner string, e Element, hs *owners, others map[elemKey]sortedRanges) error {
	for i := range hs.len() {
		if h := hs.at(i); h.owner != owner && h.mark != e.Mark {
			return fmt.Errorf("%s %s: already mapped to %#x by %s", e.Set, e, h.mark, h.owner)
		}
	}
	if e.Set != LoadBalancerSourceRanges {
		return nil
	}
	fe := packKey(e).frontend()
	held, ok := others[fe]
	if !ok {
		for r := range t.ranges[fe] {
			held = append(held, r.element().Source)
		}
		slices.SortFunc(held, comparePrefixes)
		others[fe] = held
	}
	if p, ok := held.overlap(e.Source); ok {
		return fmt.Errorf("%s %s: overlaps %s", e.Set, e, p)
	}
	return nil
}

// sortedRanges are disjoint prefixes sorted by address: the source ranges
// of one frontend, which the kernel keeps disjoint.
type sortedRanges []netip.Prefix

// overlap returns a range that overlaps p without being p. Prefixes nest
// or are disjoint, so only p's neighbours in the order can.
func (s sortedRanges) overlap(p netip.Prefix) (netip.Prefix, bool) {
	i, _ := slices.BinarySearchFunc(s, p, comparePrefixes)
	if i < len(s) && s[i] != p && s[i].Overlaps(p) {
		return s[i], true
	}
	if i > 0 && s[i-1].Overlaps(p) {
		return s[i-1], true
	}
	return netip.Prefix{}, false
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// frontend is a source range element without its range.
func frontend(e Element) Element {
	return Element{Set: e.Set, Addr: e.Addr, Protocol: e.Protocol, Port: e.Port}
}

// normalizeSourceRanges drops source ranges contained in a wider (or
// equal, earlier) range of the same frontend: the kernel refuses
// overlapping intervals. Sorted by address, then widest first, a range is
// covered exactly when the last range kept for its frontend contains it.
func normalizeSourceRanges(elems []Element) []Element {
	var idx []int
	for i, e := range elems {
		if e.Set == LoadBalancerSourceRanges && e.Source.IsValid() && e.Source.Masked() == e.Source {
			idx = append(idx, i)
		}
	}
	if len(idx) < 2 {
		return elems // nothing can cover anything (most Services: no copy)
	}
	slices.SortStableFunc(idx, func(i, j int) int {
		a, b := elems[i], elems[j]
		if c := compareElements(frontend(a), frontend(b)); c != 0 {
			return c
		}
		return comparePrefixes(a.Source, b.Source)
	})
	covered := map[int]bool{}
	kept := -1
	for _, i := range idx {
		e := elems[i]
		if kept >= 0 {
			last := elems[kept]
			if frontend(last) == frontend(e) && last.Source.Bits() <= e.Source.Bits() && last.Source.Contains(e.Source.Addr()) {
				covered[i] = true
				continue
			}
		}
		kept = i
	}
	out := make([]Element, 0, len(elems))
	for i, e := range elems {
		if !covered[i] {
			out = append(out, e)
		}
	}
	return out
}

// desired is the element the kernel should hold for key k, if any: the
// key with its owners' map value (conflict keeps it one), commented with
// the owners' names.
func (t *Table) desired(k elemKey) (KernelElement, bool) {
	hs := t.owners[k]
	if hs.len() == 0 {
		return KernelElement{}, false
	}
	e := k.element()
	e.Mark = hs.first.mark
	comment := hs.first.owner
	if len(hs.rest) > 0 {
		names := make([]string, 0, hs.len())
		for _, h := range hs.all() {
			names = append(names, h.owner)
		}
		sort.Strings(names)
		comment = strings.Join(names, ", ")
	}
	if len(comment) > maxCommentLen {
		comment = comment[:maxCommentLen-3] + "..."
	}
	return KernelElement{Element: e, Comment: comment}, true
}

// Sync implements Interface.
func (t *Table) Sync(full bool) (SyncResult, error) {
	t.mu.Lock()
	defer t.mu.Unlock()

	if full && !t.needsBuild && !t.watching && t.othersCommitted() {
		t.needsBuild = true
	}
	res := SyncResult{Rules: t.cfg.ruleCount()}
	if t.needsBuild && !t.readKernel {
		t.readKernel = true
		t.adopt(&res)
	}
	tx := t.pending()
	if !tx.rebuild && len(tx.add) == 0 && len(tx.del) == 0 {
		t.clearDirty()
		res.Elements = len(t.programmed)
		return res, nil
	}
	err := t.commit(tx, &res)
	if err != nil && !tx.rebuild && t.othersCommitted() {
		// The failure may come from drift (an element someone deleted or
		// added behind our back): a rebuild repairs that. If the kernel
		// refuses the rebuild too, it still holds the old table, and the
		// changes are sorted out below.
		t.needsBuild = true
		if t.commit(t.pending(), &res) != nil {
			t.needsBuild = false
		} else {
			err = nil
		}
	}
	var refused error
	if err != nil {
		// Transactions are atomic: the kernel is unchanged. Find the
		// owners whose elements the kernel refuses and apply the rest.
		re, err := t.isolate(tx, err, &res)
		if err != nil {
			return res, err
		}
		if re != nil {
			refused = re
		}
	}
	t.clearDirty()
	res.Elements = len(t.programmed)
	return res, refused
}

// clearDirty empties the dirty keys. A Go map keeps its buckets when
// cleared: after a first sync at 10k Services that is 20k keys' worth
// (about 4 MB) held for good, for the handful a change marks. A large one
// is dropped instead.
func (t *Table) clearDirty() {
	if len(t.dirty) > 1024 {
		t.dirty = map[elemKey]struct{}{}
		return
	}
	clear(t.dirty)
}

// othersCommitted says whether anyone else may have committed since our
// last commit: only then can the table have drifted.
func (t *Table) othersCommitted() bool {
	gen, err := t.backend.generation()
	return err != nil || gen != t.lastGen
}

// pending is the transaction that brings the kernel to the mirror: every
// element on a rebuild, else the changed keys.
func (t *Table) pending() transaction {
	var tx transaction
	if t.needsBuild {
		// Sorted by packed key, then made elements: a first sync sorts
		// 20k, and comparing Elements (set names, netip values, protocol
		// names) was a fifth of its nft step under emulation.
		tx.rebuild = true
		keys := make([]elemKey, 0, len(t.owners))
		for k := range t.owners {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareKeys)
		tx.add = make([]KernelElement, 0, len(keys))
		for _, k := range keys {
			if d, ok := t.desired(k); ok {
				tx.add = append(tx.add, d)
			}
		}
		return tx
	}
	for k := range t.dirty {
		want, ok := t.desired(k)
		have, programmed := t.programmed[k]
		switch {
		case ok && programmed && have == (programmedAs{want.Mark, want.Comment}):
		case ok && programmed:
			// A new map value or comment: replace in the same
			// transaction, so the key never goes missing.
			tx.del = append(tx.del, have.kernelElement(k))
			tx.add = append(tx.add, want)
		case ok:
			tx.add = append(tx.add, want)
		case programmed:
			tx.del = append(tx.del, have.kernelElement(k))
		}
	}
	sortElements(tx.add)
	sortElements(tx.del)
	return tx
}

// commit applies tx and, when the kernel took it, updates the record of
// what is programmed and res.
func (t *Table) commit(tx transaction, res *SyncResult) error {
	gen, err := t.backend.apply(t.cfg, tx)
	if err != nil {
		return fmt.Errorf("nftables transaction (%d adds, %d deletes, rebuild=%v): %w",
			len(tx.add), len(tx.del), tx.rebuild, err)
	}
	t.ownGeneration(gen)
	if tx.rebuild {
		// Sized once: grown from empty, the record of a first sync at 10k
		// Services (20k elements) was 21 MB of garbage.
		t.programmed = make(map[elemKey]programmedAs, len(tx.add))
		t.needsBuild = false
		res.Rebuilt = true
	}
	for _, e := range tx.del {
		delete(t.programmed, packKey(e.Element))
	}
	for _, e := range tx.add {
		t.programmed[packKey(e.Element)] = programmedAs{e.Mark, e.Comment}
	}
	res.Added += len(tx.add)
	res.Deleted += len(tx.del)
	return nil
}

// Cleanup implements Interface.
func (t *Table) Cleanup() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	gen, err := t.backend.deleteTable(t.cfg.TableName)
	if err != nil {
		return fmt.Errorf("delete table inet %s: %w", t.cfg.TableName, err)
	}
	t.ownGeneration(gen)
	clear(t.programmed)
	t.needsBuild = true
	return nil
}

func sortElements(es []KernelElement) {
	slices.SortFunc(es, func(a, b KernelElement) int {
		if c := strings.Compare(string(a.Set), string(b.Set)); c != 0 {
			return c
		}
		// One set: family() of both in one look-up of its spec (a
		// first sync sorts 20k elements; under emulation the two
		// look-ups a comparison were half the sort's time).
		if setSpecs[a.Set].perFamily && a.Addr.Is4() != b.Addr.Is4() {
			return int(a.family()) - int(b.family())
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
