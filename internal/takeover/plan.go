package takeover

import (
	"fmt"
	"slices"
	"strings"
)

// Family is an nftables family holding iptables-nft tables.
type Family string

const (
	IPv4 Family = "ip"
	IPv6 Family = "ip6"
)

// Ruleset is what was read of the iptables-nft tables: only what
// planning needs, which chain jumps where.
type Ruleset struct {
	Tables []Table
}

// Table is one iptables-nft table (filter, nat, mangle) of a family.
type Table struct {
	Family Family
	Name   string
	Chains []Chain
}

// Chain is a chain and its rules. Base chains are hooked into netfilter:
// in iptables-nft tables, the built-in ones (PREROUTING, INPUT, ...).
type Chain struct {
	Name  string
	Base  bool
	Rules []Rule
}

// Rule is a rule, by its kernel handle, with the chains its verdicts jump
// or go to (none for ACCEPT, MARK, MASQUERADE...).
type Rule struct {
	Handle  uint64
	Targets []string
}

// TableRef names a table.
type TableRef struct {
	Family Family
	Name   string
}

func (t TableRef) String() string { return string(t.Family) + " " + t.Name }

// RuleRef is a rule to delete: a jump from a chain that stays into a
// chain that goes.
type RuleRef struct {
	Chain  string
	Handle uint64
	Target string
}

func (r RuleRef) String() string {
	return fmt.Sprintf("%s rule %d (-j %s)", r.Chain, r.Handle, r.Target)
}

// ChainRemoval is a kube-proxy chain to flush and delete.
type ChainRemoval struct {
	Name  string
	Rules int
}

// KeptChain is a kube-proxy chain left in place, and why.
type KeptChain struct {
	Name   string
	Reason string
}

// TablePlan is what to delete in one table, in this order: the rules of
// other chains that jump to kube-proxy's chains, then every rule of those
// chains (their jumps to each other included, or deleting the chain a
// rule jumps to would fail with EBUSY), then the chains.
type TablePlan struct {
	Table        TableRef
	DeleteRules  []RuleRef
	DeleteChains []ChainRemoval
	Kept         []KeptChain
}

// Empty reports whether the table needs no change.
func (p TablePlan) Empty() bool { return len(p.DeleteRules) == 0 && len(p.DeleteChains) == 0 }

// Plan is what to delete in every table.
type Plan struct {
	Tables []TablePlan
}

// Empty reports whether nothing is to be deleted (kept chains aside).
func (p Plan) Empty() bool {
	for _, t := range p.Tables {
		if !t.Empty() {
			return false
		}
	}
	return true
}

// Kept lists the kube-proxy chains that stay, with their table.
func (p Plan) Kept() []string {
	var out []string
	for _, t := range p.Tables {
		for _, k := range t.Kept {
			out = append(out, fmt.Sprintf("%s %s: %s", t.Table, k.Name, k.Reason))
		}
	}
	return out
}

// String is the plan, one deletion per line, as tests compare it.
func (p Plan) String() string {
	var b strings.Builder
	for _, t := range p.Tables {
		for _, r := range t.DeleteRules {
			fmt.Fprintf(&b, "%s: delete %s\n", t.Table, r)
		}
		for _, c := range t.DeleteChains {
			fmt.Fprintf(&b, "%s: delete chain %s (%d rules)\n", t.Table, c.Name, c.Rules)
		}
		for _, k := range t.Kept {
			fmt.Fprintf(&b, "%s: keep chain %s: %s\n", t.Table, k.Name, k.Reason)
		}
	}
	return b.String()
}

// PlanRuleset decides what to delete: per table, kube-proxy's chains
// (KubeProxyChains) that exist as regular chains, with every rule of a
// base chain that jumps or goes to one of them. A kube-proxy chain that
// someone else's regular chain jumps to is kept, and so is every
// kube-proxy chain a kept one jumps to: deleting it would fail (EBUSY) or
// break that chain. Base chains are never deleted, whatever their name.
func PlanRuleset(rs Ruleset) Plan {
	var out Plan
	for _, t := range rs.Tables {
		tp := planTable(t)
		if tp.Empty() && len(tp.Kept) == 0 {
			continue
		}
		out.Tables = append(out.Tables, tp)
	}
	slices.SortFunc(out.Tables, func(a, b TablePlan) int {
		return strings.Compare(a.Table.String(), b.Table.String())
	})
	return out
}

func planTable(t Table) TablePlan {
	tp := TablePlan{Table: TableRef{Family: t.Family, Name: t.Name}}
	chains := make(map[string]*Chain, len(t.Chains))
	candidate := map[string]bool{}
	for i := range t.Chains {
		c := &t.Chains[i]
		chains[c.Name] = c
		if !c.Base && isKubeProxyChain(t.Name, c.Name) {
			candidate[c.Name] = true
		}
	}
	// Who holds each candidate: regular chains that stay and jump to it.
	heldBy := map[string][]string{}
	var queue []string
	for _, c := range t.Chains {
		if c.Base || candidate[c.Name] {
			continue
		}
		for _, r := range c.Rules {
			for _, to := range r.Targets {
				if candidate[to] && !slices.Contains(heldBy[to], c.Name) {
					if len(heldBy[to]) == 0 {
						queue = append(queue, to)
					}
					heldBy[to] = append(heldBy[to], c.Name)
				}
			}
		}
	}
	// A kept chain keeps what it jumps to.
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		for _, r := range chains[name].Rules {
			for _, to := range r.Targets {
				if candidate[to] && !slices.Contains(heldBy[to], name) {
					if len(heldBy[to]) == 0 {
						queue = append(queue, to)
					}
					heldBy[to] = append(heldBy[to], name)
				}
			}
		}
	}

	// kube-proxy's hooks into the built-in chains go, also those into a
	// kept chain: kube-proxy no longer runs; whoever jumps to a kept
	// chain still can.
	for _, c := range t.Chains {
		if !c.Base {
			continue
		}
		for _, r := range c.Rules {
			for _, to := range r.Targets {
				if candidate[to] {
					tp.DeleteRules = append(tp.DeleteRules, RuleRef{Chain: c.Name, Handle: r.Handle, Target: to})
					break
				}
			}
		}
	}
	for _, name := range KubeProxyChains[t.Name] {
		if !candidate[name] {
			continue
		}
		if by := heldBy[name]; len(by) > 0 {
			slices.Sort(by)
			tp.Kept = append(tp.Kept, KeptChain{Name: name,
				Reason: "jumped to by " + strings.Join(by, ", ") + ", which is not a chain of kube-proxy's IPVS mode"})
			continue
		}
		tp.DeleteChains = append(tp.DeleteChains, ChainRemoval{Name: name, Rules: len(chains[name].Rules)})
	}
	return tp
}
