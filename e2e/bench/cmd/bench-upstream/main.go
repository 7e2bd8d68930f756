// Command bench-upstream is the scale benchmark of nftvs side by side with
// upstream kube-proxy 1.36 in IPVS and nftables mode (issue #9):
//
//	go run ./e2e/bench/cmd/bench-upstream                  # full run → docs/bench/
//	go run ./e2e/bench/cmd/bench-upstream -small           # the make test version
//	go run ./e2e/bench/cmd/bench-upstream -sizes 100,1000  # a subset
//
// For each size it starts a throwaway etcd + kube-apiserver on the host
// (e2e/controlplane, Service CIDR 10.96.0.0/16), creates the workload
// (N ClusterIP Services × 10 endpoints, one EndpointSlice each) at a high
// client QPS, and then, for each proxy, boots a fresh VM with real IPVS
// (e2e/vm/vmexec) that runs bench-guest: it starts the proxy against that
// API server and measures it. Results: docs/bench/results.{md,json} and
// the charts first-sync.svg, one-change.svg and restart.svg. The run fails when nftvs's IPVS table differs from
// upstream IPVS mode's for the same objects (the differential check), and
// in -small mode also when a proxy did not reach "fully programmed".
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/nftvs/nftvs/e2e/bench"
	"github.com/nftvs/nftvs/e2e/controlplane"
)

var (
	small        = flag.Bool("small", false, "the make test version: N=100, nftvs and upstream IPVS mode, asserts the differential check and that every proxy got programmed; results in a temporary directory")
	sizesFlag    = flag.String("sizes", "100,1000,5000,10000", "Services per run, comma-separated")
	proxiesFlag  = flag.String("proxies", "nftvs,ipvs,nftables", "proxies to run")
	ipvsMax      = flag.Int("ipvs-max", 5000, "largest size run for upstream IPVS mode")
	eps          = flag.Int("eps", 10, "endpoints per Service")
	outDir       = flag.String("out", "", "results directory (default docs/bench, or a temporary one with -small)")
	firstBound   = flag.Duration("first-bound", 10*time.Minute, "bound on the first sync (longer is reported as > bound)")
	changeBound  = flag.Duration("change-bound", 3*time.Minute, "bound on each one-endpoint change")
	changes      = flag.Int("changes", 5, "one-endpoint changes per run (median reported; p50 and p99 too from 20)")
	nftvsChanges = flag.Int("nftvs-changes", 0, "one-endpoint changes per nftvs run, if not -changes: enough for a p99 of nftvs's without 20 minute-long changes of upstream's at 10k")
	syncPeriod   = flag.Duration("sync-period", time.Hour, "the proxies' syncPeriod (kube-proxy's default: 30s)")
	changeGap    = flag.Duration("change-gap", 1200*time.Millisecond, "pause after each change is programmed")
	conns        = flag.Int("conns", 3000, "data plane: connections per run, at most")
	connTime     = flag.Duration("conn-time", 8*time.Second, "data plane: seconds per run, at most")
	profile      = flag.Duration("profile", 0, "nftvs: CPU profiles of this long from its start and from its restart (nftvs-first.pprof, nftvs-restart.pprof in the size's directory), and heap profiles as each stops (nftvs-first-heap.pprof, nftvs-restart-heap.pprof)")
	render       = flag.String("render", "", "only re-render results.md and the charts (first-sync.svg, one-change.svg, restart.svg) from this results.json (into -out, default its directory)")
	budget       = flag.Duration("budget", 55*time.Minute, "time budget of the whole run: runs that would start with less than 3 minutes left are skipped (reported as not run), and each first-sync bound is cut to what is left")
	keep         = flag.Bool("keep", false, "keep the work directory (control plane logs, guest results, proxy logs)")
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-upstream %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func main() {
	flag.Parse()
	if *small {
		*sizesFlag, *proxiesFlag = "100", "nftvs,ipvs"
		*changes, *conns, *connTime = 1, 200, 2*time.Second
	}
	if *render != "" {
		os.Exit(rerender(*render))
	}
	os.Exit(run())
}

func rerender(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		logf("%v", err)
		return 1
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		logf("%s: %v", path, err)
		return 1
	}
	dir := *outDir
	if dir == "" {
		dir = filepath.Dir(path)
	}
	if err := rep.Write(dir); err != nil {
		logf("%v", err)
		return 1
	}
	return 0
}

