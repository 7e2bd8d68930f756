package nft

// Kernel tests: the table programmed for real in a throwaway network
// namespace on the host, read back over netlink and with `nft`.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftvs/nftvs/internal/netnstest"
)

func kernelTable(t testing.TB, ns *netnstest.NS, cfg Config) *Table {
	t.Helper()
	tbl, err := New(cfg, WithNetNS(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// everySet builds one element for every set and both families.
func everySet(i int) []Element {
	v4 := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
	v6 := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x96, 14: byte(i >> 8), 15: byte(i)})
	var es []Element
	for _, a := range []netip.Addr{v4, v6} {
		src := netip.PrefixFrom(a, a.BitLen()-8).Masked()
		es = append(es,
			Element{Set: ClusterIPs, Addr: a, Protocol: TCP, Port: 80},
			Element{Set: ExternalIPs, Addr: a, Protocol: UDP, Port: 53},
			Element{Set: ExternalIPsLocal, Addr: a, Protocol: SCTP, Port: 9},
			Element{Set: LoadBalancerIPs, Addr: a, Protocol: TCP, Port: 443},
			Element{Set: LoadBalancerIPsLocal, Addr: a, Protocol: TCP, Port: 8443},
			Element{Set: LoadBalancerFirewall, Addr: a, Protocol: TCP, Port: 443},
			Element{Set: LoadBalancerSourceRanges, Addr: a, Protocol: TCP, Port: 443, Source: src},
			Element{Set: Hairpin, Addr: a, Protocol: TCP, Port: 8080},
			Element{Set: IPVSAddresses, Addr: a},
			Element{Set: LocalPolicyFWMarks, Addr: a, Protocol: TCP, Port: 8443, Mark: uint32(i+1)<<16 | 0x4000},
		)
	}
	return append(es,
		Element{Set: NodePorts, Protocol: TCP, Port: uint16(30000 + i)},
		Element{Set: NodePortsLocal, Protocol: UDP, Port: uint16(30000 + i)},
		Element{Set: NodePortFWMarks, Protocol: UDP, Port: uint16(30000 + i), Mark: uint32(i+1)<<16 | 0x4000},
		Element{Set: HealthCheckNodePorts, Port: uint16(32000 + i)},
	)
}

// kernelElements reads every element of every set of the table back over
// netlink, as "set key[-keyend][=value]" strings.
func kernelElements(t testing.TB, ns *netnstest.NS, table string) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	sets, err := c.GetSets(tbl)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range sets {
		if configSets[s.Name] { // filled from Config, not in the mirror
			continue
		}
		es, err := c.GetSetElements(s)
		if err != nil {
			t.Fatalf("elements of %s: %v", s.Name, err)
		}
		for _, e := range es {
			out = append(out, elementString(s.Name, e.Key, e.KeyEnd, e.Val))
		}
	}
	sort.Strings(out)
	return out
}

// configSets are the kernel names of the configuration sets.
var configSets = func() map[string]bool {
	m := map[string]bool{}
	for _, ks := range kernelSets() {
		if ks.fromConfig != nil {
			m[ks.kernelName()] = true
		}
	}
	return m
}()

func elementString(set string, key, keyEnd, val []byte) string {
	s := fmt.Sprintf("%s %x", set, key)
	if len(keyEnd) > 0 {
		s += fmt.Sprintf("-%x", keyEnd)
	}
	if len(val) > 0 {
		s += fmt.Sprintf("=%x", val)
	}
	return s
}

// mirrorElements is what the table believes it programmed, in the same
// form.
func mirrorElements(tbl *Table) []string {
	var out []string
	for _, e := range tbl.Programmed() {
		k, ke := e.key()
		var v []byte
		if setSpecs[e.Set].isMap {
			v = e.value()
		}
		out = append(out, elementString(e.kernelSet(), k, ke, v))
	}
	sort.Strings(out)
	return out
}

