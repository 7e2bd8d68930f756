package takeover

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Rules is what Run needs of the iptables-nft tables: Netfilter, or a
// fake in tests.
type Rules interface {
	// Read returns the ruleset and the generation it was read at.
	Read() (Ruleset, uint32, error)
	// Apply deletes what the plan says in one transaction, refused with
	// ERESTART if the ruleset is no longer at generation gen.
	Apply(p Plan, gen uint32) error
}

// Sets is what Run needs of ipset: IPSets, or a fake in tests.
type Sets interface {
	// Destroy destroys a set; existed is false when there was none.
	// ErrInUse when a rule still references it, ErrNoIPSet when the
	// kernel has no ipset.
	Destroy(name string) (existed bool, err error)
	// Exists reports whether a set of that name exists, changing
	// nothing; ErrNoIPSet when the kernel has no ipset.
	Exists(name string) (bool, error)
}

// Kernel is where Run works.
type Kernel struct {
	Rules Rules
	// IPSets is nil when the kernel has no ipset support.
	IPSets Sets
	// ProcNet is the /proc/net of the network namespace, for the
	// iptables-legacy check; "" skips it.
	ProcNet string
}

// Report is what Run did and what it left.
type Report struct {
	RulesDeleted    []string // "ip nat PREROUTING rule 4 (-j KUBE-SERVICES)"
	ChainsDeleted   []string // "ip nat KUBE-SERVICES"
	ChainsKept      []string // with the reason
	IPSetsDestroyed []string
	IPSetsKept      []string // still in use when Run gave up
	// LegacyTables are iptables-legacy tables ("ip filter"): rules of
	// kube-proxy there are out of reach.
	LegacyTables []string
}

// Found reports whether anything of kube-proxy's was found.
func (r Report) Found() bool {
	return len(r.RulesDeleted)+len(r.ChainsDeleted)+len(r.ChainsKept)+len(r.IPSetsDestroyed)+len(r.IPSetsKept) > 0
}

const (
	// maxAttempts bounds the read-plan-apply rounds: a round is redone
	// when another writer changed the ruleset meanwhile (ERESTART), or to
	// check that nothing is left.
	maxAttempts = 5
	// ipsetWaitDefault bounds how long Run waits for ipsets to be
	// released: the kernel drops an iptables-nft rule's reference to its
	// ipset after the transaction that deleted the rule, from a work
	// queue.
	ipsetWaitDefault = 2 * time.Second
)

// ipsetWait is ipsetWaitDefault; tests shorten it.
var ipsetWait = ipsetWaitDefault

// Run removes kube-proxy's IPVS-mode chains, their jumps and its ipsets,
// and nothing else; it is idempotent (a second run finds nothing). The
// error is what failed; chains and ipsets kept on purpose (someone else
// uses them) and iptables-legacy tables are in the report, not errors.
func Run(k Kernel) (Report, error) {
	var rep Report
	var errs []error
	if err := removeRules(k.Rules, &rep); err != nil {
		errs = append(errs, err)
	}
	if k.IPSets != nil {
		if err := destroyIPSets(k.IPSets, &rep); err != nil {
			errs = append(errs, err)
		}
	}
	if k.ProcNet != "" {
		legacy, err := LegacyTables(k.ProcNet)
		if err != nil {
			errs = append(errs, fmt.Errorf("iptables-legacy check: %w", err))
		}
		rep.LegacyTables = legacy
	}
	return rep, errors.Join(errs...)
}

func removeRules(k Rules, rep *Report) error {
	for attempt := 1; ; attempt++ {
		rs, gen, err := k.Read()
		if err != nil {
			return fmt.Errorf("read the iptables-nft tables: %w", err)
		}
		p := PlanRuleset(rs)
		rep.ChainsKept = p.Kept()
		if p.Empty() {
			return nil
		}
		if attempt > maxAttempts {
			return fmt.Errorf("kube-proxy's chains are still there after %d rounds (is kube-proxy still running on this node?): %s",
				maxAttempts, strings.TrimSpace(p.String()))
		}
		err = k.Apply(p, gen)
		switch {
		case err == nil:
			rep.record(p)
			// Read again: nothing should be left.
		case errors.Is(err, syscall.ERESTART):
			// Someone else changed the ruleset since the read: nothing
			// was deleted; read again.
		default:
			// One table at a time, so that a table that cannot be
			// cleaned does not hold back the others.
			return errors.Join(fmt.Errorf("remove kube-proxy's chains in one transaction: %w", err), removeByTable(k, p, rep))
		}
	}
}

