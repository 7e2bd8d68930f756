package nft

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

// errInjected is a ready-made error for Fake.FailNext.
var errInjected = errors.New("injected failure")

// svc builds the elements a typical ClusterIP Service port needs: its
// ClusterIP . proto . port, the VIP on kube-ipvs0, and hairpin entries for
// its endpoints.
func svc(i int, endpoints ...string) []Element {
	ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
	es := []Element{
		{Set: ClusterIPs, Addr: ip, Protocol: TCP, Port: 80},
		{Set: IPVSAddresses, Addr: ip},
	}
	for _, ep := range endpoints {
		es = append(es, Element{Set: Hairpin, Addr: netip.MustParseAddr(ep), Protocol: TCP, Port: 8080})
	}
	return es
}

func mustFake(t testing.TB, cfg Config) (*Table, *Fake) {
	t.Helper()
	tbl, f, err := NewFake(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tbl, f
}

func mustSync(t testing.TB, tbl *Table, full bool) SyncResult {
	t.Helper()
	res, err := tbl.Sync(full)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestFirstSyncBuildsTableThenOnlyChangesAreSent(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	for i := range 1000 {
		if err := tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i, fmt.Sprintf("10.244.%d.%d", i>>8, i&0xff))); err != nil {
			t.Fatal(err)
		}
	}
	res := mustSync(t, tbl, false)
	if !res.Rebuilt || res.Added != 3000 || res.Elements != 3000 {
		t.Fatalf("first sync: %+v, want a rebuild adding 3000 elements", res)
	}
	// One endpoint changes in one Service: one delete, one add.
	if err := tbl.SetElements("ns/svc-7:http", svc(7, "10.244.99.99")); err != nil {
		t.Fatal(err)
	}
	before := f.Writes
	res = mustSync(t, tbl, false)
	if res.Rebuilt || res.Added != 1 || res.Deleted != 1 || f.Writes-before != 2 {
		t.Fatalf("incremental sync: %+v (%d writes), want 1 add + 1 delete", res, f.Writes-before)
	}
	// Nothing changed: no transaction at all.
	tx := f.Transactions
	if err := tbl.SetElements("ns/svc-8:http", svc(8, "10.244.0.8")); err != nil {
		t.Fatal(err)
	}
	mustSync(t, tbl, false)
	mustSync(t, tbl, true) // nobody else changed the ruleset: no rebuild either
	if f.Transactions != tx {
		t.Fatalf("%d transactions sent for no change", f.Transactions-tx)
	}
}

func TestSharedElementIsCountedPerOwner(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	lb := Element{Set: LoadBalancerIPs, Addr: netip.MustParseAddr("192.0.2.1"), Protocol: TCP, Port: 443}
	vip := Element{Set: IPVSAddresses, Addr: netip.MustParseAddr("192.0.2.1")}
	_ = tbl.SetElements("a/web:https", []Element{lb, vip})
	_ = tbl.SetElements("b/api:https", []Element{vip})
	mustSync(t, tbl, false)
	if got := f.Dump(); !strings.Contains(got, `192.0.2.1 comment "a/web:https, b/api:https"`) {
		t.Fatalf("shared element should name both owners:\n%s", got)
	}
	// Removing one owner keeps the element for the other, with its comment
	// updated in place.
	_ = tbl.SetElements("a/web:https", nil)
	mustSync(t, tbl, false)
	got := f.Dump()
	if !strings.Contains(got, `192.0.2.1 comment "b/api:https"`) {
		t.Fatalf("element of the remaining owner lost:\n%s", got)
	}
	if strings.Contains(got, "192.0.2.1 . tcp . 443") {
		t.Fatalf("element of the removed owner kept:\n%s", got)
	}
	_ = tbl.SetElements("b/api:https", nil)
	mustSync(t, tbl, false)
	if n := len(f.Elements()); n != 0 {
		t.Fatalf("%d elements left after every owner left", n)
	}
}