// Programmed returns the elements the kernel holds, as last programmed,
// sorted.
func (t *Table) Programmed() []KernelElement {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]KernelElement, 0, len(t.programmed))
	for k, p := range t.programmed {
		out = append(out, p.kernelElement(k))
	}
	sortElements(out)
	return out
}

func requireSameElements(t testing.TB, ns *netnstest.NS, tbl *Table) {
	t.Helper()
	got, want := kernelElements(t, ns, tbl.cfg.TableName), mirrorElements(tbl)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("kernel holds %d elements, mirror %d:\nkernel:\n%s\nmirror:\n%s",
			len(got), len(want), strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

var counterRE = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// TestKernelReadsBackWhatWasRendered programs every set in both families
// and checks, element by element over netlink, that the kernel holds what
// the mirror says; and that `nft list table` prints every rule exactly as
// render does and every element with its Service comment.
func TestKernelReadsBackWhatWasRendered(t *testing.T) {
	ns := netnstest.New(t)
	cfg := Config{
		LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}, NodePodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:0:1::/64")}},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16"), netip.MustParsePrefix("10.51.0.0/17"), netip.MustParsePrefix("fd00:50::/64")},
		DropInvalid:  true,
	}
	tbl := kernelTable(t, ns, cfg)
	for i := range 3 {
		if err := tbl.SetElements(fmt.Sprintf("ns/svc-%d:p", i), everySet(i)); err != nil {
			t.Fatal(err)
		}
	}
	res := mustSync(t, tbl, false)
	if !res.Rebuilt || res.Elements != 3*24 {
		t.Fatalf("first sync %+v, want a rebuild with %d elements", res, 3*24)
	}
	requireSameElements(t, ns, tbl)

	listed := counterRE.ReplaceAllString(ns.Run(t, "nft", "list", "table", "inet", "nftvs"), "counter")
	lines := map[string]bool{}
	for _, l := range strings.Split(listed, "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	rules := 0
	for _, c := range tbl.cfg.chains() {
		if c.header() != "" && !lines[c.header()] {
			t.Errorf("chain %s: nft does not list %q", c.name, c.header())
		}
		for _, r := range c.rules {
			rules++
			if !lines[r.text()] {
				t.Errorf("chain %s: nft does not list rule %q", c.name, r.text())
			}
		}
	}
	if rules != res.Rules {
		t.Errorf("rendered %d rules, sync reports %d", rules, res.Rules)
	}
	for _, e := range tbl.Programmed() {
		if !strings.Contains(listed, e.text()) {
			t.Errorf("nft does not list element %q", e.text())
		}
	}
	for _, want := range []string{"10.50.0.0-10.51.127.255", "fd00:50::/64", "10.244.0.0/16"} {
		if !strings.Contains(listed, want) {
			t.Errorf("configuration interval %s not listed", want)
		}
	}
	if t.Failed() {
		t.Logf("nft list table inet nftvs:\n%s", listed)
	}
}

func TestKernelIncrementalSync(t *testing.T) {
	ns := netnstest.New(t)
	tbl := kernelTable(t, ns, Config{})
	for i := range 100 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:p", i), everySet(i))
	}
	mustSync(t, tbl, false)
	// Remove half, change the endpoints of others, share one element.
	for i := range 50 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:p", i), nil)
	}
	_ = tbl.SetElements("ns/svc-60:p", svc(60, "10.244.0.60"))
	_ = tbl.SetElements("other/shared:p", []Element{{Set: IPVSAddresses, Addr: netip.AddrFrom4([4]byte{10, 96, 0, 70})}})
	res := mustSync(t, tbl, false)
	if res.Rebuilt {
		t.Fatal("incremental sync rebuilt the table")
	}
	requireSameElements(t, ns, tbl)
	listed := ns.Run(t, "nft", "list", "set", "inet", "nftvs", "ipvs-addresses-v4")
	if !strings.Contains(listed, `10.96.0.70 comment "ns/svc-70:p, other/shared:p"`) {
		t.Fatalf("shared element comment not updated:\n%s", listed)
	}
	_ = tbl.SetElements("ns/svc-70:p", nil)
	mustSync(t, tbl, false)
	requireSameElements(t, ns, tbl)
	if listed := ns.Run(t, "nft", "list", "set", "inet", "nftvs", "ipvs-addresses-v4"); !strings.Contains(listed, `10.96.0.70 comment "other/shared:p"`) {
		t.Fatalf("shared element lost with its first owner:\n%s", listed)
	}
}