// removeByTable applies each table of p on its own, each from a fresh
// read.
func removeByTable(k Rules, p Plan, rep *Report) error {
	var errs []error
	for _, want := range p.Tables {
		rs, gen, err := k.Read()
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("read the iptables-nft tables: %w", err))...)
		}
		for _, tp := range PlanRuleset(rs).Tables {
			if tp.Table != want.Table || tp.Empty() {
				continue
			}
			one := Plan{Tables: []TablePlan{tp}}
			if err := k.Apply(one, gen); err != nil {
				errs = append(errs, fmt.Errorf("table %s: %w", tp.Table, err))
				continue
			}
			rep.record(one)
		}
	}
	return errors.Join(errs...)
}

func (r *Report) record(p Plan) {
	for _, t := range p.Tables {
		for _, d := range t.DeleteRules {
			r.RulesDeleted = append(r.RulesDeleted, fmt.Sprintf("%s %s", t.Table, d))
		}
		for _, c := range t.DeleteChains {
			r.ChainsDeleted = append(r.ChainsDeleted, fmt.Sprintf("%s %s", t.Table, c.Name))
		}
	}
}

func destroyIPSets(s Sets, rep *Report) error {
	pending := KubeProxyIPSets()
	var errs []error
	deadline := time.Now().Add(ipsetWait)
	for pause := 10 * time.Millisecond; len(pending) > 0; pause = min(2*pause, 200*time.Millisecond) {
		var busy []string
		for _, n := range pending {
			existed, err := s.Destroy(n)
			switch {
			case err == nil && existed:
				rep.IPSetsDestroyed = append(rep.IPSetsDestroyed, n)
			case err == nil:
			case errors.Is(err, ErrInUse):
				busy = append(busy, n)
			case errors.Is(err, ErrNoIPSet):
				return nil
			default:
				errs = append(errs, err)
			}
		}
		pending = busy
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(pause)
	}
	for _, n := range pending {
		rep.IPSetsKept = append(rep.IPSetsKept, n+": still in use after "+ipsetWait.String()+
			" (by a rule that is not kube-proxy's IPVS mode's, an iptables-legacy rule, or a list:set)")
	}
	return errors.Join(errs...)
}

// Leftovers is kube-proxy IPVS mode's state as Find saw it, untouched.
type Leftovers struct {
	Chains []string // "ip nat KUBE-SERVICES"
	Jumps  []string // "ip nat PREROUTING rule 4 (-j KUBE-SERVICES)"
	IPSets []string
	// LegacyTables are iptables-legacy tables, where kube-proxy's rules
	// may be too, out of sight.
	LegacyTables []string
}

// Found reports whether any of kube-proxy's chains, jumps or ipsets is
// there (legacy tables alone are not kube-proxy's).
func (l Leftovers) Found() bool { return len(l.Chains)+len(l.Jumps)+len(l.IPSets) > 0 }

// String names everything that is there, for a log line.
func (l Leftovers) String() string { return l.Summary(-1) }

// Summary is String naming at most n chains and n ipsets (all with n <
// 0): an Event's note holds at most 1024 characters, and a dual-stack
// node has some 50 of kube-proxy's chains and ipsets.
func (l Leftovers) Summary(n int) string {
	names := func(s []string) string {
		if n < 0 || len(s) <= n {
			return strings.Join(s, ", ")
		}
		return strings.Join(s[:n], ", ") + ", …"
	}
	var parts []string
	if len(l.Chains) > 0 {
		parts = append(parts, fmt.Sprintf("%d iptables chains (%s)", len(l.Chains), names(l.Chains)))
	}
	if len(l.Jumps) > 0 {
		parts = append(parts, fmt.Sprintf("%d jumps to them from built-in chains", len(l.Jumps)))
	}
	if len(l.IPSets) > 0 {
		parts = append(parts, fmt.Sprintf("%d ipsets (%s)", len(l.IPSets), names(l.IPSets)))
	}
	return strings.Join(parts, "; ")
}

