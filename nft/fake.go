package nft

import (
	"context"
	"fmt"
	"reflect"
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
	elements map[Element]KernelElement
	gen      uint32
	// Transactions counts applied transactions; Writes counts element
	// adds and deletes sent.
	Transactions int
	Writes       int
	// Reads counts reads of the whole table (adopt, ReadAhead).
	Reads int
	// FailNext, when set, fails the next transaction (and is cleared).
	FailNext error
	// Refuse, when set, is asked about every element a transaction adds:
	// an error fails the whole transaction, as the kernel does.
	Refuse func(Element) error

	watchers []func(genEvent)
	// foreignRules: someone changed a chain or rule (TamperRules); the
	// table is no longer one to adopt.
	foreignRules bool
}

// TamperRules stands for someone changing a rule of the table while
// nftvs was not running: the next process must not adopt the table.
func (f *Fake) TamperRules() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.foreignRules = true
	f.commitLocked()
}

func (f *Fake) read(cfg Config) (tableRead, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Reads++
	switch {
	case !f.exists:
		return tableRead{why: "no table yet"}, nil
	case f.foreignRules:
		return tableRead{why: "a rule changed"}, nil
	case !reflect.DeepEqual(f.cfg, cfg):
		return tableRead{why: "another configuration"}, nil
	}
	kt := tableRead{gen: f.gen, reusable: true}
	for _, e := range f.elements {
		kt.elements = append(kt.elements, e)
	}
	return kt, nil
}

// NewFake returns a companion table over an in-memory kernel.
func NewFake(cfg Config) (*Table, *Fake, error) {
	f := &Fake{elements: map[Element]KernelElement{}}
	t, err := newTable(cfg, f)
	return t, f, err
}

// NewTable returns another Table over the same in-memory kernel: what a
// restarted process finds.
func (f *Fake) NewTable(cfg Config) (*Table, error) { return newTable(cfg, f) }

func (f *Fake) apply(cfg Config, tx transaction) (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.FailNext; err != nil {
		f.FailNext = nil
		return 0, err
	}
	if !tx.rebuild && !f.exists {
		return 0, fmt.Errorf("table inet %s: %w", cfg.TableName, syscall.ENOENT)
	}
	next := map[Element]KernelElement{}
	if !tx.rebuild {
		for k, v := range f.elements {
			next[k] = v
		}
	}
	for _, e := range tx.del {
		if _, ok := next[e.kernelKey()]; !ok {
			return 0, fmt.Errorf("delete %s from %s: %w", e, e.kernelSet(), syscall.ENOENT)
		}
		delete(next, e.kernelKey())
	}
	for _, e := range tx.add {
		if _, ok := next[e.kernelKey()]; ok {
			return 0, fmt.Errorf("add %s to %s: %w", e, e.kernelSet(), syscall.EEXIST)
		}
		if f.Refuse != nil {
			if err := f.Refuse(e.Element); err != nil {
				return 0, fmt.Errorf("add %s to %s: %w", e, e.kernelSet(), err)
			}
		}
		next[e.kernelKey()] = e
	}
	f.elements, f.exists, f.cfg = next, true, cfg
	if tx.rebuild {
		f.foreignRules = false
	}
	f.Transactions++
	f.Writes += len(tx.add) + len(tx.del)
	return f.commitLocked(), nil
}

// commitLocked makes a generation that changed the table, and tells the
// watchers.
func (f *Fake) commitLocked() uint32 {
	f.gen++
	for _, w := range f.watchers {
		// Queued, and delivered by the watcher's goroutine in order, as
		// the kernel's notifications are: the committer holds the
		// table's lock.
		w(genEvent{gen: f.gen, touched: true})
	}
	return f.gen
}

func (f *Fake) generation() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, nil
}

func (f *Fake) deleteTable(string) (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists {
		return 0, nil
	}
	f.exists = false
	f.elements = map[Element]KernelElement{}
	return f.commitLocked(), nil
}

func (f *Fake) watch(ctx context.Context, _ string, from uint32, on func(genEvent)) error {
	var (
		mu    sync.Mutex
		queue []genEvent
		wake  = make(chan struct{}, 1)
	)
	go func() {
		defer on(genEvent{down: true})
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
			mu.Lock()
			evs := queue
			queue = nil
			mu.Unlock()
			for _, ev := range evs {
				on(ev)
			}
		}
	}()
	f.mu.Lock()
	defer f.mu.Unlock()
	queue = append(queue, genEvent{lost: true, from: from, gen: f.gen})
	wake <- struct{}{}
	f.watchers = append(f.watchers, func(ev genEvent) {
		if ctx.Err() != nil {
			return
		}
		mu.Lock()
		queue = append(queue, ev)
		mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	return nil
}

// Drift simulates someone else changing the kernel: it runs fn on the
// element map and bumps the generation.
func (f *Fake) Drift(fn func(elements map[Element]KernelElement)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.elements)
	f.commitLocked()
}

// Dump prints the table as nft text (elements one per line, sorted), or
// "" when it does not exist.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists {
		return ""
	}
	var es []KernelElement
	for _, e := range f.elements {
		es = append(es, e)
	}
	return render(f.cfg, es)
}

// Elements returns the elements the fake kernel holds, sorted.
func (f *Fake) Elements() []KernelElement {
	f.mu.Lock()
	defer f.mu.Unlock()
	var es []KernelElement
	for _, e := range f.elements {
		es = append(es, e)
	}
	sortElements(es)
	return es
}

// render prints a table with the given elements in nft syntax, as
// `nft list table` would.
func render(cfg Config, elems []KernelElement) string {
	cfg.defaults()
	sortElements(elems)
	bySet := map[string][]string{}
	for _, e := range elems {
		bySet[e.kernelSet()] = append(bySet[e.kernelSet()], e.text())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", cfg.TableName)
	for _, s := range kernelSets() {
		lines := bySet[s.kernelName()]
		if s.fromConfig != nil {
			for _, r := range s.configRanges(cfg) {
				lines = append(lines, fmt.Sprintf("%s-%s", r.first, r.last))
			}
		}
		renderSet(&b, s, lines)
	}
	chains := cfg.chains()
	for i, c := range chains {
		renderChain(&b, c)
		if i < len(chains)-1 {
			b.WriteString("\n")
		}
	}
	b.WriteString("}\n")
	return b.String()
}

func renderSet(b *strings.Builder, s kernelSet, elems []string) {
	kind := "set"
	if s.isMap {
		kind = "map"
	}
	fmt.Fprintf(b, "\t%s %s {\n\t\ttype %s\n", kind, s.kernelName(), s.typeText(s.family))
	if s.interval {
		fmt.Fprintf(b, "\t\tflags interval\n")
	}
	fmt.Fprintf(b, "\t\tcomment %q\n", s.comment)
	if len(elems) > 0 {
		fmt.Fprintf(b, "\t\telements = {\n")
		for _, e := range elems {
			fmt.Fprintf(b, "\t\t\t%s,\n", e)
		}
		fmt.Fprintf(b, "\t\t}\n")
	}
	fmt.Fprintf(b, "\t}\n\n")
}

func renderChain(b *strings.Builder, c chainSpec) {
	fmt.Fprintf(b, "\tchain %s {\n", c.name)
	if h := c.header(); h != "" {
		fmt.Fprintf(b, "\t\t%s\n", h)
	}
	for _, r := range c.rules {
		fmt.Fprintf(b, "\t\t%s\n", r.text())
	}
	fmt.Fprintf(b, "\t}\n")
}