func TestKernelFullSyncRepairsDrift(t *testing.T) {
	ns := netnstest.New(t)
	tbl := kernelTable(t, ns, Config{})
	for i := range 10 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:p", i), everySet(i))
	}
	mustSync(t, tbl, false)
	before := ns.Run(t, "nft", "list", "table", "inet", "nftvs")
	if res := mustSync(t, tbl, true); res.Rebuilt {
		t.Fatal("full sync rebuilt although nobody changed the ruleset")
	}
	// Someone deletes an element, flushes a chain and deletes a rule.
	ns.Run(t, "nft", "delete", "element", "inet", "nftvs", "cluster-ips-v4", "{ 10.96.0.3 . tcp . 80 }")
	ns.Run(t, "nft", "flush", "chain", "inet", "nftvs", "masquerading")
	ns.Run(t, "nft", "add", "element", "inet", "nftvs", "node-ports", "{ tcp . 31999 }")
	res := mustSync(t, tbl, true)
	if !res.Rebuilt {
		t.Fatal("full sync did not notice the drift")
	}
	requireSameElements(t, ns, tbl)
	if after := ns.Run(t, "nft", "list", "table", "inet", "nftvs"); after != before {
		t.Fatalf("table not repaired:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestKernelOnlyOwnTableIsTouched: foreign tables (an iptables-nft style
// table and another inet table) survive syncs, rebuilds and cleanup
// byte for byte.
func TestKernelOnlyOwnTableIsTouched(t *testing.T) {
	ns := netnstest.New(t)
	ns.Run(t, "nft", "-f", "-", "-c") // nft works in the namespace
	foreign := `table ip filter {
	chain INPUT { type filter hook input priority filter; policy accept; tcp dport 22 counter accept; }
}
table inet firewalld {
	set allowed { type ipv4_addr; elements = { 198.51.100.1 } }
	chain filter_INPUT { type filter hook input priority filter + 10; policy accept; ip saddr @allowed accept; }
}
`
	runStdin(t, ns, foreign, "nft", "-f", "-")
	want := ns.Run(t, "nft", "list", "table", "ip", "filter") + ns.Run(t, "nft", "list", "table", "inet", "firewalld")
	tbl := kernelTable(t, ns, Config{})
	_ = tbl.SetElements("ns/a:p", everySet(1))
	mustSync(t, tbl, false)
	_ = tbl.SetElements("ns/a:p", everySet(2))
	mustSync(t, tbl, false)
	ns.Run(t, "nft", "add", "element", "inet", "firewalld", "allowed", "{ 198.51.100.2 }")
	ns.Run(t, "nft", "delete", "element", "inet", "firewalld", "allowed", "{ 198.51.100.2 }")
	mustSync(t, tbl, true) // generation moved: rebuild of our table only
	if err := tbl.Cleanup(); err != nil {
		t.Fatal(err)
	}
	got := ns.Run(t, "nft", "list", "table", "ip", "filter") + ns.Run(t, "nft", "list", "table", "inet", "firewalld")
	if got != want {
		t.Fatalf("foreign tables changed:\nbefore:\n%s\nafter:\n%s", want, got)
	}
	if out, err := ns.Try("nft", "list", "table", "inet", "nftvs"); err == nil {
		t.Fatalf("table still there after cleanup:\n%s", out)
	}
	if err := tbl.Cleanup(); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}

func runStdin(t testing.TB, ns *netnstest.NS, stdin string, name string, args ...string) {
	t.Helper()
	out, err := ns.TryStdin(strings.NewReader(stdin), name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestKernelLargeTransaction sends 100k elements in one sync: the element
// lists are split across messages inside one transaction.
func TestKernelLargeTransaction(t *testing.T) {
	ns := netnstest.New(t)
	tbl := kernelTable(t, ns, Config{})
	const services = 25000 // 4 elements each
	for i := range services {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:http", i), bigSvc(i))
	}
	res := mustSync(t, tbl, false)
	if res.Elements != 4*services {
		t.Fatalf("%d elements, want %d", res.Elements, 4*services)
	}
	got := kernelElements(t, ns, "nftvs")
	if len(got) != 4*services {
		t.Fatalf("kernel holds %d elements, want %d", len(got), 4*services)
	}
	// And one change on top of it is one small transaction.
	_ = tbl.SetElements("ns/svc-1:http", nil)
	if res := mustSync(t, tbl, false); res.Deleted != 4 || res.Added != 0 {
		t.Fatalf("incremental sync after a large one: %+v", res)
	}
	if n := len(kernelElements(t, ns, "nftvs")); n != 4*services-4 {
		t.Fatalf("kernel holds %d elements after removing one Service", n)
	}
}

// bigSvc is a Service port for scale tests: ClusterIP, VIP and two
// hairpin endpoints, all distinct across i < 65536.
func bigSvc(i int) []Element {
	ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
	return []Element{
		{Set: ClusterIPs, Addr: ip, Protocol: TCP, Port: 80},
		{Set: IPVSAddresses, Addr: ip},
		{Set: Hairpin, Addr: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), Protocol: TCP, Port: 8080},
		{Set: Hairpin, Addr: netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)}), Protocol: TCP, Port: 8080},
	}
}