// Find reports what Run would remove, and removes nothing: kube-proxy's
// chains (kept ones included), the jumps to them and its ipsets.
func Find(k Kernel) (Leftovers, error) {
	var l Leftovers
	var errs []error
	rs, _, err := k.Rules.Read()
	if err != nil {
		errs = append(errs, fmt.Errorf("read the iptables-nft tables: %w", err))
	}
	for _, t := range PlanRuleset(rs).Tables {
		for _, r := range t.DeleteRules {
			l.Jumps = append(l.Jumps, fmt.Sprintf("%s %s", t.Table, r))
		}
		for _, c := range t.DeleteChains {
			l.Chains = append(l.Chains, fmt.Sprintf("%s %s", t.Table, c.Name))
		}
		for _, c := range t.Kept {
			l.Chains = append(l.Chains, fmt.Sprintf("%s %s", t.Table, c.Name))
		}
	}
	if k.IPSets != nil {
		for _, n := range KubeProxyIPSets() {
			ok, err := k.IPSets.Exists(n)
			if errors.Is(err, ErrNoIPSet) {
				break
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if ok {
				l.IPSets = append(l.IPSets, n)
			}
		}
	}
	if k.ProcNet != "" {
		legacy, err := LegacyTables(k.ProcNet)
		if err != nil {
			errs = append(errs, fmt.Errorf("iptables-legacy check: %w", err))
		}
		l.LegacyTables = legacy
	}
	return l, errors.Join(errs...)
}

// Node is the kernel of the current network namespace.
func Node() Kernel {
	return Kernel{Rules: NewNetfilter(-1), IPSets: IPSets{}, ProcNet: "/proc/self/net"}
}

// KubeProxy takes over from kube-proxy's IPVS mode in k (Node() on a
// node) and logs what it did. The error says what failed; the caller
// decides what to make of it.
func KubeProxy(k Kernel) error {
	start := time.Now()
	rep, err := Run(k)
	rep.Log(time.Since(start))
	if err != nil {
		return fmt.Errorf("take over from kube-proxy's IPVS mode: %w", err)
	}
	return nil
}

// Log writes the report: one line of what was removed, one warning per
// thing left.
func (r Report) Log(took time.Duration) {
	if r.Found() {
		klog.InfoS("Took over from kube-proxy's IPVS mode: removed its iptables rules and ipsets",
			"chainsDeleted", r.ChainsDeleted, "jumpRulesDeleted", r.RulesDeleted,
			"ipsetsDestroyed", r.IPSetsDestroyed, "duration", took)
	} else {
		klog.InfoS("Taking over from kube-proxy's IPVS mode: none of its iptables-nft chains or ipsets found", "duration", took)
	}
	for _, c := range r.ChainsKept {
		klog.Warningf("Taking over from kube-proxy: kept chain %s", c)
	}
	for _, s := range r.IPSetsKept {
		klog.Warningf("Taking over from kube-proxy: kept ipset %s", s)
	}
	if len(r.LegacyTables) > 0 {
		klog.Warningf("Taking over from kube-proxy: iptables-legacy tables are in use on this node (%s). nftvs cannot see or "+
			"remove rules there without the iptables binary. If kube-proxy ran with iptables-legacy, its chains (%s) and "+
			"the jumps to them are still there: on the node, check with `iptables-legacy-save | grep KUBE-` and "+
			"`ip6tables-legacy-save | grep KUBE-`, remove them (iptables-legacy -t TABLE -D/-F/-X, or edit the saved "+
			"rules and iptables-legacy-restore them), then restart nftvs with --takeover-kube-proxy to destroy the "+
			"ipsets they held. Do not run `kube-proxy --cleanup` for this: it also flushes IPVS and deletes kube-ipvs0, "+
			"which drops every connection",
			strings.Join(r.LegacyTables, ", "), chainList())
	}
}

// chainList spells KubeProxyChains as "nat: A B; filter: C".
func chainList() string {
	var parts []string
	for _, t := range []string{"nat", "filter", "mangle"} {
		parts = append(parts, t+": "+strings.Join(KubeProxyChains[t], " "))
	}
	return strings.Join(parts, "; ")
}
