package takeover

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Netfilter reads and edits the iptables-nft tables over nftables netlink.
type Netfilter struct {
	opts []nftables.ConnOption
}

// NewNetfilter works in the network namespace open at fd, or in the
// current one when fd < 0.
func NewNetfilter(fd int) *Netfilter {
	n := &Netfilter{}
	if fd >= 0 {
		n.opts = append(n.opts, nftables.WithNetNSFd(fd))
	}
	return n
}

var families = []struct {
	f  Family
	nf nftables.TableFamily
}{{IPv4, nftables.TableFamilyIPv4}, {IPv6, nftables.TableFamilyIPv6}}

func tableFamily(f Family) nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// Read returns the chains and jumps of the filter, nat and mangle tables
// of both families, and the ruleset generation it read them at.
func (n *Netfilter) Read() (Ruleset, uint32, error) {
	c, err := nftables.New(n.opts...)
	if err != nil {
		return Ruleset{}, 0, fmt.Errorf("nftables netlink: %w", err)
	}
	// The generation first: if anything changes during the dump, a
	// transaction carrying it fails with ERESTART instead of acting on a
	// stale read.
	gen, err := c.GetGen()
	if err != nil {
		return Ruleset{}, 0, fmt.Errorf("read the nftables ruleset generation: %w", err)
	}
	var rs Ruleset
	for _, fam := range families {
		tables, err := c.ListTablesOfFamily(fam.nf)
		if err != nil {
			return Ruleset{}, 0, fmt.Errorf("list %s tables: %w", fam.f, err)
		}
		wanted := map[string]*nftables.Table{}
		for _, t := range tables {
			if _, ok := KubeProxyChains[t.Name]; ok {
				wanted[t.Name] = t
			}
		}
		if len(wanted) == 0 {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(fam.nf)
		if err != nil {
			return Ruleset{}, 0, fmt.Errorf("list %s chains: %w", fam.f, err)
		}
		byTable := map[string]*Table{}
		for _, ch := range chains {
			t, ok := wanted[ch.Table.Name]
			if !ok {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return Ruleset{}, 0, fmt.Errorf("list rules of %s %s %s: %w", fam.f, t.Name, ch.Name, err)
			}
			tt := byTable[t.Name]
			if tt == nil {
				tt = &Table{Family: fam.f, Name: t.Name}
				byTable[t.Name] = tt
			}
			chain := Chain{Name: ch.Name, Base: ch.Hooknum != nil}
			for _, r := range rules {
				chain.Rules = append(chain.Rules, Rule{Handle: r.Handle, Targets: ruleTargets(r.Exprs)})
			}
			tt.Chains = append(tt.Chains, chain)
		}
		for _, name := range slices.Sorted(maps.Keys(byTable)) {
			rs.Tables = append(rs.Tables, *byTable[name])
		}
	}
	return rs, gen.ID, nil
}

// ruleTargets are the chains a rule's verdicts jump or go to. iptables-nft
// writes -j CHAIN and -g CHAIN as immediate verdicts.
func ruleTargets(exprs []expr.Any) []string {
	var out []string
	for _, e := range exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && v.Chain != "" {
			out = append(out, v.Chain)
		}
	}
	return out
}

// Apply sends the whole plan as one transaction, which the kernel refuses
// (ERESTART) if the ruleset changed since generation gen: then nothing
// was deleted and the caller reads again. Each table's order is the
// plan's: jumps from other chains, then every rule of the chains to go,
// then the chains.
func (n *Netfilter) Apply(p Plan, gen uint32) error {
	if p.Empty() {
		return nil
	}
	c, err := nftables.New(n.opts...)
	if err != nil {
		return fmt.Errorf("nftables netlink: %w", err)
	}
	for _, tp := range p.Tables {
		t := &nftables.Table{Family: tableFamily(tp.Table.Family), Name: tp.Table.Name}
		for _, r := range tp.DeleteRules {
			if err := c.DelRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: r.Chain, Table: t}, Handle: r.Handle}); err != nil {
				return fmt.Errorf("delete %s %s: %w", tp.Table, r, err)
			}
		}
		for _, ch := range tp.DeleteChains {
			c.FlushChain(&nftables.Chain{Name: ch.Name, Table: t})
		}
		for _, ch := range tp.DeleteChains {
			c.DelChain(&nftables.Chain{Name: ch.Name, Table: t})
		}
	}
	if err := c.FlushWithGenID(gen); err != nil {
		return fmt.Errorf("nftables transaction: %w", err)
	}
	return nil
}