type runKey struct {
	proxy string
	n     int
}

func run() int {
	begin := time.Now()
	root, err := repoRoot()
	if err != nil {
		logf("%v", err)
		return 2
	}
	sizes, err := parseSizes(*sizesFlag)
	if err != nil {
		logf("-sizes: %v", err)
		return 2
	}
	proxies := strings.Split(*proxiesFlag, ",")
	for _, p := range proxies {
		if !slices.Contains(bench.Proxies, p) {
			logf("-proxies: unknown proxy %q", p)
			return 2
		}
	}
	out := *outDir
	if out == "" {
		out = filepath.Join(root, "docs", "bench")
		if *small {
			if out, err = os.MkdirTemp("", "nftvs-bench-small-"); err != nil {
				logf("%v", err)
				return 2
			}
			if !*keep {
				defer os.RemoveAll(out) // results.md is printed below
			}
		}
	}
	work, err := os.MkdirTemp("", "nftvs-bench-")
	if err != nil {
		logf("%v", err)
		return 2
	}
	if *keep {
		logf("work directory: %s", work)
	} else {
		defer os.RemoveAll(work)
	}

	// A signal stops the VM (vmexec traps TERM and kills qemu) and the
	// control plane, and still writes what was measured.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf("building nftvs, bench-guest, and upstream kube-apiserver + kube-proxy (cached)")
	build := exec.Command("go", "build", "-o", work+"/", "./cmd/nftvs", "./e2e/bench/cmd/bench-guest")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		logf("go build: %v", err)
		return 2
	}
	upstreamDir, err := controlplane.BuildTools(ctx)
	if err != nil {
		logf("%v", err)
		return 2
	}
	versions := map[string]string{
		bench.ProxyNftvs:    gitDescribe(root),
		bench.ProxyIPVS:     "kube-proxy " + filepath.Base(upstreamDir),
		bench.ProxyNftables: "kube-proxy " + filepath.Base(upstreamDir),
	}

	results := map[runKey]*bench.Run{}
	var report bench.Report
	report.Started = begin.UTC().Format(time.RFC3339)
	for _, n := range sizes {
		var todo []string
		for _, p := range proxies {
			if p == bench.ProxyIPVS && n > *ipvsMax {
				logf("N=%d: upstream IPVS mode skipped (-ipvs-max %d)", n, *ipvsMax)
				continue
			}
			todo = append(todo, p)
		}
		if len(todo) == 0 {
			continue
		}
		rs, err := runSize(ctx, root, work, upstreamDir, n, todo, begin)
		for p, r := range rs {
			r.Version = versions[p]
			results[runKey{p, n}] = r
		}
		if err != nil {
			logf("N=%d: %v", n, err)
			if ctx.Err() == nil {
				return 1
			}
			break // interrupted: report what was measured
		}
	}

	// The differential check, then the report.
	failed := false
	for _, n := range sizes {
		a, b := results[runKey{bench.ProxyNftvs, n}], results[runKey{bench.ProxyIPVS, n}]
		if a == nil || b == nil {
			continue
		}
		d := bench.DiffResult{Services: n}
		if !a.Programmed || !b.Programmed {
			d.Error = "not compared: a proxy was not programmed within the bound"
		} else if err := bench.Differential(a.IPVS, b.IPVS); err != nil {
			d.Error = err.Error()
			failed = true
		} else {
			d.Equal, d.Lines = true, len(a.IPVS)
		}
		logf("differential N=%d: equal=%v %s", n, d.Equal, d.Error)
		report.Differential = append(report.Differential, d)
	}
	for _, n := range sizes {
		for _, p := range bench.Proxies {
			r := results[runKey{p, n}]
			if r == nil {
				continue
			}
			r.IPVSLines = len(r.IPVS)
			if len(r.IPVS) > 0 {
				h := sha256.Sum256([]byte(strings.Join(r.IPVS, "\n")))
				r.IPVSHash = hex.EncodeToString(h[:8])
			}
			r.IPVS = nil // the tables are large; their hash stays
			report.Runs = append(report.Runs, r)
			if r.Kernel != "" {
				report.Kernel = r.Kernel
			}
			if *small && !r.Programmed {
				logf("FAIL: %s at N=%d was not fully programmed: %v", p, n, r.Errors)
				failed = true
			}
		}
	}
	if *small {
		// Nothing timing-based: both proxies ran, got fully programmed
		// (above), and their IPVS tables compared equal.
		if len(report.Runs) != 2 || len(report.Differential) != 1 || !report.Differential[0].Equal {
			logf("FAIL: -small needs both runs and an equal differential check (runs %d, differential %+v)", len(report.Runs), report.Differential)
			failed = true
		}
	}
	report.Seconds = time.Since(begin).Seconds()
	report.Command = "bench-upstream " + strings.Join(os.Args[1:], " ")
	if err := report.Write(out); err != nil {
		logf("write results: %v", err)
		return 1
	}
	md, _ := os.ReadFile(filepath.Join(out, "results.md"))
	fmt.Println(string(md))
	logf("results in %s (%.0f s in all)", out, report.Seconds)
	if failed {
		logf("FAIL")
		return 1
	}
	return 0
}

