package takeover

import (
	"flag"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden plans in testdata")

// golden compares got with testdata/name (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := "testdata/" + name
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("plan differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// The fixtures' plans, as golden files: every kube-proxy chain and jump
// goes, and nothing else.
func TestPlanFixtures(t *testing.T) {
	for name, f := range map[string]Family{
		"kube-proxy-ipvs.rules":        IPv4,
		"kube-proxy-1.36-vm.rules":     IPv4,
		"kube-proxy-1.36-vm.ip6.rules": IPv6,
	} {
		t.Run(name, func(t *testing.T) {
			rs := loadFixture(t, f, name)
			p := PlanRuleset(rs)
			golden(t, strings.TrimSuffix(name, ".rules")+".plan", p.String())
			if len(p.Kept()) != 0 {
				t.Errorf("kept chains, want none: %v", p.Kept())
			}
			// Applied to the fixture, the plan leaves no kube-proxy
			// chain, and nothing to do.
			rules := &fakeRules{rs: rs}
			if err := rules.Apply(p, 0); err != nil {
				t.Fatal(err)
			}
			for _, c := range chainNames(rules.rs) {
				fs := strings.Fields(c)
				if isKubeProxyChain(fs[1], fs[2]) {
					t.Errorf("left %s", c)
				}
			}
			if again := PlanRuleset(rules.rs); !again.Empty() {
				t.Errorf("a second plan is not empty:\n%s", again)
			}
		})
	}
}

// Run against the fixture in a fake kernel that enforces the kernel's
// rules (EBUSY for a chain still jumped to): what remains is exactly what
// is not kube-proxy's, and a second run does nothing.
func TestRunRemovesOnlyKubeProxy(t *testing.T) {
	rules := &fakeRules{rs: loadFixture(t, IPv4, "kube-proxy-ipvs.rules")}
	others := []string{"KUBE-DST-ABCDEF", "cni-portmap", "KUBE-6-IPVS-IPS-NOT-OURS"}
	sets := &fakeSets{names: append(slices.Clone(KubeProxyIPSets()), others...)}
	rep, err := Run(Kernel{Rules: rules, IPSets: sets})
	if err != nil {
		t.Fatal(err)
	}
	wantChains := []string{
		"ip mangle PREROUTING", "ip mangle INPUT", "ip mangle FORWARD", "ip mangle OUTPUT", "ip mangle POSTROUTING",
		"ip mangle KUBE-IPTABLES-HINT", "ip mangle KUBE-KUBELET-CANARY",
		"ip filter INPUT", "ip filter FORWARD", "ip filter OUTPUT", "ip filter DOCKER", "ip filter DOCKER-USER",
		"ip filter KUBE-FIREWALL", "ip filter KUBE-KUBELET-CANARY",
		"ip nat PREROUTING", "ip nat INPUT", "ip nat OUTPUT", "ip nat POSTROUTING", "ip nat CNI-HOSTPORT-DNAT",
		"ip nat KUBE-KUBELET-CANARY",
	}
	if got := chainNames(rules.rs); !slices.Equal(got, wantChains) {
		t.Errorf("chains left:\n got %v\nwant %v", got, wantChains)
	}
	// The kubelet's, Docker's and the CNI's jumps stay, nothing else.
	var jumps []string
	for _, tb := range rules.rs.Tables {
		for _, c := range tb.Chains {
			for _, r := range c.Rules {
				for _, to := range r.Targets {
					jumps = append(jumps, tb.Name+" "+c.Name+" -> "+to)
				}
			}
		}
	}
	wantJumps := []string{
		"filter INPUT -> KUBE-FIREWALL", "filter FORWARD -> DOCKER-USER", "filter FORWARD -> DOCKER",
		"filter OUTPUT -> KUBE-FIREWALL",
		"nat PREROUTING -> CNI-HOSTPORT-DNAT", "nat OUTPUT -> CNI-HOSTPORT-DNAT",
	}
	if !slices.Equal(jumps, wantJumps) {
		t.Errorf("jumps left:\n got %v\nwant %v", jumps, wantJumps)
	}
	if !slices.Equal(sets.names, others) {
		t.Errorf("ipsets left %v, want %v", sets.names, others)
	}
	if len(rep.ChainsDeleted) != 14 || len(rep.RulesDeleted) != 9 || len(rep.IPSetsDestroyed) != 34 {
		t.Errorf("report: %d chains, %d jump rules, %d ipsets; want 14, 9, 34:\n%+v",
			len(rep.ChainsDeleted), len(rep.RulesDeleted), len(rep.IPSetsDestroyed), rep)
	}

	before := rules.applies
	rep, err = Run(Kernel{Rules: rules, IPSets: sets})
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if rep.Found() || rules.applies != before {
		t.Errorf("second run found or applied something: %+v (applies %d → %d)", rep, before, rules.applies)
	}
}

// A chain of someone else that jumps to a kube-proxy chain keeps it (and
// what it jumps to); kube-proxy's own jumps from the built-in chains go.
func TestPlanKeepsChainsOthersUse(t *testing.T) {
	rs, err := parseSave(IPv4, `*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-MASQ - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A POSTROUTING -j CNI-MASQ
-A CNI-MASQ -j KUBE-LOAD-BALANCER
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-SERVICES -j KUBE-MARK-MASQ
-A KUBE-SERVICES -j KUBE-LOAD-BALANCER
COMMIT
`)
	if err != nil {
		t.Fatal(err)
	}
	got := PlanRuleset(rs).String()
	want := `ip nat: delete PREROUTING rule 1 (-j KUBE-SERVICES)
ip nat: delete POSTROUTING rule 2 (-j KUBE-POSTROUTING)
ip nat: delete chain KUBE-SERVICES (2 rules)
ip nat: delete chain KUBE-POSTROUTING (0 rules)
ip nat: keep chain KUBE-LOAD-BALANCER: jumped to by CNI-MASQ, which is not a chain of kube-proxy's IPVS mode
ip nat: keep chain KUBE-MARK-MASQ: jumped to by KUBE-LOAD-BALANCER, which is not a chain of kube-proxy's IPVS mode
`
	if got != want {
		t.Errorf("plan:\n%s\nwant:\n%s", got, want)
	}
	// And the kernel takes it (nothing deleted is still jumped to).
	rules := &fakeRules{rs: rs}
	rep, err := Run(Kernel{Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.ChainsKept) != 2 {
		t.Errorf("kept %v, want KUBE-LOAD-BALANCER and KUBE-MARK-MASQ", rep.ChainsKept)
	}
}

// Names are per table: the kubelet's KUBE-FIREWALL in filter stays while
// kube-proxy's old one in nat goes; a base chain is never deleted, and
// other tables (raw, security) are not kube-proxy's.
func TestPlanTableScope(t *testing.T) {
	rs, err := parseSave(IPv6, `*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-MARK-DROP - [0:0]
-A PREROUTING -j KUBE-FIREWALL
-A KUBE-FIREWALL -j KUBE-MARK-DROP
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
COMMIT
*mangle
:KUBE-PROXY-CANARY ACCEPT [0:0]
COMMIT
`)
	if err != nil {
		t.Fatal(err)
	}
	got := PlanRuleset(rs).String()
	want := `ip6 nat: delete PREROUTING rule 1 (-j KUBE-FIREWALL)
ip6 nat: delete chain KUBE-FIREWALL (1 rules)
`
	if got != want {
		t.Errorf("plan:\n%s\nwant:\n%s", got, want)
	}
}

func TestPlanEmpty(t *testing.T) {
	if p := PlanRuleset(Ruleset{}); !p.Empty() || p.String() != "" {
		t.Errorf("plan of nothing: %q", p)
	}
}

// Another writer between the read and the transaction: the kernel
// refuses the stale transaction (ERESTART) and Run reads again.
func TestRunRetriesAfterConcurrentChange(t *testing.T) {
	rules := &fakeRules{rs: loadFixture(t, IPv4, "kube-proxy-ipvs.rules")}
	rules.beforeApply = func(f *fakeRules) {
		if f.applies == 1 {
			f.gen++ // e.g. the kubelet rewrote its canary
		}
	}
	rep, err := Run(Kernel{Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	if rules.applies != 2 || len(rep.ChainsDeleted) != 14 {
		t.Errorf("applies %d, chains deleted %d; want 2 and 14", rules.applies, len(rep.ChainsDeleted))
	}
}

// kube-proxy still running puts its chains back: Run gives up after a
// bounded number of rounds and says why.
func TestRunGivesUpWhenChainsComeBack(t *testing.T) {
	fixture := loadFixture(t, IPv4, "kube-proxy-ipvs.rules")
	rules := &fakeRules{rs: clone(fixture)}
	rules.beforeApply = func(f *fakeRules) { f.rs = clone(fixture); f.gen++ }
	_, err := Run(Kernel{Rules: rules})
	if err == nil || !strings.Contains(err.Error(), "is kube-proxy still running") {
		t.Fatalf("err = %v, want a hint that kube-proxy is still running", err)
	}
	if rules.applies > maxAttempts+1 {
		t.Errorf("%d applies, want at most %d", rules.applies, maxAttempts+1)
	}
}

// A transaction the kernel refuses for another reason: each table is
// tried on its own, and the error names the table.
func TestRunFallsBackToOneTableAtATime(t *testing.T) {
	rules := &fakeRules{rs: loadFixture(t, IPv4, "kube-proxy-ipvs.rules")}
	rules.beforeApply = func(f *fakeRules) {
		// Apply 1 is the whole plan; then one table each, sorted:
		// filter (2), mangle (3), nat (4).
		f.failApply = nil
		if f.applies == 1 || f.applies == 4 {
			f.failApply = syscall.EBUSY
		}
	}
	rep, err := Run(Kernel{Rules: rules})
	if err == nil || !strings.Contains(err.Error(), "table ip nat") {
		t.Fatalf("err = %v, want the nat table's failure", err)
	}
	left := chainNames(rules.rs)
	if !slices.Contains(left, "ip nat KUBE-SERVICES") || slices.Contains(left, "ip filter KUBE-FORWARD") || slices.Contains(left, "ip mangle KUBE-PROXY-CANARY") {
		t.Errorf("chains left %v: want filter and mangle cleaned, nat untouched", left)
	}
	if len(rep.ChainsDeleted) != 8 {
		t.Errorf("report: %d chains deleted, want 8 (filter 7, mangle 1): %v", len(rep.ChainsDeleted), rep.ChainsDeleted)
	}
}

// ipsets still referenced for a moment after their rules went (the
// kernel releases them from a work queue) are destroyed on a retry; one
// that stays referenced is reported, not an error.
func TestIPSetsBusy(t *testing.T) {
	defer func(d time.Duration) { ipsetWait = d }(ipsetWait)
	ipsetWait = 200 * time.Millisecond
	sets := &fakeSets{
		names: []string{"KUBE-CLUSTER-IP", "KUBE-IPVS-IPS", "KUBE-LOOP-BACK"},
		busy:  map[string]int{"KUBE-CLUSTER-IP": 2, "KUBE-LOOP-BACK": -1},
	}
	rep, err := Run(Kernel{Rules: &fakeRules{}, IPSets: sets})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"KUBE-IPVS-IPS", "KUBE-CLUSTER-IP"}; !slices.Equal(rep.IPSetsDestroyed, want) {
		t.Errorf("destroyed %v, want %v", rep.IPSetsDestroyed, want)
	}
	if len(rep.IPSetsKept) != 1 || !strings.HasPrefix(rep.IPSetsKept[0], "KUBE-LOOP-BACK: still in use") {
		t.Errorf("kept %v, want KUBE-LOOP-BACK", rep.IPSetsKept)
	}
}

func TestKubeProxyIPSets(t *testing.T) {
	all := KubeProxyIPSets()
	if len(all) != 34 {
		t.Fatalf("%d names, want 17 IPv4 + 17 IPv6", len(all))
	}
	for _, want := range []string{"KUBE-6-CLUSTER-IP", "KUBE-6-LOAD-BALANCER-SOURCE-CID", "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"} {
		if !slices.Contains(all, want) {
			t.Errorf("missing %s", want)
		}
	}
	for _, n := range all {
		if len(n) > 31 {
			t.Errorf("%s: longer than ipset's 31 characters", n)
		}
	}
}

func TestLegacyTables(t *testing.T) {
	dir := t.TempDir()
	if got, err := LegacyTables(dir); err != nil || len(got) != 0 {
		t.Errorf("no files: %v, %v", got, err)
	}
	if err := os.WriteFile(dir+"/ip_tables_names", []byte("nat\nfilter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/ip6_tables_names", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := LegacyTables(dir)
	if err != nil || !slices.Equal(got, []string{"ip filter", "ip nat"}) {
		t.Errorf("got %v, %v; want ip filter, ip nat", got, err)
	}
}
