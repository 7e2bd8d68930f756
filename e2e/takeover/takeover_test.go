//go:build vmtest

package takeover_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/nftvs/nftvs/internal/takeover"
	"github.com/nftvs/nftvs/ipvs"
)

const (
	nodeName  = "node-a"
	namespace = "e2e"
	// waitTimeout bounds every wait for nftvs to program something;
	// kubeProxyTimeout kube-proxy's first IPVS-mode sync, which shells
	// out to iptables and ipset dozens of times per family (0.1-0.5 s per
	// process under emulation): 27-138 s measured, with other VMs
	// running.
	waitTimeout      = 90 * time.Second
	kubeProxyTimeout = 480 * time.Second
	clusterCIDR      = "10.244.0.0/16"
)

var vip = netip.MustParseAddrPort("10.96.100.10:80")

// env is what the test needs from outside; a missing piece fails the
// test with instructions (a skip would count as a pass).
type env struct {
	kubeconfig, nftvs, kubeProxy string
}

func requireEnv(t *testing.T) env {
	t.Helper()
	if os.Getenv("NFTVS_IN_VM") != "1" {
		t.Skip("KERNEL TEST SKIPPED: runs only inside the test VM, with a real API server; nothing was checked. Run:\n" +
			"  go build -o /tmp/with-apiserver ./e2e/controlplane/with-apiserver && go build -o /tmp/nftvs ./cmd/nftvs\n" +
			"  NFTVS_APISERVER_PORT=6452 NFTVS_NFTVS_BINARY=/tmp/nftvs go test -tags vmtest -count=1 -v -exec \"/tmp/with-apiserver $PWD/e2e/vm/vmexec\" ./e2e/takeover/")
	}
	e := env{kubeconfig: os.Getenv("NFTVS_KUBECONFIG"), nftvs: os.Getenv("NFTVS_NFTVS_BINARY"), kubeProxy: os.Getenv("NFTVS_KUBE_PROXY_BINARY")}
	if e.kubeconfig == "" {
		t.Fatal("NFTVS_KUBECONFIG is not set: run the test through e2e/controlplane/with-apiserver " +
			"(go test -exec \"/tmp/with-apiserver $PWD/e2e/vm/vmexec\"), which starts the API server and sets it")
	}
	if e.nftvs == "" {
		t.Fatal("NFTVS_NFTVS_BINARY is not set: build nftvs (go build -o /tmp/nftvs ./cmd/nftvs) and set NFTVS_NFTVS_BINARY=/tmp/nftvs")
	}
	if e.kubeProxy == "" {
		cache := os.Getenv("NFTVS_CACHE")
		if cache == "" {
			cache = "/var/cache/nftvs"
		}
		bins, _ := filepath.Glob(filepath.Join(cache, "bin", "v1.36.*", "kube-proxy"))
		if len(bins) == 0 {
			t.Fatalf("no kube-proxy 1.36 in %s/bin: run e2e/tools/build.sh, or set NFTVS_KUBE_PROXY_BINARY", cache)
		}
		e.kubeProxy = bins[len(bins)-1]
	}
	for _, f := range []string{e.kubeconfig, e.nftvs, e.kubeProxy} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v", err)
		}
	}
	// kube-proxy's IPVS mode shells out to these; the test reads with them.
	for _, bin := range []string{"iptables", "ip6tables", "iptables-save", "ip6tables-save", "ipset", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: install the Debian packages iptables, ipset and nftables on the host (the VM uses the host's root)", bin)
		}
	}
	return e
}

// proc is a proxy process with its log.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done
}

func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	must(t, "log file", err)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	must(t, "start "+name, p.cmd.Start())
	go func() { p.err = p.cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("--- %s log (last 60 lines) ---\n%s", name, p.tail(60))
		}
	})
	t.Logf("started %s: %s %s", name, bin, strings.Join(args, " "))
	return p
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.logText(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stop sends SIGTERM and waits (bounded), then kills.
func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		t.Logf("%s stopped on SIGTERM (%v)", p.name, p.err)
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Logf("%s did not stop within 30 s of SIGTERM: killed (%v)", p.name, p.err)
	}
}