// runSize runs every proxy at one size against one control plane; the
// guests restore the one object they change, so every proxy sees the same
// objects.
func runSize(ctx context.Context, root, work, upstreamDir string, n int, proxies []string, begin time.Time) (map[string]*bench.Run, error) {
	if left := *budget - time.Since(begin); left < 3*time.Minute {
		logf("N=%d: skipped, %v left of the -budget %v", n, left.Round(time.Second), *budget)
		return nil, nil
	}
	dir := filepath.Join(work, fmt.Sprintf("n%d", n))
	if err := os.MkdirAll(filepath.Join(dir, "controlplane"), 0o755); err != nil {
		return nil, err
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(dir, "controlplane"),
		ServiceCIDR: bench.ServiceCIDR, Log: func(f string, a ...any) { logf(f, a...) }})
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	defer cp.Stop()
	hostKC, err := cp.Kubeconfig("host-admin", cp.URL(), cp.AdminToken)
	if err != nil {
		return nil, err
	}
	guestKC, err := cp.Kubeconfig("guest-admin", controlplane.GuestServer, cp.AdminToken)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := createWorkload(ctx, hostKC, n); err != nil {
		return nil, fmt.Errorf("create workload: %w", err)
	}
	logf("N=%d: %d Services and EndpointSlices (× %d endpoints) created in %.1f s", n, n, *eps, time.Since(start).Seconds())

	rs := map[string]*bench.Run{}
	for _, p := range proxies {
		left := *budget - time.Since(begin)
		if left < 3*time.Minute {
			logf("N=%d: %s skipped, %v left of the -budget %v", n, bench.ProxyTitle(p), left.Round(time.Second), *budget)
			continue
		}
		bound := min(*firstBound, left-2*time.Minute)
		bin := filepath.Join(work, "nftvs")
		if p != bench.ProxyNftvs {
			bin = filepath.Join(upstreamDir, "kube-proxy")
		}
		resFile := filepath.Join(dir, p+".json")
		nChanges := *changes
		if p == bench.ProxyNftvs && *nftvsChanges > 0 {
			nChanges = *nftvsChanges
		}
		args := []string{filepath.Join(work, "bench-guest"),
			"-proxy", p, "-bin", bin, "-n", strconv.Itoa(n), "-eps", strconv.Itoa(*eps),
			"-kubeconfig", guestKC, "-out", resFile,
			"-first-bound", bound.String(), "-change-bound", changeBound.String(),
			"-changes", strconv.Itoa(nChanges), "-conns", strconv.Itoa(*conns), "-conn-time", connTime.String(),
			"-sync-period", syncPeriod.String(), "-change-gap", changeGap.String(), "-profile", profile.String()}
		vmTimeout := bound + time.Duration(nChanges+2)*(*changeBound+*changeGap) + *connTime + 5*time.Minute
		cmd := exec.CommandContext(ctx, filepath.Join(root, "e2e", "vm", "vmexec"), args...)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 30 * time.Second
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.Env = append(os.Environ(), "NFTVS_VM_APISERVER=1", "NFTVS_VM_RW="+dir,
			fmt.Sprintf("NFTVS_VM_TIMEOUT=%d", int(vmTimeout.Seconds())))
		if p == bench.ProxyIPVS {
			// What upstream IPVS mode's ipset and iptables-nft use, in one
			// modprobe instead of one autoload each.
			cmd.Env = append(cmd.Env, "NFTVS_VM_MODULES=ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip "+
				"ip_set_hash_ipportnet ip_set_hash_net ip_set_bitmap_port nft_compat xt_set xt_comment xt_mark "+
				"xt_addrtype xt_conntrack xt_MASQUERADE xt_nat ipt_REJECT")
		}
		logf("N=%d: %s in a fresh VM", n, bench.ProxyTitle(p))
		vmStart := time.Now()
		err := cmd.Run()
		r := &bench.Run{Proxy: p, Services: n, Endpoints: *eps}
		if b, rerr := os.ReadFile(resFile); rerr == nil {
			if jerr := json.Unmarshal(b, r); jerr != nil {
				r.Errors = append(r.Errors, "result: "+jerr.Error())
			}
		} else {
			r.Errors = append(r.Errors, fmt.Sprintf("no result from the VM (vmexec: %v)", err))
		}
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("vmexec: %v", err))
		}
		r.VMSeconds = time.Since(vmStart).Seconds()
		logf("N=%d: %s done in %.0f s: programmed=%v first sync %.3f s (metric) %.2f s (outside); errors %v",
			n, p, r.VMSeconds, r.Programmed, r.FirstSyncMetricSeconds, r.FirstSyncWallSeconds, r.Errors)
		if r.LogTail != "" && len(r.Errors) > 0 {
			logf("proxy log tail:\n%s", r.LogTail)
		}
		rs[p] = r
		if ctx.Err() != nil {
			return rs, ctx.Err()
		}
	}
	return rs, nil
}

