package takeover

// Kernel tests: kube-proxy-like state made with the iptables (iptables-nft)
// and ipset binaries in a throwaway network namespace, next to the
// kubelet's chains, Docker-like chains, iptables-legacy and foreign
// nftables tables; Run must remove exactly kube-proxy's, twice in a row.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftvs/nftvs/internal/netnstest"
)

// requireTools fails (not skips) when the binaries the fixture needs are
// missing: make test's dependency script installs them.
func requireTools(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"iptables-nft-restore", "ip6tables-nft-restore", "iptables-nft-save", "ip6tables-nft-save", "ipset", "nft", "iptables-legacy"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: install the Debian packages iptables and ipset (apt-get install -y iptables ipset)", bin)
		}
	}
}

// ipv6Fixture is kube-proxy's IPv6 side (KUBE-6- ipsets) in short, with
// the kubelet's canary and a foreign chain using a foreign set.
const ipv6Fixture = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:USER-FILTER - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -j USER-FILTER
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-6-IPVS-IPS dst -j REJECT
-A USER-FILTER -m set --match-set user-blocked6 src -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES ! -s fd00:244::/48 -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
`

// foreignNFT is someone else's nftables: an inet table, and an ip table
// whose chain happens to be called KUBE-SERVICES.
const foreignNFT = `table inet firewall {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 22 accept
	}
}
table ip custom {
	chain KUBE-SERVICES {
		counter
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump KUBE-SERVICES
	}
}
`

// ipsets: kube-proxy's (as upstream creates them), then foreign ones.
var kubeProxySets = [][]string{
	{"KUBE-LOOP-BACK", "hash:ip,port,ip"},
	{"KUBE-CLUSTER-IP", "hash:ip,port"},
	{"KUBE-EXTERNAL-IP", "hash:ip,port"},
	{"KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port"},
	{"KUBE-LOAD-BALANCER", "hash:ip,port"},
	{"KUBE-LOAD-BALANCER-FW", "hash:ip,port"},
	{"KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net"},
	{"KUBE-NODE-PORT-TCP", "bitmap:port", "range", "0-65535"},
	{"KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port"},
	{"KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "range", "0-65535"},
	{"KUBE-IPVS-IPS", "hash:ip"},
	{"KUBE-6-CLUSTER-IP", "hash:ip,port", "family", "inet6"},
	{"KUBE-6-IPVS-IPS", "hash:ip", "family", "inet6"},
	{"KUBE-6-LOAD-BALANCER-SOURCE-CID", "hash:ip,port,net", "family", "inet6"},
}

var foreignSets = [][]string{
	{"user-blocked6", "hash:ip", "family", "inet6"},
	{"KUBE-DST-AAAA", "hash:ip"}, // kube-router's naming: not kube-proxy's
	{"legacy-held", "hash:ip"},
}

func TestKernelTakeover(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTools(t)
	ns := netnstest.New(t)
	// One set stays held by a legacy rule: do not wait 2 s for it.
	defer func(d time.Duration) { ipsetWait = d }(ipsetWait)
	ipsetWait = 300 * time.Millisecond

	for _, s := range append(slices.Clone(kubeProxySets), foreignSets...) {
		ns.Run(t, "ipset", append([]string{"create"}, s...)...)
	}
	v4, err := os.ReadFile("testdata/kube-proxy-ipvs.rules")
	if err != nil {
		t.Fatal(err)
	}
	restore(t, ns, "iptables-nft-restore", string(v4))
	restore(t, ns, "ip6tables-nft-restore", ipv6Fixture)
	restore(t, ns, "nft", foreignNFT)
	// A legacy table, with a rule holding one of kube-proxy's ipsets:
	// out of reach, and reported. Kernels without x_tables cannot have
	// one (nor legacy leftovers).
	_, err = os.Stat("/proc/net/ip_tables_names")
	legacy := err == nil
	if legacy {
		ns.Run(t, "iptables-legacy", "-t", "filter", "-A", "INPUT", "-m", "set", "--match-set", "KUBE-NODE-PORT-SCTP-HASH", "dst,dst", "-j", "ACCEPT")
		ns.Run(t, "iptables-legacy", "-t", "filter", "-A", "INPUT", "-m", "set", "--match-set", "legacy-held", "src", "-j", "ACCEPT")
	} else {
		t.Log("THIS KERNEL HAS NO iptables-legacy (no /proc/net/ip_tables_names): the legacy detection is not exercised")
	}

	before := snapshot(t, ns, legacy)
	t.Logf("before:\n%s", before)

	// Find sees kube-proxy's state and changes nothing.
	k := Kernel{Rules: NewNetfilter(ns.FD()), IPSets: IPSets{}, ProcNet: "/proc/thread-self/net"}
	var found Leftovers
	ns.Do(t, func() { found, err = Find(k) })
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if !found.Found() || len(found.Chains) != 14+5 || len(found.Jumps) != 9+5 || len(found.IPSets) != len(kubeProxySets) {
		t.Errorf("find: %d chains, %d jumps, %d ipsets; want 19, 14, %d: %+v",
			len(found.Chains), len(found.Jumps), len(found.IPSets), len(kubeProxySets), found)
	}
	if slices.Contains(found.IPSets, "KUBE-DST-AAAA") || !slices.Contains(found.IPSets, "KUBE-6-CLUSTER-IP") {
		t.Errorf("find: ipsets %v, want kube-proxy's (KUBE-6-CLUSTER-IP among them) and no other", found.IPSets)
	}
	if got := snapshot(t, ns, legacy); got != before {
		t.Errorf("find changed the kernel:\n%s\nwas:\n%s", got, before)
	}

	var rep Report
	run := func() error {
		var err error
		// IPSets and the legacy check work in the thread's namespace;
		// the nftables side is told the namespace.
		ns.Do(t, func() {
			rep, err = Run(Kernel{Rules: NewNetfilter(ns.FD()), IPSets: IPSets{}, ProcNet: "/proc/thread-self/net"})
		})
		return err
	}
	if err := run(); err != nil {
		t.Fatalf("takeover: %v", err)
	}
	t.Logf("report: %+v", rep)
	after := snapshot(t, ns, legacy)
	t.Logf("after:\n%s", after)

	held := ""
	if legacy {
		held = "KUBE-NODE-PORT-SCTP-HASH"
	}
	want := withoutKubeProxy(before, held)
	if after != want {
		t.Errorf("after the takeover:\n%s\nwant (before, less kube-proxy's chains, jumps and ipsets):\n%s", after, want)
	}
	if got := len(rep.ChainsDeleted); got != 14+5 {
		t.Errorf("%d chains deleted, want 19 (14 ip, 5 ip6): %v", got, rep.ChainsDeleted)
	}
	if got := len(rep.RulesDeleted); got != 9+5 {
		t.Errorf("%d jump rules deleted, want 14 (9 ip, 5 ip6): %v", got, rep.RulesDeleted)
	}
	switch {
	case !legacy && (len(rep.IPSetsDestroyed) != len(kubeProxySets) || len(rep.IPSetsKept) != 0 || len(rep.LegacyTables) != 0):
		t.Errorf("ipsets destroyed %v, kept %v, legacy tables %v; want all of kube-proxy's destroyed, no legacy",
			rep.IPSetsDestroyed, rep.IPSetsKept, rep.LegacyTables)
	case legacy && len(rep.IPSetsDestroyed) != len(kubeProxySets)-1:
		t.Errorf("ipsets destroyed %v, want all of kube-proxy's but KUBE-NODE-PORT-SCTP-HASH", rep.IPSetsDestroyed)
	case legacy && (len(rep.IPSetsKept) != 1 || !strings.HasPrefix(rep.IPSetsKept[0], "KUBE-NODE-PORT-SCTP-HASH:")):
		t.Errorf("ipsets kept %v, want KUBE-NODE-PORT-SCTP-HASH (held by an iptables-legacy rule)", rep.IPSetsKept)
	case legacy && !slices.Equal(rep.LegacyTables, []string{"ip filter"}):
		t.Errorf("legacy tables %v, want [ip filter]", rep.LegacyTables)
	}

	// Idempotent: a second run finds nothing and changes nothing.
	if err := run(); err != nil {
		t.Fatalf("second takeover: %v", err)
	}
	if len(rep.ChainsDeleted)+len(rep.RulesDeleted)+len(rep.IPSetsDestroyed) != 0 {
		t.Errorf("second run deleted something: %+v", rep)
	}
	if again := snapshot(t, ns, legacy); again != after {
		t.Errorf("second run changed the kernel:\n%s\nwas:\n%s", again, after)
	}
	ns.Do(t, func() { found, err = Find(k) })
	wantSets := []string(nil)
	if held != "" {
		wantSets = []string{held}
	}
	if err != nil || len(found.Chains)+len(found.Jumps) > 0 || !slices.Equal(found.IPSets, wantSets) {
		t.Errorf("find after the takeover: %+v, %v; want nothing but ipsets %v", found, err, wantSets)
	}
}

func restore(t *testing.T, ns *netnstest.NS, tool, text string) {
	t.Helper()
	args := []string{}
	if tool == "nft" {
		args = []string{"-f", "-"}
	}
	if out, err := ns.TryStdin(strings.NewReader(text), tool, args...); err != nil {
		t.Fatalf("%s: %v\n%s", tool, err, out)
	}
}

// snapshot is what the test compares: iptables-nft and ip6tables-nft
// (without comments and counters), the foreign nft tables, the legacy
// filter table and the ipset names.
func snapshot(t *testing.T, ns *netnstest.NS, legacy bool) string {
	t.Helper()
	var b strings.Builder
	tools := []string{"iptables-nft-save", "ip6tables-nft-save"}
	if legacy {
		tools = append(tools, "iptables-legacy-save")
	}
	for _, tool := range tools {
		fmt.Fprintf(&b, "## %s\n", tool)
		// stdout only: with legacy tables present, iptables-nft-save
		// warns about them on stderr.
		out, err := exec.Command("ip", "netns", "exec", ns.Name, tool).Output()
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			if strings.HasPrefix(l, ":") {
				l = strings.TrimSuffix(l, " [0:0]")
			}
			b.WriteString(l + "\n")
		}
	}
	for _, tbl := range []string{"inet firewall", "ip custom"} {
		fmt.Fprintf(&b, "## nft list table %s\n", tbl)
		b.WriteString(ns.Run(t, "nft", append([]string{"list", "table"}, strings.Fields(tbl)...)...))
	}
	b.WriteString("## ipset list -n\n")
	names := strings.Fields(ns.Run(t, "ipset", "list", "-n"))
	slices.Sort(names)
	b.WriteString(strings.Join(names, "\n") + "\n")
	return b.String()
}

// withoutKubeProxy is a snapshot less kube-proxy's chains (declarations
// and rules), the rules that jump to them, and its ipsets but held (the
// one an iptables-legacy rule holds).
func withoutKubeProxy(s, held string) string {
	var b strings.Builder
	table, section := "", ""
	kpSets := map[string]bool{}
	for _, n := range KubeProxyIPSets() {
		kpSets[n] = n != held
	}
	for _, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "## "):
			section = l
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		}
		nftSave := strings.Contains(section, "tables-nft-save")
		f := strings.Fields(l)
		switch {
		case nftSave && strings.HasPrefix(l, ":") && isKubeProxyChain(table, f[0][1:]):
			continue
		case nftSave && strings.HasPrefix(l, "-A ") && isKubeProxyChain(table, f[1]):
			continue
		case nftSave && strings.HasPrefix(l, "-A ") && slices.ContainsFunc(f, func(w string) bool { return isKubeProxyChain(table, w) }) &&
			(slices.Contains(f, "-j") || slices.Contains(f, "-g")):
			i := slices.IndexFunc(f, func(w string) bool { return w == "-j" || w == "-g" })
			if i+1 < len(f) && isKubeProxyChain(table, f[i+1]) {
				continue
			}
		case section == "## ipset list -n" && kpSets[l]:
			continue
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// A chain of someone else's that jumps to KUBE-MARK-MASQ keeps it, and
// the kernel takes the rest of the plan (no EBUSY): kube-proxy's hooks
// and KUBE-SERVICES go, KUBE-MARK-MASQ still marks for the CNI.
func TestKernelKeepsChainsOthersUse(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTools(t)
	ns := netnstest.New(t)
	restore(t, ns, "iptables-nft-restore", `*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-MASQ - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -j CNI-MASQ