// TestKernelWatchDrift: `nft flush ruleset`, a deleted table and a
// deleted element are noticed within a second through the ruleset's
// notifications, and the next sync rebuilds the table; our own commits
// (a 100k-element rebuild among them, which overflows the notification
// socket's default buffer) and other tables' changes are not drift.
func TestKernelWatchDrift(t *testing.T) {
	ns := netnstest.New(t)
	tbl := kernelTable(t, ns, Config{})
	for i := range 10 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:p", i), everySet(i))
	}
	mustSync(t, tbl, false)
	drift := make(chan time.Time, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := tbl.WatchDrift(ctx, func() { drift <- time.Now() }); err != nil {
		t.Fatal(err)
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case <-drift:
			t.Fatalf("onDrift called after %s", what)
		case <-time.After(300 * time.Millisecond):
		}
	}
	noticed := func(what string, cmd ...string) {
		t.Helper()
		start := time.Now()
		ns.Run(t, cmd[0], cmd[1:]...)
		select {
		case at := <-drift:
			t.Logf("%s noticed after %v", what, at.Sub(start))
		case <-time.After(time.Second):
			t.Fatalf("%s not noticed within 1 s", what)
		}
		res := mustSync(t, tbl, true)
		if !res.Rebuilt {
			t.Fatalf("sync after %s: %+v, want a rebuild", what, res)
		}
		requireSameElements(t, ns, tbl)
		quiet("the rebuild after " + what)
	}

	_ = tbl.SetElements("ns/svc-1:p", nil)
	mustSync(t, tbl, false)
	mustSync(t, tbl, true)
	quiet("our own syncs")
	ns.Run(t, "nft", "add", "table", "inet", "other")
	ns.Run(t, "nft", "add", "set", "inet", "other", "s", "{ type ipv4_addr; }")
	ns.Run(t, "nft", "add", "element", "inet", "other", "s", "{ 10.0.0.1 }")
	quiet("changes to another table")
	if res := mustSync(t, tbl, true); res.Rebuilt {
		t.Fatalf("full sync rebuilt after changes to another table, with the watch up: %+v", res)
	}

	noticed("nft flush ruleset", "nft", "flush", "ruleset")
	noticed("nft delete table", "nft", "delete", "table", "inet", "nftvs")
	noticed("nft delete element", "nft", "delete", "element", "inet", "nftvs", "cluster-ips-v4", "{ 10.96.0.3 . tcp . 80 }")

	for i := range 25000 {
		_ = tbl.SetElements(fmt.Sprintf("ns/big-%d:http", i), bigSvc(i))
	}
	tbl.mu.Lock()
	tbl.needsBuild = true
	tbl.mu.Unlock()
	if res := mustSync(t, tbl, false); !res.Rebuilt {
		t.Fatalf("%+v, want a rebuild", res)
	}
	quiet("our own 100k-element rebuild")
	noticed("nft flush ruleset after a large rebuild", "nft", "flush", "ruleset")
}

