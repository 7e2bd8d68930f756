package nft

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
)

// ElementState is whether the kernel holds an element, for `nftvs
// explain`.
type ElementState struct {
	Element
	// KernelSet is the kernel set's name (per family: "cluster-ips-v4").
	KernelSet string
	// Checked is false for elements that cannot be matched one for one:
	// source ranges, merged with other owners' ranges in the kernel.
	Checked bool
	// InKernel says the kernel holds the element's key; Comment is the
	// kernel element's comment (its owners).
	InKernel bool
	Comment  string
}

// ReadElements looks each of want up in the kernel's table (DefaultTableName
// when table is ""), reading each set involved once. It reads only.
func ReadElements(table string, want []Element, opts ...Option) ([]ElementState, error) {
	if table == "" {
		table = DefaultTableName
	}
	b := &netlinkBackend{}
	for _, o := range opts {
		o(b)
	}
	c, err := b.conn()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	type setContents map[string]string // key bytes → comment
	sets := map[string]setContents{}
	var errs []error
	read := func(name string) setContents {
		if s, ok := sets[name]; ok {
			return s
		}
		s := setContents{}
		sets[name] = s
		set, err := c.GetSetByName(t, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s of table inet %s: %w", name, table, err))
			return s
		}
		els, err := c.GetSetElements(set)
		if err != nil {
			errs = append(errs, fmt.Errorf("elements of set %s: %w", name, err))
			return s
		}
		for _, e := range els {
			s[string(e.Key)] = e.Comment
		}
		return s
	}
	out := make([]ElementState, 0, len(want))
	for _, e := range want {
		st := ElementState{Element: e, KernelSet: e.kernelSet()}
		if spec, ok := setSpecs[e.Set]; ok && !spec.interval {
			st.Checked = true
			key, _ := e.key()
			st.Comment, st.InKernel = read(st.KernelSet)[string(key)]
		}
		out = append(out, st)
	}
	return out, errors.Join(errs...)
}