func TestBadElementsAreRefusedAndOthersKept(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	good := Element{Set: ClusterIPs, Addr: netip.MustParseAddr("10.96.0.1"), Protocol: TCP, Port: 443}
	cases := []Element{
		{Set: ClusterIPs, Protocol: TCP, Port: 443},                                          // no address
		{Set: ClusterIPs, Addr: netip.MustParseAddr("10.96.0.2"), Protocol: "ICMP", Port: 1}, // protocol
		{Set: ClusterIPs, Addr: netip.MustParseAddr("10.96.0.2"), Protocol: TCP},             // port 0
		{Set: "nonsense", Addr: netip.MustParseAddr("10.96.0.2")},                            // set
		{Set: NodePortFWMarks, Protocol: TCP, Port: 30000},                                   // map without value
		{Set: LoadBalancerSourceRanges, Addr: netip.MustParseAddr("192.0.2.1"), Protocol: TCP, // family mismatch
			Port: 80, Source: netip.MustParsePrefix("2001:db8::/64")},
		{Set: LoadBalancerSourceRanges, Addr: netip.MustParseAddr("192.0.2.1"), Protocol: TCP, // not masked
			Port: 80, Source: netip.MustParsePrefix("198.51.100.7/24")},
	}
	err := tbl.SetElements("ns/svc:p", append([]Element{good}, cases...))
	if err == nil {
		t.Fatal("bad elements accepted without an error")
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(cases) {
		t.Fatalf("error reports %d problems, want %d:\n%v", n, len(cases), err)
	}
	mustSync(t, tbl, false)
	if es := f.Elements(); len(es) != 1 || es[0].Element != good {
		t.Fatalf("kernel holds %v, want only the good element", es)
	}
}

func TestConflictingMapValuesKeepTheFirstOwner(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	a := Element{Set: NodePortFWMarks, Protocol: TCP, Port: 30080, Mark: 0x10004000}
	b := a
	b.Mark = 0x20004000
	if err := tbl.SetElements("a/one:http", []Element{a}); err != nil {
		t.Fatal(err)
	}
	if err := tbl.SetElements("b/two:http", []Element{b}); err == nil {
		t.Fatal("second mark for the same node port accepted")
	}
	mustSync(t, tbl, false)
	if es := f.Elements(); len(es) != 1 || es[0].Mark != a.Mark {
		t.Fatalf("kernel holds %v, want the first owner's mark", es)
	}
	// When the first owner changes its mark, the element is replaced.
	a.Mark = 0x30004000
	_ = tbl.SetElements("a/one:http", []Element{a})
	res := mustSync(t, tbl, false)
	if es := f.Elements(); len(es) != 1 || es[0].Mark != a.Mark || res.Added != 1 || res.Deleted != 1 {
		t.Fatalf("after changing the mark: kernel %v, result %+v", es, res)
	}
}

func TestSourceRangesAreNormalizedAndOverlapsRefused(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	lb := netip.MustParseAddr("192.0.2.1")
	r := func(p string) Element {
		return Element{Set: LoadBalancerSourceRanges, Addr: lb, Protocol: TCP, Port: 80, Source: netip.MustParsePrefix(p)}
	}
	// A range inside another of the same Service is dropped, a duplicate too.
	if err := tbl.SetElements("a/web:http", []Element{r("10.0.0.0/8"), r("10.1.0.0/16"), r("10.0.0.0/8"), r("172.16.0.0/12")}); err != nil {
		t.Fatal(err)
	}
	// Another owner's overlapping range for the same frontend is refused;
	// a disjoint one is fine.
	if err := tbl.SetElements("b/web:http", []Element{r("10.2.0.0/16")}); err == nil {
		t.Fatal("overlapping range of another owner accepted")
	}
	if err := tbl.SetElements("c/web:http", []Element{r("192.168.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, tbl, false)
	var got []string
	for _, e := range f.Elements() {
		got = append(got, e.Source.String())
	}
	if want := "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"; strings.Join(got, " ") != want {
		t.Fatalf("ranges %v, want %s", got, want)
	}
}

// TestFailedTransactionIsRetried: a transaction the kernel fails once is
// sent again at once; one that fails after someone else changed the
// ruleset is retried as a rebuild, which repairs drift.
func TestFailedTransactionIsRetried(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	_ = tbl.SetElements("a/web:http", svc(1))
	mustSync(t, tbl, false)
	_ = tbl.SetElements("b/web:http", svc(2))
	f.FailNext = errInjected
	if res := mustSync(t, tbl, false); res.Rebuilt || res.Added != 2 || len(f.Elements()) != 4 {
		t.Fatalf("retry %+v with %d elements, want 2 added, 4 in all", res, len(f.Elements()))
	}
	// Someone deletes an element of b: b's removal fails, a rebuild does not.
	f.Drift(func(es map[Element]KernelElement) {
		for k := range es {
			if k.Set == ClusterIPs && k.Addr == netip.MustParseAddr("10.96.0.2") {
				delete(es, k)
			}
		}
	})
	_ = tbl.SetElements("b/web:http", nil)
	if res := mustSync(t, tbl, false); !res.Rebuilt || len(f.Elements()) != 2 {
		t.Fatalf("sync after drift %+v with %d elements, want a rebuild with 2", res, len(f.Elements()))
	}
}

// TestRefusedOwnerIsIsolated: when the kernel refuses the elements of one
// owner, every other owner's change is applied, in the first sync (a
// rebuild) and in incremental ones, and the error names the owner.
func TestRefusedOwnerIsIsolated(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	bad := fmt.Errorf("refused: %w", syscall.EINVAL)
	f.Refuse = func(e Element) error {
		if e.Set == ClusterIPs && e.Port == 6666 {
			return bad
		}
		return nil
	}
	for i := range 20 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%02d:http", i), svc(i))
	}
	broken := append(svc(7), Element{Set: ClusterIPs, Addr: netip.MustParseAddr("10.96.0.7"), Protocol: TCP, Port: 6666})
	_ = tbl.SetElements("ns/svc-07:http", broken)
	requireRefused := func(res SyncResult, err error, want string) {
		t.Helper()
		var re *RefusedError
		if !errors.As(err, &re) || strings.Join(re.Owners, " ") != want || !errors.Is(re.Errs[want], syscall.EINVAL) {
			t.Fatalf("sync: %+v, %v; want a RefusedError naming %s", res, err, want)
		}
	}
	res, err := tbl.Sync(false)
	requireRefused(res, err, "ns/svc-07:http")
	if n := len(f.Elements()); n != 19*2 || res.Elements != 19*2 || !res.Rebuilt {
		t.Fatalf("after the first sync: %d elements in the kernel, %+v; want the 19 good owners' 38", n, res)
	}

	// Incremental: the bad owner's old elements stay, others' changes go.
	_ = tbl.SetElements("ns/svc-07:http", svc(7))
	mustSync(t, tbl, false)
	_ = tbl.SetElements("ns/svc-03:http", nil)
	_ = tbl.SetElements("ns/svc-07:http", broken)
	_ = tbl.SetElements("ns/svc-30:http", svc(30))
	res, err = tbl.Sync(false)
	requireRefused(res, err, "ns/svc-07:http")
	got := map[string]bool{}
	for _, e := range f.Elements() {
		got[e.Comment] = true
	}
	if got["ns/svc-03:http"] || !got["ns/svc-30:http"] || !got["ns/svc-07:http"] || len(f.Elements()) != 20*2 {
		t.Fatalf("kernel holds %v (%d elements): want svc-03 gone, svc-30 added, svc-07 as before", got, len(f.Elements()))
	}
	if tbl.needsBuild {
		t.Fatal("isolating an owner left the table marked for a rebuild")
	}
}

func TestFullSyncRepairsDrift(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	_ = tbl.SetElements("a/web:http", svc(1))
	_ = tbl.SetElements("b/web:http", svc(2))
	mustSync(t, tbl, false)
	f.Drift(func(es map[Element]KernelElement) {
		for k := range es {
			if k.Set == ClusterIPs {
				delete(es, k)
			}
		}
	})
	if res := mustSync(t, tbl, false); res.Rebuilt {
		t.Fatal("a partial sync should not look for drift")
	}
	res := mustSync(t, tbl, true)
	if !res.Rebuilt || len(f.Elements()) != 4 {
		t.Fatalf("full sync %+v left %d elements, want a rebuild with 4", res, len(f.Elements()))
	}
}

func TestCleanupRemovesTheTable(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	_ = tbl.SetElements("a/web:http", svc(1))
	mustSync(t, tbl, false)
	if err := tbl.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if f.Dump() != "" {
		t.Fatal("table still there after cleanup")
	}
	// The next sync builds it again from the mirror.
	if res := mustSync(t, tbl, false); !res.Rebuilt || res.Elements != 2 {
		t.Fatalf("sync after cleanup: %+v", res)
	}
}

func TestRuleCountDoesNotGrowWithServices(t *testing.T) {
	cfg := Config{LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}}
	tbl, _ := mustFake(t, cfg)
	empty := mustSync(t, tbl, false).Rules
	for i := range 5000 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i, "10.244.0.1", "10.244.0.2"))
	}
	if got := mustSync(t, tbl, false).Rules; got != empty {
		t.Fatalf("%d rules with 5000 Services, %d with none", got, empty)
	}
}

