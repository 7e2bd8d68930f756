package nft

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

// Option configures the netlink backend.
type Option func(*netlinkBackend)

// WithNetNS programs the table in the network namespace open at fd
// instead of the current one.
func WithNetNS(fd int) Option {
	return func(b *netlinkBackend) { b.opts = append(b.opts, nftables.WithNetNSFd(fd)) }
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
	opts []nftables.ConnOption
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

func (b *netlinkBackend) deleteTable(name string) error {
	c, err := b.conn()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			c.DelTable(t)
			return c.Flush()
		}
	}
	return nil
}

// setFor describes kernel set name of the given spec. ID is left zero: for
// sets created in this batch, AddSet assigns one.
func setFor(table *nftables.Table, s SetName, spec setSpec, f Family) *nftables.Set {
	set := &nftables.Set{
		Table:         table,
		Name:          kernelSetName(s, f),
		KeyType:       spec.keyType(f),
		IsMap:         spec.isMap,
		Interval:      spec.interval,
		Concatenation: len(spec.fields) > 1,
		Comment:       spec.comment,
	}
	if spec.isMap {
		set.DataType = nftables.TypeMark
	}
	return set
}

// allSets lists every set of the table: per-Service sets and the
// configuration interval sets.
func allSets(table *nftables.Table) []*nftables.Set {
	var out []*nftables.Set
	for _, name := range sortedSetNames() {
		spec := setSpecs[name]
		if !spec.perFamily {
			out = append(out, setFor(table, name, spec, 0))
			continue
		}
		for _, f := range families {
			out = append(out, setFor(table, name, spec, f))
		}
	}
	for _, name := range []string{setExcludeCIDRs, setPodCIDRs} {
		for _, f := range families {
			addr := nftables.TypeIPAddr
			if f == IPv6 {
				addr = nftables.TypeIP6Addr
			}
			out = append(out, &nftables.Set{Table: table, Name: kernelSetName(SetName(name), f),
				KeyType: addr, Interval: true, Comment: configSetComment[name]})
		}
	}
	return out
}

var configSetComment = map[string]string{
	setExcludeCIDRs: "--ipvs-exclude-cidrs",
	setPodCIDRs:     "local traffic (--detect-local-mode)",
}

// configElements returns the interval elements of the configuration sets,
// as the rbtree set type wants them: a start key, and the key after the
// range flagged as interval end (none when the range reaches the top).
func (cfg Config) configElements() map[string][]nftables.SetElement {
	out := map[string][]nftables.SetElement{}
	for name, ps := range map[string][]netip.Prefix{setExcludeCIDRs: cfg.ExcludeCIDRs, setPodCIDRs: cfg.LocalTraffic.PodCIDRs} {
		for _, f := range families {
			var elems []nftables.SetElement
			for _, r := range mergePrefixes(ps, f) {
				elems = append(elems, nftables.SetElement{Key: r.first.AsSlice()})
				if end := r.last.Next(); end.IsValid() {
					elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
				}
			}
			out[kernelSetName(SetName(name), f)] = elems
		}
	}
	return out
}

func toSetElement(e kernelElement) nftables.SetElement {
	key, keyEnd := e.key()
	se := nftables.SetElement{Key: key, KeyEnd: keyEnd, Comment: e.Comment}
	if setSpecs[e.Set].isMap {
		se.Val = e.value()
	}
	return se
}

func (b *netlinkBackend) apply(cfg Config, tx transaction) error {
	c, err := b.conn()
	if err != nil {
		return err
	}
	table := &nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet}
	sets := map[string]*nftables.Set{}
	for _, s := range allSets(table) {
		sets[s.Name] = s
	}
	if tx.rebuild {
		// add + delete + add: the idiom for "replace the table, whether or
		// not it exists", atomically within one transaction.
		c.AddTable(table)
		c.DelTable(table)
		c.AddTable(table)
		cfgElems := cfg.configElements()
		for _, s := range allSets(table) {
			if err := c.AddSet(s, cfgElems[s.Name]); err != nil {
				return fmt.Errorf("add set %s: %w", s.Name, err)
			}
			sets[s.Name] = s
		}
	}
	group := func(es []kernelElement) ([]string, map[string][]nftables.SetElement) {
		m := map[string][]nftables.SetElement{}
		var order []string
		for _, e := range es {
			n := e.kernelSet()
			if _, ok := m[n]; !ok {
				order = append(order, n)
			}
			m[n] = append(m[n], toSetElement(e))
		}
		return order, m
	}
	order, dels := group(tx.del)
	for _, n := range order {
		if err := c.SetDeleteElements(sets[n], dels[n]); err != nil {
			return fmt.Errorf("delete elements of %s: %w", n, err)
		}
	}
	order, adds := group(tx.add)
	for _, n := range order {
		if err := c.SetAddElements(sets[n], adds[n]); err != nil {
			return fmt.Errorf("add elements to %s: %w", n, err)
		}
	}
	if tx.rebuild {
		refs := func(name string) *nftables.Set { return sets[name] }
		chains := map[string]*nftables.Chain{}
		specs := cfg.chains()
		// Regular chains first: base chains jump to them.
		for _, base := range []bool{false, true} {
			for _, cs := range specs {
				if cs.isBase() != base {
					continue
				}
				ch := &nftables.Chain{Name: cs.name, Table: table}
				if base {
					accept := nftables.ChainPolicyAccept
					ch.Hooknum, ch.Priority, ch.Type, ch.Policy = cs.hook, cs.priority, cs.typ, &accept
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
	if err := c.Flush(); err != nil {
		return err
	}
	return nil
}
