package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/nftvs/nftvs/internal/l4"
)

// tableRead is the table as the kernel holds it, read before the first
// sync of a process: a restarted nftvs finds its table from before and
// diffs against it, instead of deleting and re-adding every element.
type tableRead struct {
	// gen is the ruleset generation the read saw (it did not change
	// while the table was read).
	gen uint32
	// reusable: the table exists with exactly the sets, configuration
	// set elements, chains and rules the configuration makes, and every
	// element could be read back as one of ours. Otherwise why says what
	// differs, and the first sync rebuilds the table.
	reusable bool
	why      string
	elements []KernelElement
}

// adopt reads the kernel's table and, when it is ours as configured,
// takes its elements as programmed: the pending transaction is then the
// difference between the kernel and the mirror (nothing, after a
// restart on a node nothing changed on). Every key read is marked dirty,
// so that elements nobody owns any more are deleted.
func (t *Table) adopt(res *SyncResult) {
	kt, err := t.readForAdopt()
	switch {
	case err != nil:
		res.NotAdopted = err.Error()
		return
	case !kt.reusable:
		res.NotAdopted = kt.why
		return
	}
	clear(t.programmed)
	for _, e := range kt.elements {
		k := packKey(e.Element)
		t.programmed[k] = programmedAs{e.Mark, e.Comment}
		t.dirty[k] = struct{}{}
	}
	t.needsBuild = false
	t.lastGen = kt.gen
	res.Adopted = true
}

// ReadAhead reads the kernel's table for the first Sync's adoption: at
// 10k Services reading 20k elements back takes a second or two under
// emulation, which a restart spends while its informers list instead of
// after. The first Sync uses the read if nobody committed to the ruleset
// since (the generation is the same), else it reads again. It holds the
// table's lock while it reads.
func (t *Table) ReadAhead() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.readKernel {
		return // the first sync read already
	}
	kt, err := t.backend.read(t.cfg)
	if err != nil || kt.gen == 0 {
		return // the first sync reads again, and says why
	}
	t.ahead = &kt
}

// readForAdopt is the read ReadAhead made, while the ruleset is still at
// its generation, else a read now; t.mu is held.
func (t *Table) readForAdopt() (tableRead, error) {
	ahead := t.ahead
	t.ahead = nil
	if ahead != nil {
		if gen, err := t.backend.generation(); err == nil && gen == ahead.gen {
			return *ahead, nil
		}
	}
	return t.backend.read(t.cfg)
}

// read reads the table, up to three times while someone commits to the
// ruleset during the read.
func (b *netlinkBackend) read(cfg Config) (tableRead, error) {
	for range 3 {
		before, err := b.generation()
		if err != nil {
			return tableRead{}, err
		}
		kt, err := b.readOnce(cfg)
		if err != nil {
			return tableRead{}, err
		}
		after, err := b.generation()
		if err != nil {
			return tableRead{}, err
		}
		if before == after {
			kt.gen = before
			return kt, nil
		}
	}
	return tableRead{why: "the ruleset kept changing while it was read"}, nil
}

func (b *netlinkBackend) readOnce(cfg Config) (tableRead, error) {
	no := func(format string, args ...any) (tableRead, error) {
		return tableRead{why: fmt.Sprintf(format, args...)}, nil
	}
	c, err := b.conn()
	if err != nil {
		return tableRead{}, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return tableRead{}, fmt.Errorf("list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == cfg.TableName }) {
		return no("no table yet")
	}
	table := &nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet}

	sets, err := c.GetSets(table)
	if err != nil {
		return tableRead{}, fmt.Errorf("list sets of inet %s: %w", cfg.TableName, err)
	}
	byName := map[string]*nftables.Set{}
	for _, s := range sets {
		byName[s.Name] = s
	}
	want := kernelSets()
	if len(sets) != len(want) {
		return no("%d sets, want %d", len(sets), len(want))
	}
	var kt tableRead
	refs := map[string]*nftables.Set{}
	for _, ks := range want {
		s := byName[ks.kernelName()]
		if s == nil {
			return no("set %s missing", ks.kernelName())
		}
		if why := sameSet(ks, s); why != "" {
			return no("set %s: %s", ks.kernelName(), why)
		}
		refs[ks.kernelName()] = kernelSetFor(table, ks)
		els, err := c.GetSetElements(s)
		if err != nil {
			return tableRead{}, fmt.Errorf("elements of %s: %w", s.Name, err)
		}
		if ks.fromConfig != nil {
			if !sameConfigElements(ks.configElements(cfg), els) {
				return no("set %s does not hold the configured ranges", ks.kernelName())
			}
			continue
		}
		for _, se := range els {
			e, err := decodeElement(ks, se)
			if err != nil {
				return no("set %s: %v", ks.kernelName(), err)
			}
			kt.elements = append(kt.elements, e)
		}
	}

	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return tableRead{}, fmt.Errorf("list chains: %w", err)
	}
	have := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == cfg.TableName {
			have[ch.Name] = ch
		}
	}
	specs := cfg.chains()
	if len(have) != len(specs) {
		return no("%d chains, want %d", len(have), len(specs))
	}
	for _, cs := range specs {
		ch := have[cs.name]
		if ch == nil {
			return no("chain %s missing", cs.name)
		}
		if why := sameChain(cs, ch); why != "" {
			return no("chain %s: %s", cs.name, why)
		}
		rules, err := c.GetRules(table, ch)
		if err != nil {
			return tableRead{}, fmt.Errorf("rules of chain %s: %w", cs.name, err)
		}
		if len(rules) != len(cs.rules) {
			return no("chain %s has %d rules, want %d", cs.name, len(rules), len(cs.rules))
		}
		for i, r := range cs.rules {
			if !sameRule(r, rules[i], func(name string) *nftables.Set { return refs[name] }) {
				return no("chain %s: rule %d is not %q", cs.name, i+1, r.text())
			}
		}
	}
	kt.reusable = true
	return kt, nil
}