// eventually polls check every 500 ms until it passes, within timeout;
// a proxy that exits ends the wait at once.
func eventually(t *testing.T, what string, p *proc, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s: %s exited (%v) before it was done: %v\n--- log ---\n%s", what, p.name, p.err, err, p.tail(60))
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Fatalf("%s: not done after %v: %v", what, timeout, err)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// save is iptables-save (or ip6tables-save) without comments and
// counters.
func save(t *testing.T, tool string) string {
	t.Helper()
	var b strings.Builder
	for _, l := range strings.Split(run(t, tool), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// kubeletLines are the lines of a save that belong to the kubelet's
// chains (declarations, their rules, jumps to them).
func kubeletLines(s string) []string {
	kubelet := []string{"KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-FIREWALL"}
	var out []string
	table := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
		for _, c := range kubelet {
			if c == "KUBE-FIREWALL" && table != "filter" {
				continue // nat KUBE-FIREWALL would be kube-proxy's
			}
			if strings.HasPrefix(l, ":"+c+" ") || strings.HasPrefix(l, "-A "+c+" ") || strings.HasSuffix(l, "-j "+c) {
				out = append(out, table+": "+l)
			}
		}
	}
	return out
}

// kubeProxyLeft lists what of kube-proxy's chains a save still has.
func kubeProxyLeft(s string) []string {
	var out []string
	table := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
		for _, c := range takeover.KubeProxyChains[table] {
			if strings.HasPrefix(l, ":"+c+" ") || strings.Contains(l, "-j "+c+" ") || strings.HasSuffix(l, "-j "+c) {
				out = append(out, table+": "+l)
			}
		}
	}
	return out
}

func ipsets(t *testing.T) []string {
	t.Helper()
	names := strings.Fields(run(t, "ipset", "list", "-n"))
	slices.Sort(names)
	return names
}

// virtualServer reads the ClusterIP's IPVS virtual server, with its
// counters (moby/ipvs: ipvs.Kernel does not read stats).
func virtualServer(h *mobyipvs.Handle) (*mobyipvs.Service, error) {
	svcs, err := h.GetServices()
	if err != nil {
		return nil, err
	}
	for _, s := range svcs {
		if s.Protocol == syscall.IPPROTO_TCP && s.Port == vip.Port() && s.Address.Equal(net.IP(vip.Addr().AsSlice())) {
			return s, nil
		}
	}
	return nil, fmt.Errorf("no virtual server TCP %s", vip)
}

// counted waits (10 s at most) until the virtual server's counters pass
// check, and returns it either way: the kernel folds its per-CPU counters
// into the ones it reports only every 2 seconds (IPVS's estimator).
func counted(t *testing.T, h *mobyipvs.Handle, what string, check func(*mobyipvs.Service) bool) *mobyipvs.Service {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := virtualServer(h)
		must(t, "virtual server "+what, err)
		if check(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func realServers(h *mobyipvs.Handle, s *mobyipvs.Service) ([]string, error) {
	ds, err := h.GetDestinations(s)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range ds {
		out = append(out, fmt.Sprintf("%s:%d weight %d", d.Address, d.Port, d.Weight))
	}
	slices.Sort(out)
	return out, nil
}

// kubeletState makes what the kubelet makes in iptables (1.36,
// pkg/kubelet/kubelet_network_linux.go): the hint and canary chains, and
// the filter KUBE-FIREWALL with its martian-packet rule and jumps.
func kubeletState(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"iptables", "ip6tables"} {
		run(t, tool, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
		for _, table := range []string{"mangle", "nat", "filter"} {
			run(t, tool, "-t", table, "-N", "KUBE-KUBELET-CANARY")
		}
	}
	run(t, "iptables", "-t", "filter", "-N", "KUBE-FIREWALL")
	run(t, "iptables", "-t", "filter", "-A", "KUBE-FIREWALL", "!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8",
		"-m", "comment", "--comment", "block incoming localnet connections",
		"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
	run(t, "iptables", "-t", "filter", "-I", "OUTPUT", "-j", "KUBE-FIREWALL")
	run(t, "iptables", "-t", "filter", "-I", "INPUT", "-j", "KUBE-FIREWALL")
}

// foreignTable is someone else's nftables table, which must not change.
const foreignTable = `table inet foreign {
	set blocked {
		type ipv4_addr
		elements = { 192.0.2.1 }
	}
	chain input {
		type filter hook input priority 10; policy accept;
		ip saddr @blocked counter drop
	}
}
`

func apiObjects(t *testing.T, ctx context.Context, c kubernetes.Interface, backends []*pod) {
	t.Helper()
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName}},
	}
	n, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	must(t, "create the Node", err)
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.2.15"}, {Type: v1.NodeHostName, Address: nodeName}}
	_, err = c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	must(t, "set the Node's addresses", err)
	_, err = c.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	must(t, "create the namespace", err)
	// The long-lived connection's Service, and two more whose virtual
	// servers carry what kube-proxy sets beyond the default: persistence
	// (sessionAffinity ClientIP: flag and timeout), and node ports on the
	// node's addresses.
	services := []*v1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: namespace}, Spec: v1.ServiceSpec{ClusterIP: vip.Addr().String()}},
		{ObjectMeta: metav1.ObjectMeta{Name: "sticky", Namespace: namespace}, Spec: v1.ServiceSpec{ClusterIP: "10.96.100.11",
			SessionAffinity: v1.ServiceAffinityClientIP}},
		{ObjectMeta: metav1.ObjectMeta{Name: "nodeport", Namespace: namespace}, Spec: v1.ServiceSpec{ClusterIP: "10.96.100.12",
			Type: v1.ServiceTypeNodePort}},
	}
	for _, svc := range services {
		svc.Spec.Ports = []v1.ServicePort{{Port: int32(vip.Port()), TargetPort: intstr.FromInt32(backendPort), Protocol: v1.ProtocolTCP}}
		if svc.Spec.Type == v1.ServiceTypeNodePort {
			svc.Spec.Ports[0].NodePort = 30080
		}
		_, err = c.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{})
		must(t, "create the Service "+svc.Name, err)
		createSlice(t, ctx, c, svc.Name, backends)
	}
}

