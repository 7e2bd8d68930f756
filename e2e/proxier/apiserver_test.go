//go:build vmtest

package proxier_test

// TestNftvsAgainstAPIServer is the end-to-end lane of the nftvs command:
// the real binary, running in the VM as root with kube-proxy-style flags
// and a ServiceAccount token bound only to deploy/'s ClusterRole, watches
// a real kube-apiserver on the host (e2e/controlplane/with-apiserver) and
// programs real IPVS and nftables. Services and EndpointSlices are created,
// changed and deleted through the API; pods and clients are the network
// namespaces of topology_test.go.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

// Addresses of the API server as the guest sees it (e2e/controlplane).
const guestAPIServer = "https://10.0.2.100:6443"

// apiEnv is what with-apiserver and the Makefile hand the guest.
type apiEnv struct {
	kubeconfig string // admin
	binary     string // the nftvs binary
	repo       string // the repository root, for deploy/
}

func requireAPIServer(t *testing.T) apiEnv {
	t.Helper()
	requireVM(t)
	e := apiEnv{kubeconfig: os.Getenv("NFTVS_KUBECONFIG"), binary: os.Getenv("NFTVS_NFTVS_BINARY")}
	if e.kubeconfig == "" || e.binary == "" {
		t.Fatalf("this test needs a real API server and the nftvs binary: run it through `make test-vm`, or\n"+
			"  go build -o bin/ ./cmd/nftvs ./e2e/controlplane/with-apiserver &&\n"+
			"  NFTVS_NFTVS_BINARY=$PWD/bin/nftvs go test -tags vmtest -exec \"$PWD/bin/with-apiserver $PWD/e2e/vm/vmexec\" ./e2e/proxier/\n"+
			"(NFTVS_KUBECONFIG=%q NFTVS_NFTVS_BINARY=%q)", e.kubeconfig, e.binary)
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for ; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "deploy", "clusterrole.yaml")); err == nil {
			e.repo = dir
			break
		}
		if dir == filepath.Dir(dir) {
			t.Fatal("repository root with deploy/clusterrole.yaml not found above the working directory")
		}
	}
	return e
}