// TestKernelRefusedOwnerIsIsolated: the kernel refuses overlapping source
// ranges of one frontend. SetElements never lets them through, so the
// mirror is forced here; the sync applies every other owner's change and
// names the bad owner.
func TestKernelRefusedOwnerIsIsolated(t *testing.T) {
	ns := netnstest.New(t)
	tbl := kernelTable(t, ns, Config{})
	for i := range 10 {
		_ = tbl.SetElements(fmt.Sprintf("ns/svc-%d:p", i), bigSvc(i))
	}
	lb := netip.MustParseAddr("192.0.2.1")
	ranges := []Element{
		{Set: LoadBalancerFirewall, Addr: lb, Protocol: TCP, Port: 443},
		{Set: LoadBalancerSourceRanges, Addr: lb, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("10.0.0.0/8")},
	}
	_ = tbl.SetElements("ns/bad:https", ranges)
	mustSync(t, tbl, false)

	// An overlapping range, past normalisation and the overlap check.
	inner := Element{Set: LoadBalancerSourceRanges, Addr: lb, Protocol: TCP, Port: 443, Source: netip.MustParsePrefix("10.1.0.0/16")}
	tbl.mu.Lock()
	tbl.owners[packKey(inner)] = owners{first: holder{owner: "ns/bad:https", mark: inner.Mark}}
	tbl.byOwner["ns/bad:https"] = append(tbl.byOwner["ns/bad:https"], packKey(inner))
	tbl.dirty[packKey(inner)] = struct{}{}
	tbl.mu.Unlock()
	_ = tbl.SetElements("ns/svc-3:p", nil)
	_ = tbl.SetElements("ns/svc-30:p", bigSvc(30))

	res, err := tbl.Sync(false)
	var re *RefusedError
	if !errors.As(err, &re) || strings.Join(re.Owners, " ") != "ns/bad:https" {
		t.Fatalf("sync: %+v, %v; want a RefusedError naming ns/bad:https", res, err)
	}
	t.Logf("%v", err)
	requireSameElements(t, ns, tbl)
	listed := ns.Run(t, "nft", "list", "table", "inet", "nftvs")
	for what, want := range map[string]bool{"ns/svc-30:p": true, "ns/svc-3:p": false, "10.0.0.0/8": true, "10.1.0.0/16": false} {
		if strings.Contains(listed, what) != want {
			t.Errorf("%s listed: %v, want %v", what, !want, want)
		}
	}
}