// sameSet compares what a set was created with; elements aside.
func sameSet(ks kernelSet, s *nftables.Set) string {
	wantKey := ks.keyType(ks.family)
	switch {
	case s.IsMap != ks.isMap || s.Interval != ks.interval:
		return fmt.Sprintf("map %v interval %v, want %v %v", s.IsMap, s.Interval, ks.isMap, ks.interval)
	case s.KeyType.GetNFTMagic() != wantKey.GetNFTMagic() || s.KeyType.Bytes != wantKey.Bytes:
		return fmt.Sprintf("key type %#x/%d bytes, want %#x/%d", s.KeyType.GetNFTMagic(), s.KeyType.Bytes, wantKey.GetNFTMagic(), wantKey.Bytes)
	case ks.isMap && s.DataType.GetNFTMagic() != nftables.TypeMark.GetNFTMagic():
		return "its values are not marks"
	case s.Comment != ks.comment:
		return fmt.Sprintf("comment %q, want %q", s.Comment, ks.comment)
	}
	return ""
}

// sameConfigElements compares a configuration set's elements, in any
// order.
func sameConfigElements(want, got []nftables.SetElement) bool {
	key := func(e nftables.SetElement) string { return fmt.Sprintf("%x/%v", e.Key, e.IntervalEnd) }
	w, g := make([]string, 0, len(want)), make([]string, 0, len(got))
	for _, e := range want {
		w = append(w, key(e))
	}
	for _, e := range got {
		g = append(g, key(e))
	}
	slices.Sort(w)
	slices.Sort(g)
	return slices.Equal(w, g)
}

func sameChain(cs chainSpec, ch *nftables.Chain) string {
	if !cs.isBase() {
		if ch.Hooknum != nil {
			return "a base chain, want a regular one"
		}
		return ""
	}
	b := cs.base
	switch {
	case ch.Hooknum == nil || ch.Priority == nil || ch.Policy == nil:
		return "a regular chain, want a base chain"
	case *ch.Hooknum != *b.hook || *ch.Priority != *b.priority || ch.Type != b.typ || *ch.Policy != nftables.ChainPolicyAccept:
		return fmt.Sprintf("hook %d priority %d type %s policy %d, want %s", *ch.Hooknum, *ch.Priority, ch.Type, *ch.Policy, b.header())
	}
	return ""
}

// sameRule compares a kernel rule with what r sends: its comment, and its
// expressions as the kernel gives them back (set references by name,
// counters' values ignored, registers as the kernel names them).
func sameRule(r rule, got *nftables.Rule, refs setRefs) bool {
	var wantUD []byte
	if r.comment != "" {
		wantUD = userdata.AppendString(nil, userdata.TypeComment, r.comment)
	}
	if !bytes.Equal(got.UserData, wantUD) {
		return false
	}
	want := r.exprs(refs)
	// google/nftables leaves out of a dump the expressions it cannot
	// decode, byteorder among them: those are not compared.
	want = slices.DeleteFunc(want, func(e expr.Any) bool { _, ok := e.(*expr.Byteorder); return ok })
	if len(want) != len(got.Exprs) {
		return false
	}
	for i, e := range got.Exprs {
		switch x := e.(type) {
		case *expr.Lookup:
			y := *x
			y.SetID = 0
			e = &y
		case *expr.Counter:
			e = &expr.Counter{}
		}
		if !reflect.DeepEqual(canonicalRegisters(e), canonicalRegisters(want[i])) {
			return false
		}
	}
	return true
}