// clientFor is a client of the kubeconfig at path.
func clientFor(t *testing.T, path string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("kubeconfig %s: %v", path, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfigOrDie(cfg)
}

// decodeFile reads one YAML object of deploy/ into obj.
func decodeFile(t *testing.T, path string, obj any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, obj); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// nftvsIdentity applies deploy/'s ServiceAccount, ClusterRole and
// ClusterRoleBinding (the role possibly edited by mutate, under another
// name), asks the API server for a token of the ServiceAccount and
// returns a kubeconfig for the guest that uses it: nftvs then has exactly
// the permissions an admin who applied deploy/ grants.
func nftvsIdentity(t *testing.T, e apiEnv, admin kubernetes.Interface, suffix string, mutate func(*rbacv1.ClusterRole)) string {
	t.Helper()
	ctx := context.Background()
	var (
		sa      v1.ServiceAccount
		role    rbacv1.ClusterRole
		binding rbacv1.ClusterRoleBinding
	)
	decodeFile(t, filepath.Join(e.repo, "deploy", "serviceaccount.yaml"), &sa)
	decodeFile(t, filepath.Join(e.repo, "deploy", "clusterrole.yaml"), &role)
	decodeFile(t, filepath.Join(e.repo, "deploy", "clusterrolebinding.yaml"), &binding)
	if sa.Namespace == "" {
		sa.Namespace = "kube-system" // kustomization.yaml sets it
	}
	sa.Name += suffix
	role.Name += suffix
	binding.Name += suffix
	binding.RoleRef.Name = role.Name
	for i := range binding.Subjects {
		binding.Subjects[i].Name = sa.Name
		binding.Subjects[i].Namespace = sa.Namespace
	}
	if mutate != nil {
		mutate(&role)
	}
	if _, err := admin.CoreV1().ServiceAccounts(sa.Namespace).Create(ctx, &sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create ServiceAccount: %v", err)
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ClusterRole %s: %v", role.Name, err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ClusterRoleBinding %s: %v", binding.Name, err)
	}
	exp := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(sa.Namespace).CreateToken(ctx, sa.Name,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", sa.Namespace, sa.Name, err)
	}
	path := filepath.Join(t.TempDir(), "nftvs"+suffix+".kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: nftvs
  user: {token: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: nftvs}
current-context: e2e
`, guestAPIServer, tr.Status.Token)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// nftvsProcess is one run of the nftvs binary in the node namespace.
type nftvsProcess struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

func startNftvs(t *testing.T, bin, logPath string, args ...string) *nftvsProcess {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "=== %s nftvs %s\n", time.Now().Format("15:04:05.000"), strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start nftvs: %v", err)
	}
	p := &nftvsProcess{cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	t.Cleanup(func() { p.signal(syscall.SIGKILL) })
	return p
}

func (p *nftvsProcess) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

// wait waits up to timeout for the process to exit and returns its exit
// code (-1: still running, killed now).
func (p *nftvsProcess) wait(timeout time.Duration) int {
	select {
	case <-p.done:
	case <-time.After(timeout):
		// The Go runtime prints every goroutine on SIGQUIT: the log
		// then shows where it hung.
		p.signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.signal(syscall.SIGKILL)
			<-p.done
		}
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// tail is the end of the log of every run so far.
func (p *nftvsProcess) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// httpGet fetches url from the node namespace.
func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metricValue is the sum of the samples of name (with any labels).
func metricValue(body, name string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? ([0-9.e+-]+)$`)
	var sum float64
	found := false
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// echoServer answers every line on a TCP connection with "NAME LINE", for
// as long as the connection lives.
func echoServer(t *testing.T, n *netNS, name string, port int) {
	t.Helper()
	var ln net.Listener
	if err := n.do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("%s: listen %d: %v", n.Name, port, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, name+" "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// echoConn is a long-lived connection to an echoServer.
type echoConn struct {
	c net.Conn
	r *bufio.Reader
}

func (n *netNS) dialEcho(dst netip.AddrPort) (*echoConn, error) {
	var c net.Conn
	err := n.do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), ioTimeout)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &echoConn{c: c, r: bufio.NewReader(c)}, nil
}

// roundTrip sends one line and returns who answered it.
func (e *echoConn) roundTrip(msg string) (string, error) {
	_ = e.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(e.c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := e.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	who, got, _ := strings.Cut(strings.TrimSpace(line), " ")
	if got != msg {
		return who, fmt.Errorf("echo %q, want %q", got, msg)
	}
	return who, nil
}

func TestNftvsAgainstAPIServer(t *testing.T) {
	e := requireAPIServer(t)
	top := t
	begin := time.Now()
	ctx := context.Background()
	admin := clientFor(t, e.kubeconfig)
	tb := newTestbed(t)
	cl := tb.addPod(t, "cl", nodeName, "10.244.1.99", "fd00:244:1::99")
	a1 := tb.addPod(t, "a1", nodeName, "10.244.1.11", "fd00:244:1::11")
	a2 := tb.addPod(t, "a2", nodeName, "10.244.1.12", "fd00:244:1::12")
	b1 := tb.addPod(t, "b1", remoteNode, "10.244.2.21", "fd00:244:2::21")
	const echoPort = 9090
	echoServer(t, a1.ns, a1.name, echoPort)

	// This node, as the kubelet would register it.
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName}},
		Spec: v1.NodeSpec{PodCIDRs: []string{podCIDR4.String(), podCIDR6.String()}}}
	created, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Node: %v", err)
	}
	created.Status.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: tb.ext0IP4.String()},
		{Type: v1.NodeInternalIP, Address: tb.ext0IP6.String()},
		{Type: v1.NodeHostName, Address: nodeName},
	}
	if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("Node status: %v", err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	// Whatever happens, the next test in this VM starts from a clean
	// kernel: nftvs --cleanup (itself tested below).
	t.Cleanup(func() {
		out, err := exec.Command(e.binary, "--cleanup").CombinedOutput()
		if err != nil {
			t.Errorf("final nftvs --cleanup: %v\n%s", err, out)
		}
	})
	kubeconfig := nftvsIdentity(t, e, admin, "", nil)
	logPath := filepath.Join(t.TempDir(), "nftvs.log")
	// A kube-proxy command line, as kubeadm's DaemonSet has it plus the
	// flags this node needs.
	args := []string{
		"--kubeconfig=" + kubeconfig, "--hostname-override=" + nodeName,
		"--proxy-mode=ipvs", "--cluster-cidr=10.244.0.0/16,fd00:244::/32",
		"--ipvs-min-sync-period=100ms", "--ipvs-sync-period=30s", "--ipvs-scheduler=rr",
		"--conntrack-tcp-be-liberal", "--ipvs-service-metrics", "-v=2",
	}
	reader, err := ipvs.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reader.Close)
	c := &cluster{client: admin, ipvs: reader}
	p := startNftvs(t, e.binary, logPath, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nftvs log (last 80 lines):\n%s\nipvsadm -Ln:\n%s", p.tail(80), command("ipvsadm", "-Ln"))
		}
	})
	var results []result
	run := func(name string, fn func(t *testing.T)) {
		start := time.Now()
		ok := t.Run(name, fn)
		results = append(results, result{name, ok})
		t.Logf("%s: %v", name, time.Since(start).Round(time.Millisecond))
	}
	defer func() {
		var b strings.Builder
		for _, r := range results {
			mark := "ok  "
			if !r.ok {
				mark = "FAIL"
			}
			fmt.Fprintf(&b, "  %s %s\n", mark, r.name)
		}
		t.Logf("nftvs binary against kube-apiserver, %v:\n%s", time.Since(begin).Round(time.Second), b.String())
	}()

	run("healthz, livez and metrics after the first sync", func(t *testing.T) {
		c.eventually(t, "/healthz 200", func() error {
			code, body, err := httpGet("http://127.0.0.1:10256/healthz")
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			var h map[string]any
			if err := json.Unmarshal([]byte(body), &h); err != nil {
				return fmt.Errorf("body %q: %v", body, err)
			}
			if _, ok := h["lastUpdated"]; !ok {
				return fmt.Errorf("body %q has no lastUpdated", body)
			}
			return nil
		})
		if code, body, err := httpGet("http://127.0.0.1:10256/livez"); err != nil || code != http.StatusOK {
			t.Errorf("/livez: %d %s %v", code, body, err)
		}
		c.eventually(t, "a sync counted in /metrics", func() error {
			_, body, err := httpGet("http://127.0.0.1:10249/metrics")
			if err != nil {
				return err
			}
			for _, m := range []string{"kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_sync_proxy_rules_last_timestamp_seconds"} {
				if v, ok := metricValue(body, m); !ok || v <= 0 {
					return fmt.Errorf("%s = %v (present %v)", m, v, ok)
				}
			}
			return nil
		})
		if code, body, _ := httpGet("http://127.0.0.1:10249/proxyMode"); code != http.StatusOK || strings.TrimSpace(body) != "ipvs" {
			t.Errorf("/proxyMode: %d %q, want ipvs", code, body)
		}
		if !strings.Contains(command("ip", "link", "show", ipvs.DummyName), "DOWN") {
			t.Errorf("%s is not there, or up:\n%s", ipvs.DummyName, command("ip", "link", "show", ipvs.DummyName))
		}
	})

	run("a Starting Event on the Node", func(t *testing.T) {
		c.eventually(t, "the Starting event", func() error {
			evs, err := admin.EventsV1().Events("").List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, ev := range evs.Items {
				if ev.Reason == "Starting" && ev.Regarding.Kind == "Node" && ev.Regarding.Name == nodeName {
					return nil
				}
			}
			return fmt.Errorf("none among %d events", len(evs.Items))
		})
	})

	web := service("web", "10.96.5.10", withDNS)
	run("ClusterIP created through the API carries TCP and UDP", func(t *testing.T) {
		c.apply(t, web, slice4(web, readyEP(a1), readyEP(b1)))
		c.waitIPVS(t, tcpKey("10.96.5.10", 80), weights(podTCPPort, false, 1, a1, b1))
		c.waitIPVS(t, udpKey("10.96.5.10", 53), weights(podUDPPort, false, 1, a1, b1))
		check(t, "cl → 10.96.5.10:80/TCP", cl.ns.askN("tcp", ap("10.96.5.10", 80), 6),
			expect{only: []*pod{a1, b1}, seeAll: []*pod{a1, b1}, src: []netip.Addr{cl.v4}})
		check(t, "cl → 10.96.5.10:53/UDP", cl.ns.askN("udp", ap("10.96.5.10", 53), 4),
			expect{only: []*pod{a1, b1}, src: []netip.Addr{cl.v4}})
	})

	run("endpoints changed through the API", func(t *testing.T) {
		c.apply(t, web, slice4(web, readyEP(a2)))
		c.waitIPVS(t, tcpKey("10.96.5.10", 80), weights(podTCPPort, false, 1, a2))
		check(t, "cl → 10.96.5.10:80/TCP after the change", cl.ns.askN("tcp", ap("10.96.5.10", 80), 4),
			expect{only: []*pod{a2}})
	})

	np := service("np", "10.96.5.11", nodePort(30580))
	run("NodePort from outside on the node IP", func(t *testing.T) {
		c.apply(t, np, slice4(np, readyEP(a1), readyEP(b1)))
		c.waitIPVS(t, ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30580}, weights(podTCPPort, false, 1, a1, b1))
		check(t, "out1 → node:30580/TCP", tb.out1.askN("tcp", netip.AddrPortFrom(tb.ext0IP4, 30580), 4),
			expect{only: []*pod{a1, b1}, src: nodeSources(t, tb.ext0IP4)})
	})

	lb := service("lb", "10.96.5.12", loadBalancer(30581), sourceRanges("192.168.100.0/24"))
	run("LoadBalancer IP from the status subresource, with source ranges", func(t *testing.T) {
		c.apply(t, lb, slice4(lb, readyEP(a1)))
		got, err := admin.CoreV1().Services(namespace).Get(ctx, "lb", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.50"}}
		if _, err := admin.CoreV1().Services(namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("LoadBalancer status: %v", err)
		}
		c.waitIPVS(t, tcpKey("203.0.113.50", 80), weights(podTCPPort, false, 1, a1))
		check(t, "out1 (in range) → 203.0.113.50:80", tb.out1.askN("tcp", ap("203.0.113.50", 80), 3),
			expect{only: []*pod{a1}})
		expectFailure(t, "out2 (outside the range) → 203.0.113.50:80", tb.out2, "tcp", ap("203.0.113.50", 80), "no answer")
	})

	run("scheduler annotation, its Warning Event, service metrics and nftvs explain, through the binary", func(t *testing.T) {
		sched := service("sched", "10.96.5.20", annotate(proxier.AnnotationScheduler, "sh", proxier.AnnotationSchedulerFlags, "sh-port"))
		key := tcpKey("10.96.5.20", 80)
		c.apply(t, sched, slice4(sched, readyEP(a1), readyEP(b1)))
		c.waitIPVS(t, key, weights(podTCPPort, false, 1, a1, b1))
		c.waitScheduling(t, key, "sh", ipvs.FlagSched2)
		check(t, "cl → 10.96.5.20:80 (sh sh-port)", cl.ns.askN("tcp", ap("10.96.5.20", 80), 4), expect{only: []*pod{a1, b1}})
		const series = `nftvs_service_connections_total{namespace="e2e",port="http",service="sched"}`
		c.eventually(t, series+" counts the 4 connections", func() error {
			_, body, err := httpGet("http://127.0.0.1:10249/metrics")
			if err != nil {
				return err
			}
			if v, ok := metricValue(body, series); !ok || v < 4 {
				return fmt.Errorf("%s = %v (present %v)", series, v, ok)
			}
			return nil
		})

		bad := sched.DeepCopy()
		bad.Annotations = map[string]string{proxier.AnnotationScheduler: "fastest"}
		c.apply(t, bad)
		c.waitScheduling(t, key, "rr", 0)
		warnings := func() (int, string) {
			evs, err := admin.EventsV1().Events(namespace).List(ctx, metav1.ListOptions{})
			if err != nil {
				return 0, err.Error()
			}
			n, note := 0, ""
			for _, ev := range evs.Items {
				if ev.Reason == proxier.ReasonInvalidScheduler && ev.Regarding.Name == "sched" && ev.Type == v1.EventTypeWarning {
					n, note = n+1, ev.Note
				}
			}
			return n, note
		}
		c.eventually(t, "an InvalidScheduler Warning Event on e2e/sched", func() error {
			if n, note := warnings(); n != 1 || !strings.Contains(note, `unknown IPVS scheduler "fastest"`) {
				return fmt.Errorf("%d events, note %q", n, note)
			}
			return nil
		})

		out, err := exec.Command(e.binary, "explain", "e2e/sched").CombinedOutput()
		t.Logf("nftvs explain e2e/sched:\n%s", out)
		flat := strings.Join(strings.Fields(string(out)), " ")
		if err != nil {
			t.Errorf("nftvs explain: %v", err)
		}
		for _, want := range []string{"InvalidScheduler", "TCP 10.96.5.20:80 rr in IPVS: rr", `cluster-ips 10.96.5.20 . tcp . 80 in kernel, comment "e2e/sched:http/tcp"`} {
			if !strings.Contains(flat, want) {
				t.Errorf("nftvs explain lacks %q", want)
			}
		}
		if n, _ := warnings(); n != 1 {
			t.Errorf("%d InvalidScheduler events after a while, want 1", n)
		}
	})

	run("Service deleted through the API", func(t *testing.T) {
		if err := admin.CoreV1().Services(namespace).Delete(ctx, "np", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitGone(t, tcpKey("10.96.5.11", 80), ipvs.VSKey{Address: tb.ext0IP4, Protocol: ipvs.TCP, Port: 30580})
		expectFailure(t, "cl → deleted 10.96.5.11:80", cl.ns, "tcp", ap("10.96.5.11", 80), "")
	})

	echo := service("echo", "10.96.5.13")
	run("kill -9 and restart keep an established connection", func(t *testing.T) {
		c.apply(t, echo, echoSlice4(echo, echoPort, readyEP(a1)))
		c.waitIPVS(t, tcpKey("10.96.5.13", 80), rs{netip.AddrPortFrom(a1.v4, echoPort): 1})
		conn, err := cl.ns.dialEcho(ap("10.96.5.13", 80))
		if err != nil {
			t.Fatalf("connect to the echo Service: %v", err)
		}
		defer conn.c.Close()
		if who, err := conn.roundTrip("before"); err != nil || who != a1.name {
			t.Fatalf("before the restart: %q %v", who, err)
		}
		p.signal(syscall.SIGKILL)
		if code := p.wait(10 * time.Second); code == 0 {
			t.Errorf("nftvs exited 0 on SIGKILL?")
		}
		if who, err := conn.roundTrip("while-down"); err != nil || who != a1.name {
			t.Errorf("while nftvs is down: %q %v", who, err)
		}
		// A Service that got the API server's address onto kube-ipvs0
		// (before nftvs refused such Services) cut the node off its API
		// server: the new process frees it before it connects.
		api := netip.MustParseAddr("10.0.2.100")
		if out, err := exec.Command("ip", "addr", "add", api.String()+"/32", "dev", ipvs.DummyName).CombinedOutput(); err != nil {
			t.Fatalf("put the API server's address on %s: %v %s", ipvs.DummyName, err, out)
		}
		p = startNftvs(top, e.binary, logPath, args...) // outlives this subtest
		c.eventually(t, "/healthz 200 after the restart", func() error {
			code, body, err := httpGet("http://127.0.0.1:10256/healthz")
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
		// Wait for the restarted process's first sync: the metric is
		// per-process.
		c.eventually(t, "a sync by the new process", func() error {
			_, body, err := httpGet("http://127.0.0.1:10249/metrics")
			if err != nil {
				return err
			}
			if v, _ := metricValue(body, "kubeproxy_sync_proxy_rules_duration_seconds_count"); v < 1 {
				return errors.New("no sync yet")
			}
			return nil
		})
		for i := range 3 {
			msg := fmt.Sprintf("after-%d", i)
			if who, err := conn.roundTrip(msg); err != nil || who != a1.name {
				t.Errorf("after the restart: %q %v", who, err)
			}
		}
		check(t, "new connections after the restart", cl.ns.askN("tcp", ap("10.96.5.10", 80), 3), expect{only: []*pod{a2}})
		if got := command("ip", "-br", "addr", "show", "dev", ipvs.DummyName); strings.Contains(got, api.String()+"/") {
			t.Errorf("the API server's address is still on %s: %s", ipvs.DummyName, got)
		}
	})

	run("a Service asking for the API server's address is refused, with an Event", func(t *testing.T) {
		thief := service("api-thief", "10.96.5.14", externalIPs("10.0.2.100"), func(s *v1.Service) { s.Spec.Ports[0].Port = 6443 })
		c.apply(t, thief, slice4(thief, readyEP(a1)))
		c.waitIPVS(t, tcpKey("10.96.5.14", 6443), weights(podTCPPort, false, 1, a1))
		c.eventually(t, "a RefusedAddress Event on the Service", func() error {
			evs, err := admin.EventsV1().Events(namespace).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, ev := range evs.Items {
				if ev.Reason == "RefusedAddress" && ev.Regarding.Name == "api-thief" && strings.Contains(ev.Note, "API server") {
					return nil
				}
			}
			return fmt.Errorf("none among %d events", len(evs.Items))
		})
		if got := command("ipvsadm", "-Ln"); strings.Contains(got, "10.0.2.100:6443") {
			t.Errorf("a virtual server on the API server's address:\n%s", got)
		}
		c.eventually(t, "/healthz 200 with the thief around", func() error {
			code, body, err := httpGet("http://127.0.0.1:10256/healthz")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%d %s %v", code, body, err)
			}
			return nil
		})
		if err := admin.CoreV1().Services(namespace).Delete(ctx, "api-thief", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	run("SIGTERM leaves the kernel state; --cleanup removes only nftvs's", func(t *testing.T) {
		p.signal(syscall.SIGTERM)
		if code := p.wait(20 * time.Second); code != 0 {
			t.Errorf("nftvs exited %d on SIGTERM, want 0:\n%s", code, p.tail(150))
		}
		if !strings.Contains(command("nft", "list", "tables"), "inet nftvs") {
			t.Errorf("the nftvs table is gone after SIGTERM")
		}
		if _, _, ok, _ := c.realServers(tcpKey("10.96.5.10", 80)); !ok {
			t.Errorf("IPVS was emptied by SIGTERM")
		}
		foreign := exec.Command("nft", "-f", "-")
		foreign.Stdin = strings.NewReader("table inet foreign {\n chain input { type filter hook input priority 10; policy accept; }\n}\n")
		if out, err := foreign.CombinedOutput(); err != nil {
			t.Fatalf("foreign table: %v %s", err, out)
		}
		// An IPVS service someone else owns inside --ipvs-exclude-cidrs.
		if out, err := exec.Command("ipvsadm", "-A", "-t", "192.0.2.77:80", "-s", "rr").CombinedOutput(); err != nil {
			t.Fatalf("ipvsadm: %v %s", err, out)
		}
		cu := startNftvs(t, e.binary, logPath, "--cleanup", "--ipvs-exclude-cidrs=192.0.2.0/24", "-v=2")
		if code := cu.wait(60 * time.Second); code != 0 {
			t.Fatalf("nftvs --cleanup exited %d:\n%s", code, cu.tail(20))
		}
		tables := command("nft", "list", "tables")
		if strings.Contains(tables, "inet nftvs") || !strings.Contains(tables, "inet foreign") {
			t.Errorf("after --cleanup, tables:\n%s", tables)
		}
		ipvsOut := command("ipvsadm", "-Ln")
		if strings.Contains(ipvsOut, "10.96.5.") || !strings.Contains(ipvsOut, "192.0.2.77:80") {
			t.Errorf("after --cleanup, IPVS:\n%s", ipvsOut)
		}
		if _, err := net.InterfaceByName(ipvs.DummyName); err == nil {
			t.Errorf("%s still exists after --cleanup", ipvs.DummyName)
		}
		_ = exec.Command("nft", "delete", "table", "inet", "foreign").Run()
		_ = exec.Command("ipvsadm", "-D", "-t", "192.0.2.77:80").Run()
	})

	run("a ClusterRole without EndpointSlices makes nftvs fail loudly", func(t *testing.T) {
		broken := nftvsIdentity(t, e, admin, "-broken", func(r *rbacv1.ClusterRole) {
			var keep []rbacv1.PolicyRule
			for _, rule := range r.Rules {
				if !slices.Contains(rule.Resources, "endpointslices") {
					keep = append(keep, rule)
				}
			}
			if len(keep) == len(r.Rules) {
				t.Fatalf("deploy/clusterrole.yaml has no endpointslices rule: %+v", r.Rules)
			}
			r.Rules = keep
		})
		bp := startNftvs(t, e.binary, logPath, append([]string{"--kubeconfig=" + broken}, args[1:]...)...)
		code := bp.wait(90 * time.Second)
		log := bp.tail(30)
		if code == 0 || code == -1 {
			t.Errorf("nftvs without permission to watch EndpointSlices: exit code %d, want a non-zero exit:\n%s", code, log)
		}
		if !strings.Contains(log, "endpointslices") || !strings.Contains(log, "forbidden") {
			t.Errorf("the log does not say which permission is missing:\n%s", log)
		}
	})
}
