package nft

import "context"

// genEvent is one ruleset generation seen by a watcher: gen, and whether
// any change in it named our table. lost reports a gap (the watch just
// started, or notifications were lost): every generation after from up to
// gen may have touched the table; the watcher sees every change again
// from gen on. down reports that it does not, until the next lost event.
type genEvent struct {
	gen     uint32
	touched bool
	lost    bool
	from    uint32
	down    bool
}

// generations remembers our recent commits' generation numbers.
type generations struct {
	seen map[uint32]struct{}
	fifo []uint32
}

// maxOwnGenerations bounds the memory of our own commits: a watcher
// classifies each generation within a few of them.
const maxOwnGenerations = 1024

func (t *Table) ownGeneration(gen uint32) {
	if gen == 0 {
		return
	}
	t.lastGen = gen
	g := &t.own
	if g.seen == nil {
		g.seen = map[uint32]struct{}{}
	}
	g.seen[gen] = struct{}{}
	g.fifo = append(g.fifo, gen)
	if len(g.fifo) > maxOwnGenerations {
		delete(g.seen, g.fifo[0])
		g.fifo = g.fifo[1:]
	}
}

// WatchDrift calls onDrift, from its own goroutine, soon after someone
// else changes the table (`nft flush ruleset`, a deleted table, chain, rule
// or element): the next Sync, full or not, rebuilds it. Our own commits
// and other tables' changes are ignored: every commit makes a new ruleset
// generation, and the table knows the generations it made itself. It
// returns once watching has started, and watches until ctx is done.
//
// Watching listens to the kernel's nftables notifications
// (NFNLGRP_NFTABLES). If they overflow the socket, the generations missed
// are compared with our own: if any is someone else's, onDrift is called.
// While the watch is up, a full Sync trusts it, and no longer rebuilds the
// table because someone committed to another table.
func (t *Table) WatchDrift(ctx context.Context, onDrift func()) error {
	t.mu.Lock()
	from := t.lastGen
	t.mu.Unlock()
	return t.backend.watch(ctx, t.cfg.TableName, from, func(ev genEvent) {
		if t.drifted(ev) {
			onDrift()
		}
	})
}

// drifted says whether ev is a change to our table by someone else, and
// if so makes the next sync a rebuild. It takes the lock: our own commit's
// notification arrives while Sync holds it, before Sync records the
// generation.
func (t *Table) drifted(ev genEvent) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	foreign := false
	switch {
	case ev.down:
		t.watching = false
	case ev.lost:
		t.watching = true
		for g, n := ev.from+1, 0; g != ev.gen+1 && !t.needsBuild; g, n = g+1, n+1 {
			if _, ours := t.own.seen[g]; !ours && g != 0 || n > maxOwnGenerations {
				foreign = true
				break
			}
		}
	case ev.touched:
		_, ours := t.own.seen[ev.gen]
		foreign = !ours
	}
	if foreign {
		t.needsBuild = true
	}
	return foreign
}