// IPSets destroys ipsets over netlink, in the network namespace of the
// calling thread.
type IPSets struct{}

// Destroy destroys one ipset; existed is false when there was none of
// that name (or no ipset support in the kernel).
func (IPSets) Destroy(name string) (existed bool, err error) {
	err = ipsetDestroy(name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.ENOENT):
		return false, nil
	case errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, syscall.EPROTONOSUPPORT):
		// No ip_set in this kernel: no kube-proxy ipsets either.
		return false, fmt.Errorf("destroy ipset %s: %w", name, ErrNoIPSet)
	case errors.Is(err, syscall.Errno(nl.IPSET_ERR_BUSY)):
		return true, fmt.Errorf("destroy ipset %s: %w", name, ErrInUse)
	default:
		return true, fmt.Errorf("destroy ipset %s: %w", name, err)
	}
}

// Exists asks for the set's header (IPSET_CMD_HEADER, as `ipset list -t
// NAME`): ENOENT means there is no such set.
func (IPSets) Exists(name string) (bool, error) {
	req := nl.NewNetlinkRequest(nl.IPSET_CMD_HEADER|(unix.NFNL_SUBSYS_IPSET<<8), unix.NLM_F_REQUEST)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_NETLINK, Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.ENOENT):
		return false, nil
	case errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, syscall.EPROTONOSUPPORT):
		return false, fmt.Errorf("look up ipset %s: %w", name, ErrNoIPSet)
	default:
		return false, fmt.Errorf("look up ipset %s: %w", name, err)
	}
}

// ipsetDestroy is IPSET_CMD_DESTROY with NLM_F_EXCL, as `ipset destroy`
// sends it. vishvananda/netlink's IpsetDestroy leaves the flag off, which
// the kernel reads as ipset's -exist: a missing set is then "destroyed"
// too, and the report could not tell what was there. (Its IpsetList is no
// way round: it logs a line for each attribute it does not know, several
// per set on current kernels.)
func ipsetDestroy(name string) error {
	req := nl.NewNetlinkRequest(nl.IPSET_CMD_DESTROY|(unix.NFNL_SUBSYS_IPSET<<8), unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_EXCL)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_NETLINK, Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	return err
}

// ErrInUse is an ipset that a rule (or another set) still references.
var ErrInUse = errors.New("in use")

// ErrNoIPSet is a kernel without ipset support.
var ErrNoIPSet = errors.New("no ipset support in the kernel")

// LegacyTables lists the iptables-legacy (x_tables) tables the kernel has
// in the current network namespace ("ip filter", "ip6 nat"): rules there
// are invisible over nftables netlink. procNet is /proc/net, or another
// directory in tests.
func LegacyTables(procNet string) ([]string, error) {
	var out []string
	for _, f := range []struct{ file, family string }{{"ip_tables_names", "ip"}, {"ip6_tables_names", "ip6"}} {
		b, err := os.ReadFile(filepath.Join(procNet, f.file))
		if errors.Is(err, os.ErrNotExist) {
			continue // no x_tables for this family: nothing legacy
		}
		if err != nil {
			return out, fmt.Errorf("read %s: %w", f.file, err)
		}
		for _, t := range strings.Fields(string(b)) {
			out = append(out, f.family+" "+t)
		}
	}
	slices.Sort(out)
	return out, nil
}