// createSlice makes the Service's EndpointSlice: there is no
// controller-manager.
func createSlice(t *testing.T, ctx context.Context, c kubernetes.Interface, service string, backends []*pod) {
	t.Helper()
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: service + "-1", Namespace: namespace,
			Labels: map[string]string{discovery.LabelServiceName: service, discovery.LabelManagedBy: "e2e-takeover"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(""), Port: ptr.To[int32](backendPort), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, p := range backends {
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{
			Addresses:  []string{p.ip.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(nodeName),
		})
	}
	_, err := c.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{})
	must(t, "create the EndpointSlice of "+service, err)
}

// allVirtualServers is every IPVS virtual server with its scheduling and
// real servers, as ipvsadm -Ln would list it.
func allVirtualServers(t *testing.T, k *ipvs.Kernel) []string {
	t.Helper()
	vss, err := k.GetVirtualServers()
	must(t, "list IPVS virtual servers", err)
	var out []string
	for _, v := range vss {
		rss, err := k.GetRealServers(v.VSKey)
		must(t, "list real servers of "+v.String(), err)
		var rs []string
		for _, r := range rss {
			rs = append(rs, r.String())
		}
		slices.Sort(rs)
		out = append(out, v.String()+" -> "+strings.Join(rs, ", "))
	}
	slices.Sort(out)
	return out
}

