package nft

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Option configures the netlink backend.
type Option func(*netlinkBackend)

// WithNetNS programs the table in the network namespace open at fd
// instead of the current one.
func WithNetNS(fd int) Option {
	return func(b *netlinkBackend) {
		b.netns = fd
		b.opts = append(b.opts, nftables.WithNetNSFd(fd))
	}
}

// New returns the companion table programmed over netlink.
func New(cfg Config, opts ...Option) (*Table, error) {
	b := &netlinkBackend{}
	for _, o := range opts {
		o(b)
	}
	return newTable(cfg, b)
}

type netlinkBackend struct {
	opts  []nftables.ConnOption
	netns int // 0: the current one
}

// conn opens a netlink socket per call: google/nftables sizes its buffers
// per flush, and a sync every second does not need a lasting socket.
func (b *netlinkBackend) conn() (*nftables.Conn, error) {
	c, err := nftables.New(b.opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return c, nil
}

func (b *netlinkBackend) generation() (uint32, error) {
	c, err := b.conn()
	if err != nil {
		return 0, err
	}
	g, err := c.GetGen()
	if err != nil {
		return 0, fmt.Errorf("get ruleset generation: %w", err)
	}
	return g.ID, nil
}

func (b *netlinkBackend) deleteTable(name string) (uint32, error) {
	c, err := b.conn()
	if err != nil {
		return 0, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return 0, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			return b.commit(func(c *nftables.Conn) error { c.DelTable(t); return nil })
		}
	}
	return 0, nil
}

// commit sends the batch fill writes, as one transaction, and returns the
// generation it made. The batch names the generation it expects to follow,
// so the kernel refuses it (ERESTART) if anyone committed in between and
// our commit is exactly the next generation; then it is sent again.
func (b *netlinkBackend) commit(fill func(c *nftables.Conn) error) (uint32, error) {
	for try := 0; ; try++ {
		gen, err := b.generation()
		if err != nil {
			return 0, err
		}
		c, err := b.conn()
		if err != nil {
			return 0, err
		}
		if err := fill(c); err != nil {
			return 0, err
		}
		err = c.FlushWithGenID(gen)
		if err == nil {
			if gen++; gen == 0 { // the kernel skips 0
				gen = 1
			}
			return gen, nil
		}
		if !errors.Is(err, unix.ERESTART) || try == 2 {
			return 0, err
		}
	}
}

// kernelSetFor is the nftables object of one set of the table. ID is
// left zero: for sets created in this batch, AddSet assigns one.
func kernelSetFor(table *nftables.Table, s kernelSet) *nftables.Set {
	set := &nftables.Set{
		Table:         table,
		Name:          s.kernelName(),
		KeyType:       s.keyType(s.family),
		IsMap:         s.isMap,
		Interval:      s.interval,
		Concatenation: len(s.fields) > 1,
		Comment:       s.comment,
	}
	if s.isMap {
		set.DataType = nftables.TypeMark
	}
	return set
}