func TestConfigChangesRules(t *testing.T) {
	count := func(cfg Config) int { cfg.defaults(); return cfg.ruleCount() }
	pod := LocalTraffic{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	base := count(Config{})
	// Local detection adds, per implemented family, the ClusterIP
	// masquerade rule, and with this node's pod CIDRs the local-policy
	// jump; masquerade-all adds one per family.
	if got := count(Config{LocalTraffic: pod}); got != base+1 {
		t.Fatalf("with an IPv4 cluster CIDR: %d rules, want %d", got, base+1)
	}
	pod.NodePodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}
	if got := count(Config{LocalTraffic: pod}); got != base+2 {
		t.Fatalf("with an IPv4 cluster CIDR and node pod CIDR: %d rules, want %d", got, base+2)
	}
	if got := count(Config{MasqueradeAll: true}); got != base+2 {
		t.Fatalf("masquerade-all: %d rules, want %d", got, base+2)
	}
	if got := count(Config{LocalTraffic: LocalTraffic{Interface: "cali*"}}); got != base+4 {
		t.Fatalf("interface prefix: %d rules, want %d", got, base+4)
	}
	if err := (Config{MasqueradeMark: 0x3}).Validate(); err == nil {
		t.Fatal("two-bit masquerade mark accepted")
	}
}

