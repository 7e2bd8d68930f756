package takeover

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// parseSave reads iptables-save output into a Ruleset of family f: the
// chains (built-in ones, with a policy, are base chains) and, per rule,
// the chain its -j or -g names. Handles are numbered per table from 1,
// as the kernel numbers them.
func parseSave(f Family, text string) (Ruleset, error) {
	var rs Ruleset
	var t *Table
	var handle uint64
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			rs.Tables = append(rs.Tables, Table{Family: f, Name: line[1:]})
			t = &rs.Tables[len(rs.Tables)-1]
			handle = 0
		case line == "COMMIT":
			t = nil
		case strings.HasPrefix(line, ":"):
			if t == nil {
				return rs, fmt.Errorf("chain outside a table: %q", line)
			}
			fs := strings.Fields(line[1:])
			if len(fs) < 2 {
				return rs, fmt.Errorf("bad chain line %q", line)
			}
			t.Chains = append(t.Chains, Chain{Name: fs[0], Base: fs[1] != "-"})
		case strings.HasPrefix(line, "-A "):
			if t == nil {
				return rs, fmt.Errorf("rule outside a table: %q", line)
			}
			fs := strings.Fields(line)
			i := slices.IndexFunc(t.Chains, func(c Chain) bool { return c.Name == fs[1] })
			if i < 0 {
				return rs, fmt.Errorf("rule of undeclared chain: %q", line)
			}
			handle++
			r := Rule{Handle: handle}
			for j := 2; j+1 < len(fs); j++ {
				if fs[j] != "-j" && fs[j] != "-g" {
					continue
				}
				if slices.ContainsFunc(t.Chains, func(c Chain) bool { return c.Name == fs[j+1] }) {
					r.Targets = append(r.Targets, fs[j+1])
				}
			}
			t.Chains[i].Rules = append(t.Chains[i].Rules, r)
		default:
			return rs, fmt.Errorf("unknown line %q", line)
		}
	}
	return rs, sc.Err()
}

func loadFixture(t *testing.T, f Family, name string) Ruleset {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := parseSave(f, string(b))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return rs
}

// fakeRules is an in-memory ruleset that applies plans as the kernel
// does: one transaction, all or nothing, a generation bumped by each
// commit, ERESTART for a stale generation, ENOENT for a missing rule or
// chain, EBUSY for a chain deleted while it has rules or something jumps
// to it.
type fakeRules struct {
	rs      Ruleset
	gen     uint32
	applies int
	// beforeApply runs before each Apply (to change the ruleset
	// behind the caller's back); failApply, when set, fails Apply.
	beforeApply func(f *fakeRules)
	failApply   error
}

func (f *fakeRules) Read() (Ruleset, uint32, error) { return clone(f.rs), f.gen, nil }

func clone(rs Ruleset) Ruleset {
	out := Ruleset{}
	for _, t := range rs.Tables {
		nt := Table{Family: t.Family, Name: t.Name}
		for _, c := range t.Chains {
			nc := Chain{Name: c.Name, Base: c.Base}
			for _, r := range c.Rules {
				nc.Rules = append(nc.Rules, Rule{Handle: r.Handle, Targets: slices.Clone(r.Targets)})
			}
			nt.Chains = append(nt.Chains, nc)
		}
		out.Tables = append(out.Tables, nt)
	}
	return out
}

func (f *fakeRules) Apply(p Plan, gen uint32) error {
	f.applies++
	if f.beforeApply != nil {
		f.beforeApply(f)
	}
	if f.failApply != nil {
		return f.failApply
	}
	if gen != f.gen {
		return fmt.Errorf("fake: generation %d, now %d: %w", gen, f.gen, syscall.ERESTART)
	}
	next := clone(f.rs)
	for _, tp := range p.Tables {
		ti := slices.IndexFunc(next.Tables, func(t Table) bool { return t.Family == tp.Table.Family && t.Name == tp.Table.Name })
		if ti < 0 {
			return fmt.Errorf("fake: table %s: %w", tp.Table, syscall.ENOENT)
		}
		t := &next.Tables[ti]
		chain := func(name string) (*Chain, error) {
			i := slices.IndexFunc(t.Chains, func(c Chain) bool { return c.Name == name })
			if i < 0 {
				return nil, fmt.Errorf("fake: chain %s %s: %w", tp.Table, name, syscall.ENOENT)
			}
			return &t.Chains[i], nil
		}
		for _, r := range tp.DeleteRules {
			c, err := chain(r.Chain)
			if err != nil {
				return err
			}
			i := slices.IndexFunc(c.Rules, func(x Rule) bool { return x.Handle == r.Handle })
			if i < 0 {
				return fmt.Errorf("fake: %s %s: %w", tp.Table, r, syscall.ENOENT)
			}
			c.Rules = slices.Delete(c.Rules, i, i+1)
		}
		for _, d := range tp.DeleteChains {
			c, err := chain(d.Name)
			if err != nil {
				return err
			}
			c.Rules = nil
		}
		for _, d := range tp.DeleteChains {
			for _, c := range t.Chains {
				for _, r := range c.Rules {
					if slices.Contains(r.Targets, d.Name) {
						return fmt.Errorf("fake: delete chain %s %s: %s jumps to it: %w", tp.Table, d.Name, c.Name, syscall.EBUSY)
					}
				}
			}
			i := slices.IndexFunc(t.Chains, func(c Chain) bool { return c.Name == d.Name })
			if i < 0 {
				return fmt.Errorf("fake: chain %s %s: %w", tp.Table, d.Name, syscall.ENOENT)
			}
			t.Chains = slices.Delete(t.Chains, i, i+1)
		}
	}
	f.rs = next
	f.gen++
	return nil
}

// fakeSets is ipset in memory; busy sets answer ErrInUse a number of
// times (-1: always).
type fakeSets struct {
	names []string
	busy  map[string]int
}

func (f *fakeSets) Destroy(name string) (bool, error) {
	i := slices.Index(f.names, name)
	if i < 0 {
		return false, nil
	}
	if n := f.busy[name]; n != 0 {
		if n > 0 {
			f.busy[name]--
		}
		return true, fmt.Errorf("fake: destroy %s: %w", name, ErrInUse)
	}
	f.names = slices.Delete(f.names, i, i+1)
	return true, nil
}

func (f *fakeSets) Exists(name string) (bool, error) { return slices.Contains(f.names, name), nil }

// chainNames lists "table chain" of every chain of rs.
func chainNames(rs Ruleset) []string {
	var out []string
	for _, t := range rs.Tables {
		for _, c := range t.Chains {
			out = append(out, fmt.Sprintf("%s %s %s", t.Family, t.Name, c.Name))
		}
	}
	return out
}
