//go:build vmtest

package main

// Kernel tests of the command: --cleanup and --init-only against a real
// IPVS, inside the test VM (go test -tags vmtest -exec
// $PWD/e2e/vm/vmexec ./cmd/nftvs/). The test binary is the command: run
// with NFTVS_RUN_MAIN=1 it is nftvs, so each test runs it with `ip netns
// exec` in a network namespace of its own.

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nftvs/nftvs/cmd/nftvs/app"
	"github.com/nftvs/nftvs/internal/netnstest"
	"github.com/nftvs/nftvs/nft"
)

func TestMain(m *testing.M) {
	if os.Getenv("NFTVS_RUN_MAIN") == "1" {
		os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func requireVM(t *testing.T) *netnstest.NS {
	t.Helper()
	if os.Getenv("NFTVS_IN_VM") != "1" {
		t.Skip("KERNEL TEST SKIPPED: runs only inside the test VM (go test -tags vmtest -exec $PWD/e2e/vm/vmexec ./cmd/nftvs/); nothing was checked")
	}
	return netnstest.New(t)
}

// nftvs runs the command in ns and returns its output and exit code.
func nftvs(t *testing.T, ns *netnstest.NS, args ...string) (string, int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, exe}, args...)...)
	cmd.Env = append(os.Environ(), "NFTVS_RUN_MAIN=1")
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run nftvs %q: %v", args, err)
	}
	return string(out), code
}