// canonicalRegisters returns a copy of e with every register named as the
// kernel names it in a dump: the 4-byte register 8 (NFT_REG32_00) is the
// first quarter of the 16-byte register 1, and the kernel reports a
// register that starts a 16-byte one by that one's number.
func canonicalRegisters(e expr.Any) any {
	v := reflect.ValueOf(e)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return e
	}
	c := reflect.New(v.Elem().Type()).Elem()
	c.Set(v.Elem())
	for i := range c.NumField() {
		f := c.Field(i)
		if f.Kind() != reflect.Uint32 || !strings.HasSuffix(c.Type().Field(i).Name, "Register") || !f.CanSet() {
			continue
		}
		f.SetUint(uint64(canonicalRegister(uint32(f.Uint()))))
	}
	return c.Interface()
}

// canonicalRegister is the kernel's nft_parse_register followed by
// nft_dump_register.
func canonicalRegister(r uint32) uint32 {
	const reg32PerReg = 16 / 4
	var internal uint32
	switch {
	case r <= 4: // NFT_REG_VERDICT, NFT_REG_1..4
		internal = r * reg32PerReg
	case r >= reg32base && r <= reg32base+15:
		internal = r + reg32PerReg - reg32base
	default:
		return r
	}
	if internal%reg32PerReg == 0 {
		return internal / reg32PerReg
	}
	return internal - reg32PerReg + reg32base
}

// decodeElement reads a per-Service set's element back into the Element
// whose encoding it is; anything that does not encode back to the same
// bytes is not one of ours.
func decodeElement(ks kernelSet, se nftables.SetElement) (KernelElement, error) {
	e := Element{Set: ks.name}
	concat := len(ks.fields) > 1
	key := se.Key
	take := func(n int) ([]byte, bool) {
		if concat && n%4 != 0 {
			n += 4 - n%4
		}
		if len(key) < n {
			return nil, false
		}
		b := key[:n]
		key = key[n:]
		return b, true
	}
	alen := 4
	if ks.family == IPv6 {
		alen = 16
	}
	ok := true
	for _, f := range ks.fields {
		var b []byte
		switch f {
		case fieldAddr, fieldAddr2, fieldSource:
			if b, ok = take(alen); ok && f == fieldAddr {
				e.Addr, _ = netip.AddrFromSlice(b)
			}
			if ok && f == fieldSource {
				ok = len(se.KeyEnd) == len(se.Key)
				if ok {
					e.Source, ok = rangePrefix(b, se.KeyEnd[len(se.KeyEnd)-alen:])
				}
			}
		case fieldProto:
			if b, ok = take(1); ok {
				e.Protocol = l4.FromNumber(b[0])
			}
		case fieldPort:
			if b, ok = take(2); ok {
				e.Port = binary.BigEndian.Uint16(b)
			}
		}
		if !ok {
			return KernelElement{}, fmt.Errorf("element %x: too short", se.Key)
		}
	}
	if ks.isMap {
		if len(se.Val) != 4 {
			return KernelElement{}, fmt.Errorf("element %x: value %x is not a mark", se.Key, se.Val)
		}
		e.Mark = binary.BigEndian.Uint32(se.Val)
	}
	if err := e.Validate(); err != nil {
		return KernelElement{}, fmt.Errorf("element %x: %w", se.Key, err)
	}
	k, kend := e.key()
	if !bytes.Equal(k, se.Key) || !bytes.Equal(kend, se.KeyEnd) || se.IntervalEnd {
		return KernelElement{}, fmt.Errorf("element %x-%x: not one nftvs writes", se.Key, se.KeyEnd)
	}
	return KernelElement{Element: e, Comment: se.Comment}, nil
}

// rangePrefix is the prefix covering exactly first..last, if there is one.
func rangePrefix(first, last []byte) (netip.Prefix, bool) {
	a, ok1 := netip.AddrFromSlice(first)
	z, ok2 := netip.AddrFromSlice(last)
	if !ok1 || !ok2 {
		return netip.Prefix{}, false
	}
	for bits := 0; bits <= a.BitLen(); bits++ {
		p := netip.PrefixFrom(a, bits)
		if p.Masked() != p {
			continue
		}
		if _, l := prefixRange(p); l == z {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