func TestElementKeyEncoding(t *testing.T) {
	cases := []struct {
		e          Element
		key, kend  string
		text, want string
	}{
		{e: Element{Set: ClusterIPs, Addr: netip.MustParseAddr("10.96.0.1"), Protocol: TCP, Port: 443},
			key: "0a600001" + "06000000" + "01bb0000", text: "10.96.0.1 . tcp . 443"},
		{e: Element{Set: NodePorts, Protocol: SCTP, Port: 30000},
			key: "84000000" + "75300000", text: "sctp . 30000"},
		{e: Element{Set: HealthCheckNodePorts, Port: 32000}, key: "7d00", text: "32000"},
		{e: Element{Set: Hairpin, Addr: netip.MustParseAddr("10.244.0.5"), Protocol: UDP, Port: 53},
			key: "0af40005" + "11000000" + "00350000" + "0af40005", text: "10.244.0.5 . udp . 53 . 10.244.0.5"},
		{e: Element{Set: LoadBalancerSourceRanges, Addr: netip.MustParseAddr("192.0.2.1"), Protocol: TCP, Port: 80,
			Source: netip.MustParsePrefix("198.51.100.0/22")},
			key: "c0000201" + "06000000" + "00500000" + "c6336400", kend: "c0000201" + "06000000" + "00500000" + "c63367ff",
			text: "192.0.2.1 . tcp . 80 . 198.51.100.0/22"},
		{e: Element{Set: IPVSAddresses, Addr: netip.MustParseAddr("2001:db8::1")},
			key: "20010db8000000000000000000000001", text: "2001:db8::1"},
		{e: Element{Set: NodePortFWMarks, Protocol: TCP, Port: 30080, Mark: 0x12344000},
			key: "06000000" + "75800000", text: "tcp . 30080 : 0x12344000"},
	}
	for _, c := range cases {
		k, ke := c.e.key()
		if fmt.Sprintf("%x", k) != c.key || fmt.Sprintf("%x", ke) != c.kend {
			t.Errorf("%s: key %x end %x, want %s end %s", c.e.Set, k, ke, c.key, c.kend)
		}
		if c.e.String() != c.text {
			t.Errorf("%s: text %q, want %q", c.e.Set, c.e.String(), c.text)
		}
	}
	if v := fmt.Sprintf("%x", Element{Set: NodePortFWMarks, Mark: 0x12344000}.value()); v != "12344000" {
		t.Errorf("map value %s, want network byte order 12344000", v)
	}
}