// TestKernelRestartAdoptsTable: a new Table (a restarted nftvs) over a
// table programmed by an earlier one, as configured, writes nothing when
// it wants the same elements, and only the difference when it wants
// others; a table someone changed (a rule, a configuration set) or made
// with another configuration is rebuilt.
func TestKernelRestartAdoptsTable(t *testing.T) {
	ns := netnstest.New(t)
	cfg := Config{
		LocalTraffic:  LocalTraffic{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}, NodePodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:0:1::/64")}},
		ExcludeCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16"), netip.MustParsePrefix("fd00:50::/64")},
		DropInvalid:   true,
		MasqueradeAll: true,
	}
	restart := func(cfg Config, owners int, mutate func(*Table)) SyncResult {
		t.Helper()
		tbl := kernelTable(t, ns, cfg)
		for i := range owners {
			if err := tbl.SetElements(fmt.Sprintf("ns/svc-%d:p", i), everySet(i)); err != nil {
				t.Fatal(err)
			}
		}
		// A shared element: its comment names both owners.
		_ = tbl.SetElements("other/shared:p", everySet(0)[:1])
		if mutate != nil {
			mutate(tbl)
		}
		res := mustSync(t, tbl, true)
		requireSameElements(t, ns, tbl)
		return res
	}
	if res := restart(cfg, 5, nil); !res.Rebuilt || res.Adopted || res.NotAdopted != "no table yet" {
		t.Fatalf("first start: %+v, want a rebuild of a table that is not there", res)
	}
	before := ns.Run(t, "nft", "list", "table", "inet", "nftvs")

	if res := restart(cfg, 5, nil); !res.Adopted || res.Rebuilt || res.Added != 0 || res.Deleted != 0 {
		t.Fatalf("restart with nothing changed: %+v, want the table adopted and no element written", res)
	}
	if after := ns.Run(t, "nft", "list", "table", "inet", "nftvs"); after != before {
		t.Fatalf("restart changed the table:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// One owner gone while nftvs was down (its 24 elements), one changed
	// (its mark map element: deleted and added with the new mark).
	res := restart(cfg, 4, func(tbl *Table) {
		els := everySet(3)
		for i := range els {
			if els[i].Set == NodePortFWMarks {
				els[i].Mark |= 0x100
			}
		}
		_ = tbl.SetElements("ns/svc-3:p", els)
	})
	if !res.Adopted || res.Rebuilt || res.Added != 1 || res.Deleted != 24+1 {
		t.Fatalf("restart with one Service gone and one changed: %+v, want 1 added, 25 deleted", res)
	}

	// Someone adds a rule while nftvs is down: rebuilt, rule gone.
	ns.Run(t, "nft", "add", "rule", "inet", "nftvs", "input", "tcp", "dport", "22", "accept")
	if res := restart(cfg, 5, nil); res.Adopted || !res.Rebuilt || !strings.Contains(res.NotAdopted, "chain input has") {
		t.Fatalf("restart after a foreign rule: %+v, want a rebuild", res)
	}
	if listed := ns.Run(t, "nft", "list", "table", "inet", "nftvs"); strings.Contains(listed, "dport 22") {
		t.Fatalf("foreign rule survived the rebuild:\n%s", listed)
	}
	// A rule replaced in place, same count.
	ns.Run(t, "sh", "-c", `h=$(nft -a list chain inet nftvs forward | sed -n 's/.*accept # handle \([0-9]*\)$/\1/p' | head -1) && nft replace rule inet nftvs forward handle $h drop`)
	if res := restart(cfg, 5, nil); res.Adopted || !res.Rebuilt || !strings.Contains(res.NotAdopted, "chain forward: rule") {
		t.Fatalf("restart after a replaced rule: %+v, want a rebuild", res)
	}
	// A configuration set changed behind our back.
	ns.Run(t, "nft", "add", "element", "inet", "nftvs", "exclude-cidrs-v4", "{ 10.60.0.0/16 }")
	if res := restart(cfg, 5, nil); res.Adopted || !res.Rebuilt || !strings.Contains(res.NotAdopted, "exclude-cidrs-v4") {
		t.Fatalf("restart after a changed configuration set: %+v, want a rebuild", res)
	}
	// Another configuration: another rule set.
	other := cfg
	other.MasqueradeAll = false
	if res := restart(other, 5, nil); res.Adopted || !res.Rebuilt {
		t.Fatalf("restart with another configuration: %+v, want a rebuild", res)
	}
	// An element nftvs would never write (a source range that is no
	// prefix) is not adopted.
	ns.Run(t, "nft", "add", "element", "inet", "nftvs", "load-balancer-source-ranges-v4", "{ 10.96.9.9 . tcp . 443 . 10.1.0.1-10.1.0.6 }")
	if res := restart(other, 5, nil); res.Adopted || !res.Rebuilt || !strings.Contains(res.NotAdopted, "load-balancer-source-ranges-v4") {
		t.Fatalf("restart after a foreign element: %+v, want a rebuild", res)
	}
	if res := restart(other, 5, nil); !res.Adopted || res.Added+res.Deleted != 0 {
		t.Fatalf("restart after the rebuilds: %+v, want the table adopted", res)
	}
}