// createWorkload creates this node's Node object, the namespace, and n
// Services with one EndpointSlice of eps ready endpoints each, in
// parallel at a high client QPS.
func createWorkload(ctx context.Context, kubeconfig string, n int) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 2000, 4000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	node, err := cs.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: bench.NodeName,
		Labels: map[string]string{"kubernetes.io/hostname": bench.NodeName}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: bench.NodeIP}, {Type: v1.NodeHostName, Address: bench.NodeName}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node status: %w", err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: bench.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	idx := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if err := createService(ctx, cs, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	go func() {
		defer close(idx)
		for i := 0; i < n; i++ {
			select {
			case idx <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	return errors.Join(slices.Collect(func(yield func(error) bool) {
		for e := range errs {
			if !yield(e) {
				return
			}
		}
	})...)
}

func createService(ctx context.Context, cs kubernetes.Interface, i int) error {
	name := bench.ServiceName(i)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: bench.Namespace},
		Spec: v1.ServiceSpec{
			Type:      v1.ServiceTypeClusterIP,
			ClusterIP: bench.ClusterIP(i).String(),
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: bench.ServicePort,
				TargetPort: intstr.FromInt32(bench.TargetPort)}},
		},
	}
	if _, err := cs.CoreV1().Services(bench.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: bench.SliceName(i), Namespace: bench.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench-upstream"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(int32(bench.TargetPort))}},
	}
	for j := 0; j < *eps; j++ {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{bench.EndpointIP(i, j, *eps).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(bench.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("endpointslice %s: %w", es.Name, err)
	}
	return nil
}

func parseSizes(s string) ([]int, error) {
	var r []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > bench.MaxServices {
			return nil, fmt.Errorf("bad size %q (1..%d)", f, bench.MaxServices)
		}
		r = append(r, n)
	}
	return r, nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module github.com/nftvs/nftvs\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run inside the nftvs repository")
		}
		dir = parent
	}
}

func gitDescribe(root string) string {
	o, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "nftvs"
	}
	return "nftvs " + strings.TrimSpace(string(o))
}
