package app

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nftvs/nftvs/internal/netnstest"
	"github.com/nftvs/nftvs/internal/takeover"
)

type nodeEvent struct{ eventType, reason, note string }

// kubeProxyState restores kube-proxy 1.36 IPVS mode's iptables rules (as
// iptables-nft writes them) and two of its ipsets in ns.
func kubeProxyState(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	for _, bin := range []string{"iptables-nft-restore", "iptables-nft-save", "ipset"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: install the Debian packages iptables and ipset", bin)
		}
	}
	rules, err := os.ReadFile("../../../internal/takeover/testdata/kube-proxy-ipvs.rules")
	if err != nil {
		t.Fatal(err)
	}
	// The rules need their ipsets: one of as many dimensions as the
	// match's directions.
	created := map[string]bool{}
	types := []string{"", "hash:ip", "hash:ip,port", "hash:ip,port,ip"}
	for _, f := range strings.Split(string(rules), "--match-set ")[1:] {
		name, dirs, _ := strings.Cut(f, " ")
		dirs, _, _ = strings.Cut(dirs, " ")
		if !created[name] {
			ns.Run(t, "ipset", "create", name, types[len(strings.Split(dirs, ","))])
			created[name] = true
		}
	}
	if out, err := ns.TryStdin(strings.NewReader(string(rules)), "iptables-nft-restore"); err != nil {
		t.Fatalf("iptables-nft-restore: %v\n%s", err, out)
	}
	ns.Run(t, "ipset", "create", "KUBE-6-CLUSTER-IP", "hash:ip,port", "family", "inet6")
}

// nftvs takes over from kube-proxy by default (a drop-in swap adds no
// flag); --takeover-kube-proxy=false leaves kube-proxy's state and says
// so in a Warning Event naming it. Before, nftvs said nothing and left it
// unless the flag was given.
func TestTakeOverKubeProxyByDefault(t *testing.T) {
	if !mustParse(t).TakeoverKubeProxy {
		t.Fatal("--takeover-kube-proxy is off by default")
	}
	ns := netnstest.New(t)
	kubeProxyState(t, ns)
	k := takeover.Kernel{Rules: takeover.NewNetfilter(ns.FD()), IPSets: takeover.IPSets{}}
	var events []nodeEvent
	record := func(eventType, reason, note string) { events = append(events, nodeEvent{eventType, reason, note}) }

	ns.Do(t, func() { takeOverKubeProxy(false, k, record) })
	if len(events) != 1 || events[0].eventType != "Warning" || events[0].reason != "KubeProxyLeftovers" {
		t.Fatalf("opted out: events %+v, want one Warning KubeProxyLeftovers", events)
	}
	for _, want := range []string{"14 iptables chains (ip filter KUBE-FORWARD, ", "9 jumps", "11 ipsets (KUBE-LOOP-BACK, KUBE-CLUSTER-IP, ", "--takeover-kube-proxy=false"} {
		if !strings.Contains(events[0].note, want) {
			t.Errorf("opted out: the Event does not say %q: %s", want, events[0].note)
		}
	}
	// The API server refuses a longer note (a dual-stack node has some 50
	// chains and ipsets of kube-proxy's: the first VM run lost its Event).
	if len(events[0].note) > 1024 {
		t.Errorf("opted out: the Event's note has %d characters, more than the API server's 1024", len(events[0].note))
	}
	if save := ns.Run(t, "iptables-nft-save"); !strings.Contains(save, ":KUBE-SERVICES") {
		t.Errorf("opted out, yet kube-proxy's chains are gone:\n%s", save)
	}

	events = nil
	ns.Do(t, func() { takeOverKubeProxy(true, k, record) })
	if len(events) != 0 {
		t.Errorf("takeover: events %+v, want none", events)
	}
	if save := ns.Run(t, "iptables-nft-save"); strings.Contains(save, "KUBE-SERVICES") || strings.Contains(save, "KUBE-IPVS-FILTER") {
		t.Errorf("kube-proxy's chains are still there after the takeover:\n%s", save)
	}
	if sets := ns.Run(t, "ipset", "list", "-n"); strings.Contains(sets, "KUBE-") {
		t.Errorf("kube-proxy's ipsets are still there after the takeover: %s", sets)
	}

	// Nothing left: opting out now says nothing.
	ns.Do(t, func() { takeOverKubeProxy(false, k, record) })
	if len(events) != 0 {
		t.Errorf("opted out on a clean node: events %+v, want none", events)
	}
}

// --cleanup removes kube-proxy's leftovers too, as kube-proxy's own
// --cleanup does; before, it removed only nftvs's own state.
func TestCleanupRemovesKubeProxyLeftovers(t *testing.T) {
	ns := netnstest.New(t)
	kubeProxyState(t, ns)
	var err error
	ns.Do(t, func() { err = runCleanup(mustParse(t, "--cleanup")) })
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if save := ns.Run(t, "iptables-nft-save"); strings.Contains(save, "KUBE-SERVICES") || strings.Contains(save, "KUBE-IPVS-FILTER") {
		t.Errorf("kube-proxy's chains are still there after --cleanup:\n%s", save)
	}
	if sets := ns.Run(t, "ipset", "list", "-n"); strings.Contains(sets, "KUBE-") {
		t.Errorf("kube-proxy's ipsets are still there after --cleanup: %s", sets)
	}
}

// The API server drops an Event whose note is over 1024 bytes: notes are
// cut, at a rune boundary.
func TestEventNoteFitsTheAPIServer(t *testing.T) {
	long := strings.Repeat("é", 600) // 1200 bytes
	got := eventNote(long)
	if len(got) > 1024 || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Errorf("eventNote: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
	if eventNote("short") != "short" {
		t.Errorf("a short note changed")
	}
}