// programTable puts a real nftvs table, with an element, in ns.
func programTable(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	table, err := nft.New(nft.Config{}, nft.WithNetNS(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	if err := table.SetElements("default/kubernetes:https", []nft.Element{
		{Set: nft.ClusterIPs, Addr: netip.MustParseAddr("10.96.0.1"), Protocol: nft.TCP, Port: 443},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := table.Sync(true); err != nil {
		t.Fatalf("program the nftvs table: %v", err)
	}
}

// --cleanup removes what nftvs owns, and only that: the nftvs table (not
// a foreign one), kube-ipvs0 (not another link), every IPVS virtual
// server outside --ipvs-exclude-cidrs (fwmark ones in nftvs's mark space
// included; keepalived's are not nftvs's).
func TestCleanup(t *testing.T) {
	ns := requireVM(t)
	ns.Run(t, "ip", "link", "add", "kube-ipvs0", "type", "dummy")
	ns.Run(t, "ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0")
	ns.Run(t, "ip", "link", "add", "keep0", "type", "dummy")
	ns.Run(t, "ipvsadm", "-A", "-t", "10.96.0.1:443", "-s", "rr")
	ns.Run(t, "ipvsadm", "-a", "-t", "10.96.0.1:443", "-r", "10.244.0.5:6443", "-m")
	ns.Run(t, "ipvsadm", "-A", "-u", "[fd00:96::a]:53", "-s", "rr")
	// nftvs's fwmark of node port 30080/TCP (30080<<16 | TCP<<12 | the
	// masquerade bit), and keepalived's mark 7.
	ns.Run(t, "ipvsadm", "-A", "-f", "1971343360", "-s", "rr")
	ns.Run(t, "ipvsadm", "-A", "-f", "7", "-s", "wrr")
	ns.Run(t, "ipvsadm", "-A", "-t", "192.168.99.1:80", "-s", "wrr")
	ns.Run(t, "ipvsadm", "-a", "-t", "192.168.99.1:80", "-r", "192.168.99.10:80", "-m")
	programTable(t, ns)
	ns.Run(t, "nft", "add", "table", "inet", "foreign")
	ns.Run(t, "nft", "add", "chain", "inet", "foreign", "input", "{ type filter hook input priority 0; }")

	out, code := nftvs(t, ns, "--cleanup", "--ipvs-exclude-cidrs=192.168.99.0/24")
	if code != 0 {
		t.Fatalf("nftvs --cleanup exited %d:\n%s", code, out)
	}
	ipvs := ns.Run(t, "ipvsadm", "-Ln")
	if !strings.Contains(ipvs, "192.168.99.1:80") || !strings.Contains(ipvs, "192.168.99.10:80") {
		t.Errorf("the virtual server inside --ipvs-exclude-cidrs (or its real server) is gone:\n%s", ipvs)
	}
	for _, gone := range []string{"10.96.0.1:443", "fd00:96::a", "FWM  1971343360"} {
		if strings.Contains(ipvs, gone) {
			t.Errorf("virtual server %s is still there:\n%s", gone, ipvs)
		}
	}
	if !strings.Contains(ipvs, "FWM  7 wrr") {
		t.Errorf("keepalived's fwmark virtual server is gone:\n%s", ipvs)
	}
	if out, err := ns.Try("ip", "link", "show", "kube-ipvs0"); err == nil {
		t.Errorf("kube-ipvs0 is still there:\n%s", out)
	}
	ns.Run(t, "ip", "link", "show", "keep0")
	tables := ns.Run(t, "nft", "list", "tables")
	if strings.Contains(tables, "table inet nftvs") || !strings.Contains(tables, "table inet foreign") {
		t.Errorf("tables after cleanup:\n%s", tables)
	}

	// Nothing left: a second cleanup succeeds too.
	if out, code := nftvs(t, ns, "--cleanup"); code != 0 {
		t.Errorf("second --cleanup exited %d:\n%s", code, out)
	}
	if ipvs := ns.Run(t, "ipvsadm", "-Ln"); strings.Contains(ipvs, "192.168.99.1:80") || !strings.Contains(ipvs, "FWM  7 wrr") {
		t.Errorf("without --ipvs-exclude-cidrs the excluded virtual server stays, or keepalived's fwmark went:\n%s", ipvs)
	}
}

// --init-only sets IPVS mode's sysctls (and conntrack's, and the IPVS
// timeouts), probes the scheduler and exits; it needs no API server.
func TestInitOnly(t *testing.T) {
	ns := requireVM(t)
	out, code := nftvs(t, ns, "--init-only", "--ipvs-strict-arp", "--ipvs-tcp-timeout=900s", "--ipvs-udp-timeout=90s",
		"--ipvs-scheduler=mh",
		// nf_conntrack_max is read-only outside the initial namespace.
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=2h")
	if code != 0 {
		t.Fatalf("nftvs --init-only exited %d:\n%s", code, out)
	}
	for name, want := range map[string]string{
		"net.ipv4.vs.conntrack":                              "1",
		"net.ipv4.vs.expire_nodest_conn":                     "1",
		"net.ipv4.vs.expire_quiescent_template":              "1",
		"net.ipv4.ip_forward":                                "1",
		"net.ipv4.conf.all.arp_ignore":                       "1",
		"net.ipv4.conf.all.arp_announce":                     "2",
		"net.netfilter.nf_conntrack_tcp_timeout_established": "7200",
	} {
		if got := strings.TrimSpace(ns.Run(t, "sysctl", "-n", name)); got != want {
			t.Errorf("%s = %s, want %s", name, got, want)
		}
	}
	if got := ns.Run(t, "ipvsadm", "-L", "--timeout"); !strings.Contains(got, "900 120 90") { // tcp tcpfin (kernel default) udp
		t.Errorf("IPVS timeouts: %s", got)
	}
	if got := ns.Run(t, "ipvsadm", "-Ln"); strings.Contains(got, "TCP") {
		t.Errorf("the scheduler probe left a virtual server:\n%s", got)
	}
}

// IPv6 forwarding is never set, as kube-proxy 1.36 never sets it:
// setting net.ipv6.conf.all.forwarding turns off Router Advertisements on
// SLAAC nodes. A dual-stack cluster gets a warning instead. A new network
// namespace starts with it off.
func TestInitOnlyIPv6Forwarding(t *testing.T) {
	ns := requireVM(t)
	const forwarding = "net.ipv6.conf.all.forwarding"
	if out, code := nftvs(t, ns, "--init-only", "--conntrack-max-per-core=0", "--cluster-cidr=10.244.0.0/16"); code != 0 {
		t.Fatalf("nftvs --init-only exited %d:\n%s", code, out)
	}
	if got := strings.TrimSpace(ns.Run(t, "sysctl", "-n", forwarding)); got != "0" {
		t.Errorf("IPv4-only cluster: %s = %s, want it left at 0", forwarding, got)
	}
	out, code := nftvs(t, ns, "--init-only", "--conntrack-max-per-core=0", "--cluster-cidr=10.244.0.0/16,fd00:244::/56")
	if code != 0 {
		t.Fatalf("nftvs --init-only exited %d:\n%s", code, out)
	}
	if got := strings.TrimSpace(ns.Run(t, "sysctl", "-n", forwarding)); got != "0" {
		t.Errorf("dual-stack cluster: %s = %s, want it left at 0", forwarding, got)
	}
	if !strings.Contains(out, "IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0)") {
		t.Errorf("dual-stack cluster without IPv6 forwarding: no warning in\n%s", out)
	}
	// Set by the node's administrator: no warning.
	ns.Run(t, "sysctl", "-qw", forwarding+"=1")
	if out, _ := nftvs(t, ns, "--init-only", "--conntrack-max-per-core=0", "--cluster-cidr=10.244.0.0/16,fd00:244::/56"); strings.Contains(out, "IPv6 forwarding is off") {
		t.Errorf("IPv6 forwarding on, yet a warning:\n%s", out)
	}
}

// A scheduler the kernel cannot load stops nftvs with an error naming the
// module.
func TestInitOnlyMissingScheduler(t *testing.T) {
	ns := requireVM(t)
	out, code := nftvs(t, ns, "--init-only", "--conntrack-max-per-core=0", "--ipvs-scheduler=nosuch")
	if code == 0 || !strings.Contains(out, "ip_vs_nosuch") {
		t.Errorf("exit %d, output:\n%s\nwant an error naming ip_vs_nosuch", code, out)
	}
}

// Bad flags are refused before anything is touched.
func TestBadFlagsTouchNothing(t *testing.T) {
	ns := requireVM(t)
	ns.Run(t, "ip", "link", "add", "kube-ipvs0", "type", "dummy")
	ns.Run(t, "ipvsadm", "-A", "-t", "10.96.0.1:443", "-s", "rr")
	for _, args := range [][]string{
		{"--cleanup", "--companion=iptables"},
		{"--cleanup", "--proxy-mode=iptables"},
		{"--cleanup", "--ipvs-exclude-cidrs=nope"},
		{"--init-only", "--ipvs-sync-period=0"},
	} {
		if out, code := nftvs(t, ns, args...); code == 0 {
			t.Errorf("%q exited 0:\n%s", args, out)
		}
	}
	ns.Run(t, "ip", "link", "show", "kube-ipvs0")
	if got := ns.Run(t, "ipvsadm", "-Ln"); !strings.Contains(got, "10.96.0.1:443") {
		t.Errorf("a refused command touched IPVS:\n%s", got)
	}
}