// configElements returns the elements of a configuration set, as the
// rbtree set type wants intervals: a start key, and the key after the
// range flagged as interval end (none when the range reaches the top).
func (s kernelSet) configElements(cfg Config) []nftables.SetElement {
	if s.fromConfig == nil {
		return nil
	}
	var elems []nftables.SetElement
	for _, r := range s.configRanges(cfg) {
		elems = append(elems, nftables.SetElement{Key: r.first.AsSlice()})
		if end := r.last.Next(); end.IsValid() {
			elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return elems
}

func toSetElement(e KernelElement) nftables.SetElement {
	key, keyEnd := e.key()
	se := nftables.SetElement{Key: key, KeyEnd: keyEnd, Comment: e.Comment}
	if setSpecs[e.Set].isMap {
		se.Val = e.value()
	}
	return se
}

func (b *netlinkBackend) apply(cfg Config, tx transaction) (uint32, error) {
	return b.commit(func(c *nftables.Conn) error {
		table := &nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet}
		sets := map[string]*nftables.Set{}
		for _, s := range kernelSets() {
			sets[s.kernelName()] = kernelSetFor(table, s)
		}
		if tx.rebuild {
			if err := addTableAndSets(c, cfg, table, sets); err != nil {
				return err
			}
		}
		if err := writeElements(c, sets, tx); err != nil {
			return err
		}
		if tx.rebuild {
			addChains(c, cfg, table, sets)
		}
		return nil
	})
}

// addTableAndSets replaces the table with an empty one holding every set,
// the configuration sets filled.
func addTableAndSets(c *nftables.Conn, cfg Config, table *nftables.Table, sets map[string]*nftables.Set) error {
	// add + delete + add: the idiom for "replace the table, whether or
	// not it exists", atomically within one transaction.
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	for _, s := range kernelSets() {
		if err := c.AddSet(sets[s.kernelName()], s.configElements(cfg)); err != nil {
			return fmt.Errorf("add set %s: %w", s.kernelName(), err)
		}
	}
	return nil
}

// writeElements adds the transaction's deletes, then its adds, one call
// per set (google/nftables splits long lists across messages). Both are
// sorted the same way, so deletes come in the order the elements were
// added: the kernel's concatenated interval set removes 5,000 elements in
// about 1 s in that order, and in 98 s in reverse.
func writeElements(c *nftables.Conn, sets map[string]*nftables.Set, tx transaction) error {
	order, dels := bySet(tx.del)
	for _, n := range order {
		if err := c.SetDeleteElements(sets[n], dels[n]); err != nil {
			return fmt.Errorf("delete elements of %s: %w", n, err)
		}
	}
	order, adds := bySet(tx.add)
	for _, n := range order {
		if err := c.SetAddElements(sets[n], adds[n]); err != nil {
			return fmt.Errorf("add elements to %s: %w", n, err)
		}
	}
	return nil
}

// bySet groups es by kernel set, in the order the sets first appear. Each
// set's list is sized before it is filled: grown by append, a first
// sync's 10k-element lists were reallocated at 1.25× a time, five times
// their size in garbage (about 15 MB at 10k Services).
func bySet(es []KernelElement) ([]string, map[string][]nftables.SetElement) {
	count := map[string]int{}
	var order []string
	for _, e := range es {
		n := e.kernelSet()
		if count[n] == 0 {
			order = append(order, n)
		}
		count[n]++
	}
	m := make(map[string][]nftables.SetElement, len(order))
	for _, n := range order {
		m[n] = make([]nftables.SetElement, 0, count[n])
	}
	for _, e := range es {
		n := e.kernelSet()
		m[n] = append(m[n], toSetElement(e))
	}
	return order, m
}

// addChains adds every chain and rule; regular chains first, since base
// chains jump to them.
func addChains(c *nftables.Conn, cfg Config, table *nftables.Table, sets map[string]*nftables.Set) {
	refs := func(name string) *nftables.Set { return sets[name] }
	chains := map[string]*nftables.Chain{}
	specs := cfg.chains()
	for _, base := range []bool{false, true} {
		for _, cs := range specs {
			if cs.isBase() != base {
				continue
			}
			ch := &nftables.Chain{Name: cs.name, Table: table}
			if base {
				accept := nftables.ChainPolicyAccept
				ch.Hooknum, ch.Priority, ch.Type, ch.Policy = cs.base.hook, cs.base.priority, cs.base.typ, &accept
			}
			chains[cs.name] = c.AddChain(ch)
		}
	}
	for _, cs := range specs {
		for _, r := range cs.rules {
			nr := &nftables.Rule{Table: table, Chain: chains[cs.name], Exprs: r.exprs(refs)}
			if r.comment != "" {
				nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.comment)
			}
			c.AddRule(nr)
		}
	}
}