-A CNI-MASQ -d 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.96.0.0/16 -j KUBE-MARK-MASQ
COMMIT
`)
	var rep Report
	var err error
	ns.Do(t, func() { rep, err = Run(Kernel{Rules: NewNetfilter(ns.FD())}) })
	if err != nil {
		t.Fatal(err)
	}
	got := ns.Run(t, "iptables-nft-save", "-t", "nat")
	for _, want := range []string{":CNI-MASQ", ":KUBE-MARK-MASQ", "-A CNI-MASQ -d 10.244.0.0/16 -j KUBE-MARK-MASQ", "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q gone:\n%s", want, got)
		}
	}
	if strings.Contains(got, "KUBE-SERVICES") {
		t.Errorf("KUBE-SERVICES left:\n%s", got)
	}
	if len(rep.ChainsKept) != 1 || !strings.Contains(rep.ChainsKept[0], "KUBE-MARK-MASQ: jumped to by CNI-MASQ") {
		t.Errorf("kept %v, want KUBE-MARK-MASQ held by CNI-MASQ", rep.ChainsKept)
	}
}

// The transaction carries the generation of the read: after another
// writer's change the kernel refuses it with ERESTART and deletes
// nothing, which is what Run's retry relies on.
func TestKernelStaleGeneration(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTools(t)
	ns := netnstest.New(t)
	restore(t, ns, "iptables-nft-restore", `*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -j KUBE-SERVICES
COMMIT
`)
	nf := NewNetfilter(ns.FD())
	rs, gen, err := nf.Read()
	if err != nil {
		t.Fatal(err)
	}
	p := PlanRuleset(rs)
	if p.Empty() {
		t.Fatalf("nothing planned from %+v", rs)
	}
	ns.Run(t, "iptables-nft", "-t", "nat", "-N", "SOMEONE-ELSE") // a concurrent writer
	err = nf.Apply(p, gen)
	if !errors.Is(err, syscall.ERESTART) {
		t.Fatalf("Apply with a stale generation: %v, want ERESTART", err)
	}
	if got := ns.Run(t, "iptables-nft-save", "-t", "nat"); !strings.Contains(got, ":KUBE-SERVICES") {
		t.Errorf("the refused transaction deleted something:\n%s", got)
	}
	// Run reads again and gets it done.
	var rep Report
	ns.Do(t, func() { rep, err = Run(Kernel{Rules: nf}) })
	if err != nil || len(rep.ChainsDeleted) != 1 {
		t.Fatalf("Run: %v, %+v", err, rep)
	}
}
