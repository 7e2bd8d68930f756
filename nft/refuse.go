package nft

import (
	"fmt"
	"slices"
	"strings"
)

// RefusedError is Sync's error when the kernel refused the elements of
// some owners: everything else was applied. The refused owners keep what
// the kernel held for them before (nothing, after a rebuild); their
// elements are tried again when they are declared again, or on the next
// rebuild.
type RefusedError struct {
	Owners []string // sorted
	Errs   map[string]error
}

func (e *RefusedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nftables refused the elements of %d owner(s):", len(e.Owners))
	for _, o := range e.Owners {
		fmt.Fprintf(&b, "\n%s: %v", o, e.Errs[o])
	}
	return b.String()
}

// ownerChange is what one owner changes in a transaction.
type ownerChange struct {
	owner string // "" for deletes of keys nobody owns any more
	tx    transaction
}

// isolate applies tx, which the kernel refused as a whole, owner by
// owner: it bisects the owners into halves, each half one transaction,
// until the refused owners are alone. With n owners and one bad one that
// is about 2·log2(n) transactions. A rebuild that failed is first replaced
// by a rebuild without elements, so that the table and its rules exist.
func (t *Table) isolate(tx transaction, cause error, res *SyncResult) (*RefusedError, error) {
	if tx.rebuild {
		if err := t.commit(transaction{rebuild: true}, res); err != nil {
			t.needsBuild = true
			return nil, cause
		}
		tx.rebuild = false
	}
	// The whole once more first: the failure may have been transient.
	refused := map[string]error{}
	t.bisect(t.changesByOwner(tx), res, refused)
	if err, ok := refused[""]; ok {
		// Deleting what nobody owns failed: the kernel is not what we
		// think it is. Rebuild next time.
		delete(refused, "")
		t.needsBuild = true
		if len(refused) == 0 {
			return nil, err
		}
	}
	if len(refused) == 0 {
		return nil, nil
	}
	t.failClosed(refused, res)
	re := &RefusedError{Errs: refused}
	for o := range refused {
		re.Owners = append(re.Owners, o)
	}
	slices.Sort(re.Owners)
	return re, nil
}

func (t *Table) bisect(groups []ownerChange, res *SyncResult, refused map[string]error) {
	if len(groups) == 0 {
		return
	}
	var tx transaction
	for _, g := range groups {
		tx.add = append(tx.add, g.tx.add...)
		tx.del = append(tx.del, g.tx.del...)
	}
	err := t.commit(tx, res)
	switch {
	case err == nil:
	case len(groups) == 1:
		refused[groups[0].owner] = err
	default:
		half := len(groups) / 2
		t.bisect(groups[:half], res, refused)
		t.bisect(groups[half:], res, refused)
	}
}

// changesByOwner splits a transaction by owner, in owner order. A shared key is
// attributed to its first owner; a replaced key's delete goes with its
// add.
func (t *Table) changesByOwner(tx transaction) []ownerChange {
	m := map[string]*ownerChange{}
	get := func(k elemKey) *ownerChange {
		owner := ""
		hs := t.owners[k]
		for _, h := range hs.all() {
			if owner == "" || h.owner < owner {
				owner = h.owner
			}
		}
		if m[owner] == nil {
			m[owner] = &ownerChange{owner: owner}
		}
		return m[owner]
	}
	for _, e := range tx.add {
		g := get(packKey(e.Element))
		g.tx.add = append(g.tx.add, e)
	}
	for _, e := range tx.del {
		g := get(packKey(e.Element))
		g.tx.del = append(g.tx.del, e)
	}
	out := make([]ownerChange, 0, len(m))
	for _, g := range m {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b ownerChange) int { return strings.Compare(a.owner, b.owner) })
	return out
}

// restrictive are the sets whose elements only ever take traffic away.
var restrictive = map[SetName]bool{
	LoadBalancerFirewall:      true,
	NoLocalEndpoints:          true,
	NodePortsNoLocalEndpoints: true,
}

// failClosed programs, for each refused owner, what it declared in the
// restrictive sets, when the kernel takes it: a LoadBalancer whose source
// ranges were refused then accepts no outside traffic instead of all of it
// (its IPVS virtual server is there either way).
func (t *Table) failClosed(refused map[string]error, res *SyncResult) {
	owners := make([]string, 0, len(refused))
	for o := range refused {
		owners = append(owners, o)
	}
	slices.Sort(owners)
	for _, o := range owners {
		var tx transaction
		for _, k := range t.byOwner[o] {
			if _, ok := t.programmed[k]; ok || !restrictive[k.setName()] {
				continue
			}
			want, _ := t.desired(k)
			tx.add = append(tx.add, want)
		}
		if len(tx.add) > 0 {
			_ = t.commit(tx, res) // best effort: the owner is reported either way
		}
	}
}