// TestTakeoverFromKubeProxy switches a node from kube-proxy 1.36 (IPVS
// mode) to nftvs under a long-lived connection: first an nftvs that opted
// out (--takeover-kube-proxy=false), which leaves kube-proxy's state and
// says so, then one with the defaults, which takes over.
func TestTakeoverFromKubeProxy(t *testing.T) {
	e := requireEnv(t)
	begin := time.Now()
	// Both proxies run with the same --ipvs-scheduler: rr, or another
	// (mh also sets a flag on every virtual server) with
	// NFTVS_TAKEOVER_SCHEDULER.
	sched := os.Getenv("NFTVS_TAKEOVER_SCHEDULER")
	if sched == "" {
		sched = "rr"
	}
	node := rootNS(t)
	node.Sysctls(t, "net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0", "net/ipv4/ip_forward=1")
	backends := []*pod{addPod(t, node, "a", "10.244.1.2"), addPod(t, node, "b", "10.244.1.3")}
	for _, p := range backends {
		p.serveEcho(t)
	}
	client := addPod(t, node, "client", "10.244.1.10")

	rc, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	must(t, "kubeconfig", err)
	api, err := kubernetes.NewForConfig(rc)
	must(t, "API client", err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	apiObjects(t, ctx, api, backends)

	kubeletState(t)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(foreignTable)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
	foreignBefore := run(t, "nft", "list", "table", "inet", "foreign")

	ih, err := mobyipvs.New("")
	must(t, "IPVS handle", err)
	defer ih.Close()
	addrs, err := ipvs.NewNetlinkAddresses("")
	must(t, "rtnetlink", err)
	defer addrs.Close()

	// 1. kube-proxy in IPVS mode, until it serves the ClusterIP and has
	// written its iptables rules and ipsets.
	kp := start(t, "kube-proxy", e.kubeProxy, "--kubeconfig="+e.kubeconfig, "--proxy-mode=ipvs",
		"--hostname-override="+nodeName, "--cluster-cidr="+clusterCIDR, "--conntrack-max-per-core=0", "--ipvs-scheduler="+sched, "--v=2", "--vmodule=proxier=4", "--log-flush-frequency=1s")
	eventually(t, "kube-proxy programs the ClusterIP", kp, kubeProxyTimeout, func() error {
		s, err := virtualServer(ih)
		if err != nil {
			return err
		}
		rs, err := realServers(ih, s)
		if err != nil {
			return err
		}
		if len(rs) != 2 {
			return fmt.Errorf("real servers %v, want both backends", rs)
		}
		if !strings.Contains(save(t, "iptables-save"), "KUBE-CLUSTER-IP dst,dst") {
			return fmt.Errorf("no KUBE-CLUSTER-IP rule in iptables-save yet")
		}
		// The IPv6 proxier syncs on its own: wait for its filter too.
		if !strings.Contains(save(t, "ip6tables-save"), "KUBE-6-IPVS-IPS") {
			return fmt.Errorf("no KUBE-6-IPVS-IPS rule in ip6tables-save yet")
		}
		if _, err := exec.Command("ipset", "test", "KUBE-CLUSTER-IP", vip.Addr().String()+",tcp:80").CombinedOutput(); err != nil {
			return fmt.Errorf("ClusterIP not in ipset KUBE-CLUSTER-IP yet")
		}
		return nil
	})
	t.Logf("kube-proxy programmed the ClusterIP after %v", time.Since(begin).Round(time.Millisecond))
	for _, l := range strings.Split(kp.logText(), "\n") {
		// Where kube-proxy's time went.
		if strings.Contains(l, "syncProxyRules complete") || strings.Contains(l, "Caches are synced") || strings.Contains(l, "Using ipvs Proxier") {
			t.Logf("kube-proxy: %s", l)
		}
	}
	kpSave4, kpSave6 := save(t, "iptables-save"), save(t, "ip6tables-save")
	kpSets := ipsets(t)
	t.Logf("kube-proxy's iptables (ip):\n%s\nip6:\n%s\nipsets: %v", kpSave4, kpSave6, kpSets)
	if dir := os.Getenv("NFTVS_TAKEOVER_SAVE_DIR"); dir != "" {
		// To refresh internal/takeover's fixture from a real kube-proxy.
		must(t, "save", os.WriteFile(filepath.Join(dir, "kube-proxy-1.36-vm.rules"), []byte(kpSave4), 0o644))
		must(t, "save", os.WriteFile(filepath.Join(dir, "kube-proxy-1.36-vm.ip6.rules"), []byte(kpSave6), 0o644))
	}
	if left := kubeProxyLeft(kpSave4); len(left) == 0 {
		t.Fatalf("kube-proxy wrote none of its chains: the test would prove nothing:\n%s", kpSave4)
	}
	kubeletBefore := append(kubeletLines(kpSave4), kubeletLines(kpSave6)...)
	dummyBefore, err := netlinkLinkIndex(node, ipvs.DummyName)
	must(t, "kube-ipvs0", err)
	vipsBefore, err := addrs.ListAddresses(ipvs.DummyName)
	must(t, "kube-ipvs0 addresses", err)
	if !slices.Contains(vipsBefore, vip.Addr()) {
		t.Fatalf("kube-ipvs0 has %v, not the ClusterIP", vipsBefore)
	}

	// 2. The long-lived connection, plus a few short ones, through
	// kube-proxy's IPVS.
	long, err := client.dial(vip)
	must(t, "long-lived connection through kube-proxy", err)
	defer long.Close()
	longPod, err := long.ask("before-1")
	must(t, "long-lived connection through kube-proxy", err)
	for i := range 4 {
		if _, err := client.once(vip, fmt.Sprintf("short-%d", i)); err != nil {
			t.Fatalf("short connection %d through kube-proxy: %v", i, err)
		}
	}
	vsBefore := counted(t, ih, "under kube-proxy", func(s *mobyipvs.Service) bool { return s.Stats.Connections >= 5 })
	t.Logf("virtual server under kube-proxy: %s flags %#x, %d connections, %d packets in; long-lived connection on %s",
		vsBefore.SchedName, vsBefore.Flags, vsBefore.Stats.Connections, vsBefore.Stats.PacketsIn, longPod)

	reader, err := ipvs.NewKernel("")
	must(t, "IPVS reader", err)
	defer reader.Close()
	vssBefore := allVirtualServers(t, reader)
	t.Logf("kube-proxy's IPVS:\n%s", strings.Join(vssBefore, "\n"))
	sticky := "10.96.100.11:80 " + sched + " persistent"
	if sched == "mh" {
		sticky += "|flag-2" // kube-proxy's FlagSourceHash, nftvs's FlagMHPort
	}
	if !slices.ContainsFunc(vssBefore, func(s string) bool { return strings.Contains(s, sticky+" timeout 10800") }) ||
		!slices.ContainsFunc(vssBefore, func(s string) bool { return strings.Contains(s, "10.0.2.15:30080 "+sched) }) {
		t.Fatalf("kube-proxy's virtual servers lack the persistent ClusterIP or the node port: the test would not check them")
	}

	// kube-proxy's scrape, to compare nftvs's with, in the same run.
	kpScrape := scrapeProxy(t)

	// 3. kube-proxy stops (SIGTERM, no --cleanup): everything it made
	// stays, and the connection goes on.
	kp.stop(t)
	if got, err := long.ask("between"); err != nil || got != longPod {
		t.Fatalf("long-lived connection with no proxy running: %q, %v (want %s)", got, err, longPod)
	}

	// 4a. nftvs opted out (--takeover-kube-proxy=false) leaves
	// kube-proxy's chains and ipsets, and says so: a warning and a
	// Warning Event naming them.
	optOut := start(t, "nftvs-opted-out", e.nftvs, "--kubeconfig="+e.kubeconfig, "--hostname-override="+nodeName,
		"--cluster-cidr="+clusterCIDR, "--ipvs-scheduler="+sched, "--takeover-kube-proxy=false", "--v=2")
	eventually(t, "opted-out nftvs names kube-proxy's leftovers in an Event", optOut, waitTimeout, func() error {
		evs, err := api.EventsV1().Events("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Reason == "KubeProxyLeftovers" && ev.Type == "Warning" && strings.Contains(ev.Note, "iptables chains (ip filter KUBE-") &&
				strings.Contains(ev.Note, "ipsets (KUBE-") && ev.Regarding.Kind == "Node" {
				return nil
			}
		}
		return fmt.Errorf("no Warning KubeProxyLeftovers Event on the Node yet (%d events)", len(evs.Items))
	})
	optOut.stop(t)
	if l := optOut.logText(); !strings.Contains(l, "kube-proxy's IPVS mode left") || !strings.Contains(l, "ip nat KUBE-SERVICES") || !strings.Contains(l, "KUBE-6-CLUSTER-IP") {
		t.Errorf("opted-out nftvs did not log what kube-proxy left:\n%s", optOut.tail(30))
	}
	if left := kubeProxyLeft(save(t, "iptables-save")); len(left) == 0 {
		t.Errorf("opted-out nftvs removed kube-proxy's chains")
	}
	if got, err := long.ask("opted-out"); err != nil || got != longPod {
		t.Fatalf("long-lived connection after an opted-out nftvs: %q, %v (want %s)", got, err, longPod)
	}

	// 4. nftvs takes over: by default, as a drop-in swap adds no flag.
	takeoverStart := time.Now()
	nv := start(t, "nftvs", e.nftvs, "--kubeconfig="+e.kubeconfig, "--hostname-override="+nodeName,
		"--cluster-cidr="+clusterCIDR, "--ipvs-scheduler="+sched, "--v=2")
	eventually(t, "nftvs's first sync", nv, waitTimeout, func() error {
		if !strings.Contains(nv.logText(), "\"Synced\" full=true") {
			return fmt.Errorf("no full sync logged yet")
		}
		return nil
	})
	t.Logf("nftvs synced %v after it started", time.Since(takeoverStart).Round(time.Millisecond))
	compareScrapes(t, kpScrape, scrapeProxy(t))
	logText := nv.logText()
	for _, l := range strings.Split(logText, "\n") {
		if strings.Contains(l, "kube-proxy") || strings.Contains(l, "\"Synced\"") {
			t.Logf("nftvs: %s", l)
		}
	}
	if !strings.Contains(logText, "Took over from kube-proxy's IPVS mode") {
		t.Errorf("nftvs did not log the takeover")
	}
	if strings.Contains(logText, "Taking over from kube-proxy left") || strings.Contains(logText, "Taking over from kube-proxy: kept") {
		t.Errorf("nftvs reported a failed or partial takeover")
	}
	// The first sync adopted the virtual server: it added none.
	firstSync := ""
	for _, l := range strings.Split(logText, "\n") {
		if strings.Contains(l, "\"Synced\" full=true") {
			firstSync = l
			break
		}
	}
	if !strings.Contains(firstSync, `ipvs="virtual servers +0 ~0 -0, real servers +0 ~0 -0"`) {
		t.Errorf("nftvs's first sync wrote to IPVS, want every virtual and real server adopted as it was: %s", firstSync)
	}
	if vssAfter := allVirtualServers(t, reader); !slices.Equal(vssAfter, vssBefore) {
		t.Errorf("IPVS after nftvs's first sync:\n%s\nunder kube-proxy:\n%s", strings.Join(vssAfter, "\n"), strings.Join(vssBefore, "\n"))
	}

	// 5. The connection goes on, through the same virtual server.
	for i := range 3 {
		line := fmt.Sprintf("after-%d", i)
		if got, err := long.ask(line); err != nil || got != longPod {
			t.Errorf("long-lived connection after the takeover (%s): %q, %v; want an answer from %s", line, got, err, longPod)
		}
	}
	vsAfter := counted(t, ih, "after the takeover", func(s *mobyipvs.Service) bool { return s.Stats.PacketsIn > vsBefore.Stats.PacketsIn })
	for i := range 3 {
		if _, err := client.once(vip, fmt.Sprintf("new-%d", i)); err != nil {
			t.Errorf("new connection %d through nftvs: %v", i, err)
		}
	}
	vsNew := counted(t, ih, "after 3 new connections", func(s *mobyipvs.Service) bool {
		return s.Stats.Connections >= vsAfter.Stats.Connections+3
	})
	t.Logf("virtual server under nftvs: %s flags %#x, %d connections (was %d), %d packets in (was %d); %d after 3 new connections",
		vsAfter.SchedName, vsAfter.Flags, vsAfter.Stats.Connections, vsBefore.Stats.Connections,
		vsAfter.Stats.PacketsIn, vsBefore.Stats.PacketsIn, vsNew.Stats.Connections)
	// IPVS counters live and die with the virtual server: a delete and
	// re-create would have started them again from 0.
	if vsAfter.Stats.Connections < vsBefore.Stats.Connections || vsAfter.Stats.PacketsIn <= vsBefore.Stats.PacketsIn {
		t.Errorf("virtual server counters went back (connections %d → %d, packets in %d → %d): it was re-created",
			vsBefore.Stats.Connections, vsAfter.Stats.Connections, vsBefore.Stats.PacketsIn, vsAfter.Stats.PacketsIn)
	}
	if vsNew.Stats.Connections != vsAfter.Stats.Connections+3 {
		t.Errorf("virtual server counted %d connections after 3 new ones, want %d", vsNew.Stats.Connections, vsAfter.Stats.Connections+3)
	}
	if vsAfter.SchedName != vsBefore.SchedName || vsAfter.Flags != vsBefore.Flags || vsAfter.Timeout != vsBefore.Timeout {
		t.Errorf("virtual server changed: %s %#x %d → %s %#x %d", vsBefore.SchedName, vsBefore.Flags, vsBefore.Timeout,
			vsAfter.SchedName, vsAfter.Flags, vsAfter.Timeout)
	}
	dummyAfter, err := netlinkLinkIndex(node, ipvs.DummyName)
	must(t, "kube-ipvs0", err)
	vipsAfter, err := addrs.ListAddresses(ipvs.DummyName)
	must(t, "kube-ipvs0 addresses", err)
	if dummyAfter != dummyBefore || !slices.Equal(vipsAfter, vipsBefore) {
		t.Errorf("kube-ipvs0: index %d → %d, addresses %v → %v; want the same link with the same addresses",
			dummyBefore, dummyAfter, vipsBefore, vipsAfter)
	} else {
		t.Logf("kube-ipvs0 kept: index %d, addresses %v", dummyAfter, vipsAfter)
	}

	// 6. Only kube-proxy's things are gone.
	after4, after6 := save(t, "iptables-save"), save(t, "ip6tables-save")
	if left := append(kubeProxyLeft(after4), kubeProxyLeft(after6)...); len(left) > 0 {
		t.Errorf("kube-proxy's chains or jumps left:\n%s", strings.Join(left, "\n"))
	}
	var setsLeft []string
	for _, n := range ipsets(t) {
		if slices.Contains(takeover.KubeProxyIPSets(), n) {
			setsLeft = append(setsLeft, n)
		}
	}
	if len(setsLeft) > 0 {
		t.Errorf("kube-proxy's ipsets left: %v", setsLeft)
	}
	if kubeletAfter := append(kubeletLines(after4), kubeletLines(after6)...); !slices.Equal(kubeletAfter, kubeletBefore) {
		t.Errorf("the kubelet's chains changed:\n%s\nwere:\n%s", strings.Join(kubeletAfter, "\n"), strings.Join(kubeletBefore, "\n"))
	} else {
		t.Logf("the kubelet's chains are intact (%d lines)", len(kubeletAfter))
	}
	if got := run(t, "nft", "list", "table", "inet", "foreign"); got != foreignBefore {
		t.Errorf("the foreign nft table changed:\n%s\nwas:\n%s", got, foreignBefore)
	}
	t.Logf("after the takeover, ip:\n%s\nip6:\n%s\nipsets: %v", after4, after6, ipsets(t))

	// 7. Safe to repeat: a restart finds nothing, and the connection
	// still flows.
	nv.stop(t)
	nv2 := start(t, "nftvs-again", e.nftvs, "--kubeconfig="+e.kubeconfig, "--hostname-override="+nodeName,
		"--cluster-cidr="+clusterCIDR, "--ipvs-scheduler="+sched, "--v=2")
	eventually(t, "nftvs's second start", nv2, waitTimeout, func() error {
		if !strings.Contains(nv2.logText(), "\"Synced\" full=true") {
			return fmt.Errorf("no full sync logged yet")
		}
		return nil
	})
	if !strings.Contains(nv2.logText(), "none of its iptables-nft chains or ipsets found") {
		t.Errorf("second takeover did not find the node clean:\n%s", nv2.tail(30))
	}
	if got, err := long.ask("again"); err != nil || got != longPod {
		t.Errorf("long-lived connection after nftvs restarted: %q, %v; want %s", got, err, longPod)
	}
	t.Logf("test took %v", time.Since(begin).Round(time.Millisecond))
}

func netlinkLinkIndex(n *netNS, name string) (int, error) {
	l, err := n.NL.LinkByName(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}