func TestMergePrefixes(t *testing.T) {
	ps := []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.0.0.0/16"), // adjacent
		netip.MustParsePrefix("10.0.5.0/24"),                                       // inside
		netip.MustParsePrefix("192.168.0.0/24"), netip.MustParsePrefix("fd00::/8"), // other family ignored
		netip.MustParsePrefix("255.255.255.0/24"),
	}
	var got []string
	for _, r := range mergePrefixes(ps, IPv4) {
		got = append(got, r.first.String()+"-"+r.last.String())
	}
	want := "10.0.0.0-10.1.255.255 192.168.0.0-192.168.0.255 255.255.255.0-255.255.255.255"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
}

// TestRenderGolden pins the whole table, rules included, as nft text: a
// change to the ruleset shows up as a readable diff in review. Run with
// -update to rewrite testdata/table.golden.
func TestRenderGolden(t *testing.T) {
	cfg := Config{
		LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}, NodePodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:0:1::/64")}},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")},
		DropInvalid:  true,
	}
	tbl, f := mustFake(t, cfg)
	lb := netip.MustParseAddr("192.0.2.10")
	_ = tbl.SetElements("default/kubernetes:https", []Element{
		{Set: ClusterIPs, Addr: netip.MustParseAddr("10.96.0.1"), Protocol: TCP, Port: 443},
		{Set: IPVSAddresses, Addr: netip.MustParseAddr("10.96.0.1")},
	})
	_ = tbl.SetElements("shop/web:http", []Element{
		{Set: ClusterIPs, Addr: netip.MustParseAddr("fd00:96::20"), Protocol: TCP, Port: 80},
		{Set: IPVSAddresses, Addr: netip.MustParseAddr("fd00:96::20")},
		{Set: LoadBalancerIPsLocal, Addr: lb, Protocol: TCP, Port: 80},
		{Set: LocalPolicyFWMarks, Addr: lb, Protocol: TCP, Port: 80, Mark: 0x00014000},
		{Set: NodePortsLocal, Protocol: TCP, Port: 30080},
		{Set: NodePortFWMarks, Protocol: TCP, Port: 30080, Mark: 0x00014000},
		{Set: HealthCheckNodePorts, Port: 32100},
		{Set: LoadBalancerFirewall, Addr: lb, Protocol: TCP, Port: 80},
		{Set: LoadBalancerSourceRanges, Addr: lb, Protocol: TCP, Port: 80, Source: netip.MustParsePrefix("203.0.113.0/24")},
		{Set: Hairpin, Addr: netip.MustParseAddr("10.244.1.7"), Protocol: TCP, Port: 8080},
	})
	mustSync(t, tbl, false)
	got := f.Dump()
	golden := "testdata/table.golden"
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./nft/ -run TestRenderGolden -update)", err)
	}
	if got != string(want) {
		t.Fatalf("table differs from %s (rerun with -update after checking):\n%s", golden, got)
	}
}

