package nft

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
)

// Fake is an in-memory kernel for the companion table: it applies
// transactions with the kernel's strictness (adding an element that exists
// or deleting one that does not fails the whole transaction) and prints
// the table as nft text.
type Fake struct {
	mu       sync.Mutex
	exists   bool
	cfg      Config
	elements map[Element]kernelElement
	gen      uint32
	// Transactions counts applied transactions; Writes counts element
	// adds and deletes sent.
	Transactions int
	Writes       int
	// FailNext, when set, fails the next transaction (and is cleared).
	FailNext error
}

// NewFake returns a companion table over an in-memory kernel.
func NewFake(cfg Config) (*Table, *Fake, error) {
	f := &Fake{elements: map[Element]kernelElement{}}
	t, err := newTable(cfg, f)
	return t, f, err
}

func (f *Fake) apply(cfg Config, tx transaction) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.FailNext; err != nil {
		f.FailNext = nil
		return err
	}
	if !tx.rebuild && !f.exists {
		return fmt.Errorf("table inet %s: %w", cfg.TableName, syscall.ENOENT)
	}
	next := map[Element]kernelElement{}
	if !tx.rebuild {
		for k, v := range f.elements {
			next[k] = v
		}
	}
	for _, e := range tx.del {
		if _, ok := next[e.kernelKey()]; !ok {
			return fmt.Errorf("delete %s from %s: %w", e, e.kernelSet(), syscall.ENOENT)
		}
		delete(next, e.kernelKey())
	}
	for _, e := range tx.add {
		if _, ok := next[e.kernelKey()]; ok {
			return fmt.Errorf("add %s to %s: %w", e, e.kernelSet(), syscall.EEXIST)
		}
		next[e.kernelKey()] = e
	}
	f.elements, f.exists, f.cfg = next, true, cfg
	f.gen++
	f.Transactions++
	f.Writes += len(tx.add) + len(tx.del)
	return nil
}

func (f *Fake) generation() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, nil
}

func (f *Fake) deleteTable(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists {
		f.gen++
	}
	f.exists = false
	f.elements = map[Element]kernelElement{}
	return nil
}

// Drift simulates someone else changing the kernel: it runs fn on the
// element map and bumps the generation.
func (f *Fake) Drift(fn func(elements map[Element]kernelElement)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.elements)
	f.gen++
}

// Dump prints the table as nft text (elements one per line, sorted), or
// "" when it does not exist.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists {
		return ""
	}
	var es []kernelElement
	for _, e := range f.elements {
		es = append(es, e)
	}
	return Render(f.cfg, es)
}

// Elements returns the elements the fake kernel holds, sorted.
func (f *Fake) Elements() []kernelElement {
	f.mu.Lock()
	defer f.mu.Unlock()
	var es []kernelElement
	for _, e := range f.elements {
		es = append(es, e)
	}
	sortElements(es)
	return es
}

// Render prints a table with the given elements in nft syntax.
func Render(cfg Config, elems []kernelElement) string {
	cfg.defaults()
	sortElements(elems)
	bySet := map[string][]kernelElement{}
	for _, e := range elems {
		bySet[e.kernelSet()] = append(bySet[e.kernelSet()], e)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", cfg.TableName)
	type setLine struct {
		name, typ, flags, comment string
		elems                     []string
	}
	var sets []setLine
	for _, name := range sortedSetNames() {
		spec := setSpecs[name]
		fs := []Family{0}
		if spec.perFamily {
			fs = families
		}
		for _, f := range fs {
			sl := setLine{name: kernelSetName(name, f), typ: spec.typeText(f), comment: spec.comment}
			if spec.interval {
				sl.flags = "interval"
			}
			for _, e := range bySet[sl.name] {
				sl.elems = append(sl.elems, e.text())
			}
			sets = append(sets, sl)
		}
	}
	for _, name := range []string{setExcludeCIDRs, setPodCIDRs} {
		ps := cfg.ExcludeCIDRs
		if name == setPodCIDRs {
			ps = cfg.LocalTraffic.PodCIDRs
		}
		for _, f := range families {
			sl := setLine{name: kernelSetName(SetName(name), f), typ: "ipv4_addr", flags: "interval", comment: configSetComment[name]}
			if f == IPv6 {
				sl.typ = "ipv6_addr"
			}
			for _, r := range mergePrefixes(ps, f) {
				sl.elems = append(sl.elems, fmt.Sprintf("%s-%s", r.first, r.last))
			}
			sets = append(sets, sl)
		}
	}
	for _, s := range sets {
		fmt.Fprintf(&b, "\t%s %s {\n\t\ttype %s\n", map[bool]string{true: "map", false: "set"}[strings.Contains(s.typ, " : ")], s.name, s.typ)
		if s.flags != "" {
			fmt.Fprintf(&b, "\t\tflags %s\n", s.flags)
		}
		fmt.Fprintf(&b, "\t\tcomment %q\n", s.comment)
		if len(s.elems) > 0 {
			fmt.Fprintf(&b, "\t\telements = {\n")
			for _, e := range s.elems {
				fmt.Fprintf(&b, "\t\t\t%s,\n", e)
			}
			fmt.Fprintf(&b, "\t\t}\n")
		}
		fmt.Fprintf(&b, "\t}\n\n")
	}
	chains := cfg.chains()
	for i, c := range chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		if c.header != "" {
			fmt.Fprintf(&b, "\t\t%s\n", c.header)
		}
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.text())
		}
		fmt.Fprintf(&b, "\t}\n")
		if i < len(chains)-1 {
			b.WriteString("\n")
		}
	}
	b.WriteString("}\n")
	return b.String()
}

// errInjected is a ready-made error for FailNext.
var errInjected = errors.New("injected failure")