// TestRefusedLoadBalancerFailsClosed: when the kernel refuses a
// LoadBalancer's source ranges during a rebuild, its firewall element is
// still programmed: no outside client gets in, instead of every one.
func TestRefusedLoadBalancerFailsClosed(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	f.Refuse = func(e Element) error {
		if e.Set == LoadBalancerSourceRanges {
			return syscall.EINVAL
		}
		return nil
	}
	lb := netip.MustParseAddr("192.0.2.1")
	_ = tbl.SetElements("ns/lb:https", []Element{
		{Set: LoadBalancerIPs, Addr: lb, Protocol: TCP, Port: 443},
		{Set: LoadBalancerFirewall, Addr: lb, Protocol: TCP, Port: 443},
		{Set: LoadBalancerSourceRanges, Addr: lb, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("198.51.100.0/24")},
	})
	_ = tbl.SetElements("ns/web:http", svc(1))
	var re *RefusedError
	if _, err := tbl.Sync(false); !errors.As(err, &re) {
		t.Fatalf("sync: %v, want a RefusedError", err)
	}
	var sets []string
	for _, e := range f.Elements() {
		sets = append(sets, string(e.Set))
	}
	if got, want := strings.Join(sets, " "), "cluster-ips ipvs-addresses load-balancer-firewall"; got != want {
		t.Fatalf("kernel holds elements of %s, want %s", got, want)
	}
}

// commitElsewhere simulates someone else committing to another table: the
// generation moves, the table does not change.
func (f *Fake) commitElsewhere() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	for _, w := range f.watchers {
		w(genEvent{gen: f.gen})
	}
}

// TestWatchDriftIgnoresOwnCommits: the fake tells watchers about every
// commit; only someone else's change to the table reaches onDrift, and
// the next sync, even a partial one, rebuilds.
func TestWatchDriftIgnoresOwnCommits(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	drift := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := tbl.WatchDrift(ctx, func() { drift <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i))
		mustSync(t, tbl, false)
	}
	if err := tbl.Cleanup(); err != nil {
		t.Fatal(err)
	}
	mustSync(t, tbl, false)
	select {
	case <-drift:
		t.Fatal("onDrift called for our own commits")
	case <-time.After(100 * time.Millisecond):
	}
	f.Drift(func(es map[Element]KernelElement) { clear(es) })
	select {
	case <-drift:
	case <-time.After(time.Second):
		t.Fatal("onDrift not called within 1 s of someone else's change")
	}
	if res := mustSync(t, tbl, false); !res.Rebuilt || len(f.Elements()) != 10 {
		t.Fatalf("sync after drift: %+v, %d elements; want a rebuild with 10", res, len(f.Elements()))
	}

	// While the watch is up, a full sync trusts it: another table's
	// commit is no reason to rebuild. Without it, the generation decides.
	f.commitElsewhere()
	time.Sleep(50 * time.Millisecond)
	if res := mustSync(t, tbl, true); res.Rebuilt {
		t.Fatalf("full sync rebuilt after another table's commit, with the watch up: %+v", res)
	}
	cancel()
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		tbl.mu.Lock()
		watching := tbl.watching
		tbl.mu.Unlock()
		if !watching {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the table still trusts a cancelled watch")
		}
	}
	f.commitElsewhere()
	if res := mustSync(t, tbl, true); !res.Rebuilt {
		t.Fatalf("full sync after another commit, without a watch: %+v, want a rebuild", res)
	}
}

// TestRestartAdoptsTheTable: a new Table over a kernel that holds the
// table as configured (a restarted nftvs) sends only what differs; one
// whose rules someone changed is rebuilt.
func TestRestartAdoptsTheTable(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	for i := range 100 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i, fmt.Sprintf("10.244.0.%d", i)))
	}
	mustSync(t, tbl, true)
	restart := func(services int) SyncResult {
		t.Helper()
		tbl, err := f.NewTable(Config{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range services {
			_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i, fmt.Sprintf("10.244.0.%d", i)))
		}
		return mustSync(t, tbl, true)
	}
	writes := f.Writes
	if res := restart(100); !res.Adopted || res.Rebuilt || f.Writes != writes {
		t.Fatalf("restart: %+v, %d writes; want the table adopted and nothing written", res, f.Writes-writes)
	}
	if res := restart(99); !res.Adopted || res.Added != 0 || res.Deleted != 3 {
		t.Fatalf("restart with one Service gone: %+v, want its 3 elements deleted", res)
	}
	f.TamperRules()
	if res := restart(99); res.Adopted || !res.Rebuilt || res.NotAdopted == "" {
		t.Fatalf("restart after a rule changed: %+v, want a rebuild", res)
	}
}

// TestReadAhead: a restarted Table reads the kernel's table ahead of its
// first Sync (while the informers list), and the Sync adopts that read
// without reading again; if someone committed to the ruleset in between,
// the read is stale and the Sync reads again (here: finds a rule changed,
// and rebuilds).
func TestReadAhead(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	for i := range 10 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i, fmt.Sprintf("10.244.0.%d", i)))
	}
	mustSync(t, tbl, true)
	restart := func(between func()) SyncResult {
		t.Helper()
		tbl, err := f.NewTable(Config{})
		if err != nil {
			t.Fatal(err)
		}
		tbl.ReadAhead()
		between()
		for i := range 10 {
			_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i, fmt.Sprintf("10.244.0.%d", i)))
		}
		return mustSync(t, tbl, true)
	}
	reads, writes := f.Reads, f.Writes
	if res := restart(func() {}); !res.Adopted || f.Reads != reads+1 || f.Writes != writes {
		t.Fatalf("restart after a read ahead: %+v, %d reads, %d writes; want the table adopted from the one read, nothing written", res, f.Reads-reads, f.Writes-writes)
	}
	reads = f.Reads
	if res := restart(f.TamperRules); res.Adopted || !res.Rebuilt || f.Reads != reads+2 {
		t.Fatalf("restart with a commit after the read ahead: %+v, %d reads; want a second read, and a rebuild", res, f.Reads-reads)
	}
}

// TestReserveKeepsWhatWasDeclared: sizing the mirror for a first sync
// keeps the owners declared before it, and what each owns.
func TestReserveKeepsWhatWasDeclared(t *testing.T) {
	tbl, f := mustFake(t, Config{})
	if err := tbl.SetElements("ns/early:http", svc(1, "10.244.0.1")); err != nil {
		t.Fatal(err)
	}
	tbl.Reserve(4000)
	for i := 2; i < 1000; i++ {
		if err := tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), svc(i, fmt.Sprintf("10.244.%d.%d", i>>8, i&0xff))); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, tbl, false)
	if n := len(f.Elements()); n != 999*3 {
		t.Fatalf("%d elements programmed, want %d", n, 999*3)
	}
	// The early owner still owns its elements: removing it deletes them.
	if err := tbl.SetElements("ns/early:http", nil); err != nil {
		t.Fatal(err)
	}
	if res := mustSync(t, tbl, false); res.Deleted != 3 {
		t.Errorf("removing the owner declared before Reserve deleted %d elements, want 3", res.Deleted)
	}
}
