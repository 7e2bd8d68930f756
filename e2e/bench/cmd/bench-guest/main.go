// Command bench-guest is the VM side of the upstream benchmark
// (e2e/bench): in a fresh VM with real IPVS, whose API server (on the
// host) already holds every Service and EndpointSlice of the workload, it
// starts one proxy (nftvs, or upstream kube-proxy in ipvs or nftables
// mode) with the same KubeProxyConfiguration, and measures: time to the
// node fully programmed (outside check + the proxy's own metrics), a few
// one-endpoint changes, CPU and peak RSS, the kernel objects, new TCP
// connections per second through one ClusterIP, and the normalised IPVS
// table for the differential check. The result is one JSON file (-out).
// Run by bench-upstream through e2e/vm/vmexec; every wait is bounded.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	mobyipvs "github.com/moby/ipvs"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nftvs/nftvs/e2e/bench"
)

var (
	proxy       = flag.String("proxy", "", "nftvs, ipvs or nftables")
	proxyBin    = flag.String("bin", "", "the nftvs or kube-proxy binary")
	nServices   = flag.Int("n", 100, "Services in the workload")
	eps         = flag.Int("eps", 10, "endpoints per Service")
	kubeconfig  = flag.String("kubeconfig", "", "kubeconfig for the guest")
	out         = flag.String("out", "", "write the result (JSON) here")
	firstBound  = flag.Duration("first-bound", 10*time.Minute, "bound on the wait for the node fully programmed")
	changeBound = flag.Duration("change-bound", 3*time.Minute, "bound on the wait for each one-endpoint change")
	changes     = flag.Int("changes", 5, "one-endpoint changes measured")
	syncPeriod  = flag.Duration("sync-period", time.Hour, "the proxy's syncPeriod (kube-proxy's default is 30s; 1h keeps periodic syncs out of the one-change figures)")
	changeGap   = flag.Duration("change-gap", 1200*time.Millisecond, "pause after each change is programmed (past the 1 s minSyncPeriod, so changes are not coalesced)")
	conns       = flag.Int("conns", 3000, "data plane: at most this many connections")
	connTime    = flag.Duration("conn-time", 8*time.Second, "data plane: at most this long")
	proxyLog    = flag.String("log", "/tmp/bench-proxy.log", "the proxy's log")
	profile     = flag.Duration("profile", 0, "nftvs: a CPU profile (/debug/pprof) of this long from its start, and one from its restart, written beside -out, and a heap profile as each stops")
)

const (
	metricsURL = "http://127.0.0.1:10249/metrics"
	syncMetric = "kubeproxy_sync_proxy_rules_duration_seconds"
	netProg    = "kubeproxy_network_programming_duration_seconds"
	bkNS       = "bench-bk"
	clNS       = "bench-cl"
	triggerAnn = "endpoints.kubernetes.io/last-change-trigger-time"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-guest %s: %s\n", time.Now().Format("15:04:05.0"), fmt.Sprintf(format, args...))
}

func main() {
	flag.Parse()
	r := &bench.Run{Proxy: *proxy, Services: *nServices, Endpoints: *eps,
		FirstSyncBoundSeconds: firstBound.Seconds(), ChangeBoundSeconds: changeBound.Seconds(),
		SyncPeriodSeconds: syncPeriod.Seconds()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if err := run(r); err != nil {
		r.Errors = append(r.Errors, err.Error())
		logf("error: %v", err)
	}
	if len(r.Errors) > 0 || !r.Programmed {
		r.LogTail = tail(*proxyLog, 40)
	}
	b, _ := json.MarshalIndent(r, "", "  ")
	if *out == "" {
		os.Stdout.Write(append(b, '\n'))
		return
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		logf("write result: %v", err)
		os.Exit(1)
	}
}

func run(r *bench.Run) error {
	switch *proxy {
	case bench.ProxyNftvs, bench.ProxyIPVS, bench.ProxyNftables:
	default:
		return fmt.Errorf("unknown -proxy %q", *proxy)
	}
	if err := setupNetwork(); err != nil {
		return fmt.Errorf("network namespaces: %w", err)
	}
	stopServer, err := startBackend()
	if err != nil {
		return fmt.Errorf("backend server: %w", err)
	}
	defer stopServer()

	p, err := startProxy()
	if err != nil {
		return err
	}
	defer p.stop()

	// --- first sync ---
	logf("%s started (pid %d); waiting for %d Services × %d endpoints (bound %v)", *proxy, p.pid(), *nServices, *eps, *firstBound)
	start := p.started
	deadline := start.Add(*firstBound)
	check := newChecker()
	defer check.close()
	var firstSeen bool
	lastLog := time.Now()
	// The first sync's metric is polled on its own, every 500 ms (a scrape
	// costs the proxy about 24 ms of CPU under emulation: polled every
	// 200 ms, 5.5 s of its 37 s in a first sync's 45 s): polled
	// between two outside checks (a dump of every virtual server, seconds
	// at 10k under emulation), a second sync got in first at times, and
	// the histogram's mean of two stood for the first (6 December 22:52:
	// 19.1 s reported for a first sync of 37.7 s).
	first := make(chan hist, 1)
	go func() {
		for !p.exited() && time.Now().Before(deadline) {
			if h, ok := scrapeHist(syncMetric); ok && h.count > 0 {
				first <- h
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	// The outside check dumps every virtual server, real server and
	// kube-ipvs0 address: seconds at 10k under emulation, holding IPVS's
	// and RTNL's locks, which the proxy's writes need. Run back to back
	// during the first sync it slowed the sync it measured (6 December:
	// nftvs's IPVS and address writers mostly off-CPU, waiting). Until the
	// proxy reports its first sync it runs once every 30 s (progress, and
	// how far a proxy that hits the bound got); then back to back, and a
	// node it finds programmed at once was programmed when the proxy said
	// so.
	var firstSeenAt, lastCheck time.Time
	checksAfter := 0
	stopCPU := watchCPU("from exec to programmed", p.pid())
	for {
		if !firstSeen {
			select {
			case h := <-first:
				firstSeen, firstSeenAt = true, time.Now()
				r.FirstSyncMetricSeconds = h.sum / float64(h.count)
				r.FirstSyncMetricCount = h.count
				logf("first sync by the proxy's metric: %.3f s (count %d%s)", r.FirstSyncMetricSeconds, h.count,
					map[bool]string{true: ": the mean of those syncs, not the first alone", false: ""}[h.count > 1])
			default:
			}
		}
		if !firstSeen && time.Since(lastCheck) < 30*time.Second {
			if p.exited() {
				return fmt.Errorf("%s exited before the node was programmed: %v", *proxy, p.err)
			}
			if time.Now().After(deadline) {
				r.Errors = append(r.Errors, fmt.Sprintf("first sync: not programmed within %v (no first sync reported)", *firstBound))
				logf("not programmed within %v: no first sync reported", *firstBound)
				break
			}
			time.Sleep(250 * time.Millisecond)
			continue
		}
		lastCheck = time.Now()
		if firstSeen {
			checksAfter++
		}
		ok, progress, err := check.programmed()
		if err != nil {
			logf("outside check: %v", err)
		}
		// The kernel may look complete before the sync has ended
		// (upstream IPVS mode writes iptables and ipsets after IPVS):
		// programmed also needs the proxy's first sync done and, for
		// upstream IPVS mode, every ClusterIP in its KUBE-CLUSTER-IP ipset.
		if ok && r.KernelCompleteSeconds == 0 {
			r.KernelCompleteSeconds = time.Since(start).Seconds()
			logf("kernel complete after %.2f s", r.KernelCompleteSeconds)
		}
		if ok && !firstSeen {
			ok, progress = false, "kernel complete, first sync not yet reported"
		}
		if ok && *proxy == bench.ProxyIPVS {
			if k, err := ipsetEntries("KUBE-CLUSTER-IP"); err != nil || k < *nServices {
				ok, progress = false, fmt.Sprintf("KUBE-CLUSTER-IP has %d/%d entries (%v)", k, *nServices, err)
			}
		}
		if ok {
			r.Programmed = true
			r.FirstSyncWallSeconds = time.Since(start).Seconds()
			if checksAfter == 1 {
				r.FirstSyncWallSeconds = firstSeenAt.Sub(start).Seconds()
			}
			break
		}
		if p.exited() {
			return fmt.Errorf("%s exited before the node was programmed: %v", *proxy, p.err)
		}
		if time.Now().After(deadline) {
			r.Errors = append(r.Errors, fmt.Sprintf("first sync: not programmed within %v (%s)", *firstBound, progress))
			logf("not programmed within %v: %s", *firstBound, progress)
			break
		}
		if time.Since(lastLog) > 30*time.Second {
			logf("waiting: %s", progress)
			lastLog = time.Now()
		}
		time.Sleep(250 * time.Millisecond)
	}
	stopCPU()
	cpu, _ := procCPU(p.pid())
	r.CPUFirstSyncSeconds = cpu
	if !firstSeen {
		if h, ok := scrapeHist(syncMetric); ok && h.count > 0 {
			r.FirstSyncMetricSeconds = h.sum / float64(h.count)
			r.FirstSyncMetricCount = h.count
		}
	}
	if h, ok := scrapeHist(syncMetric); ok && r.Programmed {
		r.SyncsUntilProgrammed, r.SyncSecondsUntilProgrammed = h.count, h.sum
	}
	if h, ok := scrapeHist(netProg); ok {
		r.FirstSyncNetProgSum, r.FirstSyncNetProgCount = h.sum, h.count
	}
	if r.Programmed {
		logf("programmed after %.2f s (proxy's first sync metric %.3f s), CPU %.2f s", r.FirstSyncWallSeconds, r.FirstSyncMetricSeconds, cpu)
		logRSS("the first sync", p.pid())
	}

	// --- the table, for the differential check, and the counts ---
	if bench.UsesIPVS(*proxy) {
		vss, err := dumpIPVS()
		if err != nil {
			r.Errors = append(r.Errors, "ipvs dump: "+err.Error())
		}
		r.IPVS = bench.NormalizeIPVS(vss)
	}
	r.Counts = countObjects(r)
	logf("counts: %+v", r.Counts)

	if !r.Programmed {
		finish(r, p)
		return nil
	}

	// --- one-endpoint changes ---
	if err := runChanges(r, check); err != nil {
		r.Errors = append(r.Errors, "changes: "+err.Error())
	}
	logRSS("the changes", p.pid())

	// --- data plane: through the ClusterIP, then straight to a pod ---
	svc := netip.AddrPortFrom(bench.ClusterIP(0), bench.ServicePort)
	// A second port on the pod: a direct connection to the Service's
	// target port could reuse a source port whose earlier connection
	// through the ClusterIP is still in conntrack (TIME_WAIT) with
	// exactly this tuple as its reply, and be dropped as part of it.
	pod := netip.AddrPortFrom(bench.EndpointIP(0, 0, *eps), bench.DirectPort)
	for _, t := range []struct {
		what string
		dst  netip.AddrPort
		to   **bench.ConnResult
	}{{"data plane", svc, &r.Conn}, {"data plane direct", pod, &r.Direct}} {
		c, err := connTest(t.dst)
		if err != nil {
			r.Errors = append(r.Errors, t.what+": "+err.Error())
		}
		*t.to = c
		if c != nil {
			logf("%s (%s): %d connections in %.2f s = %.0f/s (%d errors)", t.what, t.dst, c.Connections, c.Seconds, c.PerSecond, c.Errors)
		}
	}
	logRSS("the data plane test", p.pid())
	finish(r, p)
	if *proxy == bench.ProxyNftvs {
		r.Restart = restart(p, check)
		r.Floor = bench.RunFloor(*nServices, *eps)
		fl := r.Floor
		logf("kernel floor: %.2f s (IPVS %.2f s for %d writes, addresses %.2f s for %d, nft %.2f s for %d elements, at once) %s; nftvs's first sync %.2f s = %.2f× the floor",
			fl.Seconds, fl.IPVSSeconds, fl.IPVSWrites, fl.AddressSeconds, fl.AddressWrites, fl.NFTSeconds, fl.NFTElements, fl.Error,
			r.FirstSyncMetricSeconds, r.FirstSyncMetricSeconds/fl.Seconds)
	}
	return nil
}

// restart stops the proxy and starts it again on the node it programmed:
// how long until it is programmed again, and how many writes that took
// by its own counters (zero is the goal: the node is as it wants it).
func restart(p *proxyProc, check *checker) *bench.Restart {
	res := &bench.Restart{}
	p.stop()
	logPath := *proxyLog + ".restart"
	q, err := startProxyLog(logPath)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer q.stop()
	logf("%s restarted (pid %d)", *proxy, q.pid())
	deadline := q.started.Add(*firstBound)
	// The first sync's metric first (cheap to poll), then the outside
	// check (a dump of every virtual server: seconds at 10k under
	// emulation), so that the check's own time does not hide when the
	// sync ended.
	progress := "no first sync reported yet"
	stopCPU := watchCPU("restart, from exec to programmed", q.pid())
	for {
		if res.ProgrammedSeconds == 0 {
			if h, seen := scrapeHist(syncMetric); seen && h.count > 0 {
				res.ProgrammedSeconds = time.Since(q.started).Seconds()
				res.FirstSyncSeconds = h.sum / float64(h.count)
				stopCPU()
			}
		} else {
			var ok bool
			if ok, progress, _ = check.programmed(); ok {
				res.CheckedSeconds = time.Since(q.started).Seconds()
				break
			}
		}
		if q.exited() || time.Now().After(deadline) {
			if res.ProgrammedSeconds == 0 {
				stopCPU()
			}
			res.Error = fmt.Sprintf("not programmed again within %v (%s): %v", *firstBound, progress, q.err)
			return res
		}
		time.Sleep(250 * time.Millisecond)
	}
	res.CPUSeconds, _ = procCPU(q.pid())
	res.IPVSWrites = int(scrapeSum("nftvs_ipvs_netlink_writes_total"))
	res.AddressWrites = int(scrapeSum("nftvs_address_writes_total"))
	res.NFTElementWrites = int(scrapeSum("nftvs_nft_element_writes_total"))
	if t, ok := logLineTime(logPath, "Informer caches synced"); ok {
		res.InformersSyncedSeconds = t.Sub(q.started).Seconds()
	}
	if t, ok := logLineTime(logPath, `"Full sync"`); ok {
		res.FirstSyncDoneSeconds = t.Sub(q.started).Seconds()
	}
	for _, l := range []string{*proxyLog, logPath} {
		for _, what := range []string{`"Read the kernel ahead`, `"Full sync"`} {
			if line, ok := logLine(l, what); ok {
				logf("%s: %s", l, line)
			}
		}
	}
	for _, l := range []string{*proxyLog, logPath} {
		if sum, ok := gcSummary(l); ok {
			logf("%s: %s", l, sum)
		}
	}
	logRSS("the restart", q.pid())
	logf("restart: programmed after %.2f s (informers synced after %.2f s, first sync %.3f s done after %.2f s by its log, outside check passed after %.2f s), writes: IPVS %d, addresses %d, nft elements %d",
		res.ProgrammedSeconds, res.InformersSyncedSeconds, res.FirstSyncSeconds, res.FirstSyncDoneSeconds, res.CheckedSeconds, res.IPVSWrites, res.AddressWrites, res.NFTElementWrites)
	return res
}

// gcLine is one line of GODEBUG=gctrace=1: "gc 12 @3.456s 2%: ...,
// 120->130->60 MB, 125 MB goal, ...".
var gcLine = regexp.MustCompile(`^gc \d+ @([\d.]+)s .* (\d+)->(\d+)->(\d+) MB, (\d+) MB goal`)

// gcSummary sums up the GC trace in path: how many cycles, the largest
// heap a cycle found (before it ran), the largest heap at a cycle's end
// (what the program allocated while the cycle marked comes on top: the
// heap's true high point, which peak RSS follows) and the largest live
// heap it left, with when (seconds since the process started).
func gcSummary(path string) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	var cycles, maxHeap, maxEnd, maxLive int
	var atHeap, atEnd, atLive string
	for _, line := range strings.Split(string(b), "\n") {
		m := gcLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		cycles++
		heap, _ := strconv.Atoi(m[2])
		end, _ := strconv.Atoi(m[3])
		live, _ := strconv.Atoi(m[4])
		if heap > maxHeap {
			maxHeap, atHeap = heap, m[1]
		}
		if end > maxEnd {
			maxEnd, atEnd = end, m[1]
		}
		if live > maxLive {
			maxLive, atLive = live, m[1]
		}
	}
	if cycles == 0 {
		return "", false
	}
	return fmt.Sprintf("GC: %d cycles; largest heap at a cycle's start %d MB (@%ss), at its end %d MB (@%ss), largest live heap after one %d MB (@%ss)",
		cycles, maxHeap, atHeap, maxEnd, atEnd, maxLive, atLive), true
}

// logLine is the first line of path containing s.
func logLine(path, s string) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, s) {
			return line, true
		}
	}
	return "", false
}

// logLineTime is the time of the first klog line of path containing s
// (klog prints the time of day, UTC here, to the microsecond).
func logLineTime(path, s string) (time.Time, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, s) || len(line) < 21 {
			continue
		}
		// I1206 06:23:36.924795 ...
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		tod, err := time.Parse("15:04:05.000000", f[1])
		if err != nil {
			continue
		}
		now := time.Now().UTC()
		return time.Date(now.Year(), now.Month(), now.Day(), tod.Hour(), tod.Minute(), tod.Second(), tod.Nanosecond(), time.UTC), true
	}
	return time.Time{}, false
}

func finish(r *bench.Run, p *proxyProc) {
	r.CPUTotalSeconds, _ = procCPU(p.pid())
	r.PeakRSSBytes, _ = procHWM(p.pid())
	logf("CPU total %.2f s, peak RSS %.1f MB", r.CPUTotalSeconds, float64(r.PeakRSSBytes)/1e6)
}

// --- network: a backend pod holding Service 0's endpoints, a client pod ---

func setupNetwork() error {
	for _, f := range []string{"net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter", "net/ipv4/ip_forward"} {
		v := "0"
		if strings.HasSuffix(f, "ip_forward") {
			v = "1"
		}
		if err := os.WriteFile("/proc/sys/"+f, []byte(v), 0o644); err != nil {
			return err
		}
	}
	const (
		bkNode, bkPod = "02:00:00:00:01:01", "02:00:00:00:01:02"
		clNode, clPod = "02:00:00:00:02:01", "02:00:00:00:02:02"
	)
	var root, bk, cl strings.Builder
	fmt.Fprintf(&root, "netns add %s\nnetns add %s\n", bkNS, clNS)
	fmt.Fprintf(&root, "link add vbk address %s type veth peer name eth0 address %s netns %s\n", bkNode, bkPod, bkNS)
	fmt.Fprintf(&root, "link add vcl address %s type veth peer name eth0 address %s netns %s\n", clNode, clPod, clNS)
	root.WriteString("link set vbk up\nlink set vcl up\n")
	fmt.Fprintf(&bk, "link set lo up\n")
	for j := 0; j < *eps; j++ {
		ip := bench.EndpointIP(0, j, *eps)
		fmt.Fprintf(&root, "neigh add %s lladdr %s dev vbk nud permanent\nroute add %s/32 dev vbk\n", ip, bkPod, ip)
		fmt.Fprintf(&bk, "addr add %s/32 dev eth0\n", ip)
	}
	fmt.Fprintf(&root, "neigh add %s lladdr %s dev vcl nud permanent\nroute add %s/32 dev vcl\n", bench.ClientIP, clPod, bench.ClientIP)
	fmt.Fprintf(&bk, "link set eth0 up\nneigh add 169.254.1.1 lladdr %s dev eth0 nud permanent\nroute add default via 169.254.1.1 dev eth0 onlink\n", bkNode)
	fmt.Fprintf(&cl, "link set lo up\naddr add %s/32 dev eth0\nlink set eth0 up\n", bench.ClientIP)
	fmt.Fprintf(&cl, "neigh add 169.254.1.1 lladdr %s dev eth0 nud permanent\nroute add default via 169.254.1.1 dev eth0 onlink\n", clNode)
	for _, b := range []struct {
		args  []string
		lines string
	}{{nil, root.String()}, {[]string{"-n", bkNS}, bk.String()}, {[]string{"-n", clNS}, cl.String()}} {
		cmd := exec.Command("ip", append(b.args, "-batch", "-")...)
		cmd.Stdin = strings.NewReader(b.lines)
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v -batch: %v: %s", b.args, err, o)
		}
	}
	return nil
}

// inNS runs fn on a thread in the named network namespace.
func inNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: it ends with the goroutine
		// instead of returning to the pool in another namespace.
		h, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// startBackend serves "ok" on every connection to :TargetPort and
// :DirectPort in the backend pod, then closes.
func startBackend() (func(), error) {
	stop1, err := serveOK(bench.TargetPort)
	if err != nil {
		return nil, err
	}
	stop2, err := serveOK(bench.DirectPort)
	if err != nil {
		stop1()
		return nil, err
	}
	return func() { stop1(); stop2() }, nil
}

// serveOK answers "ok" on port in the backend namespace.
func serveOK(port int) (func(), error) {
	var ln net.Listener
	err := inNS(bkNS, func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.WriteString(c, "ok\n")
				c.Close()
			}()
		}
	}()
	return func() { ln.Close() }, nil
}

// connTest opens short connections from the client pod to dst, one after
// another, bounded in count and time.
func connTest(to netip.AddrPort) (*bench.ConnResult, error) {
	dst := to.String()
	res := &bench.ConnResult{}
	one := func() error {
		c, err := net.DialTimeout("tcp4", dst, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if string(b) != "ok\n" {
			return fmt.Errorf("answer %q", b)
		}
		return nil
	}
	var firstErr error
	err := inNS(clNS, func() error {
		// Warm up: the first connections pay for ARP and first lookups.
		for i := 0; i < 20; i++ {
			if err := one(); err != nil {
				return fmt.Errorf("warm-up connection to %s: %w", dst, err)
			}
		}
		start := time.Now()
		end := start.Add(*connTime)
		for res.Connections < *conns && time.Now().Before(end) && res.Errors < 50 {
			if err := one(); err != nil {
				res.Errors++
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			res.Connections++
		}
		res.Seconds = time.Since(start).Seconds()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if res.Seconds > 0 {
		res.PerSecond = float64(res.Connections) / res.Seconds
	}
	if firstErr != nil {
		return res, fmt.Errorf("%d failed connections, first: %w", res.Errors, firstErr)
	}
	return res, nil
}

// --- the proxy ---

type proxyProc struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	err     error
	// profiled is closed when its CPU profile (-profile) is written; nil
	// without one.
	profiled chan struct{}
	// heapProfile, if set, is where stop writes the proxy's heap profile
	// first (-profile).
	heapProfile string
}

func (p *proxyProc) pid() int { return p.cmd.Process.Pid }

func (p *proxyProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proxyProc) stop() {
	if p.exited() {
		return
	}
	if p.profiled != nil {
		// A restart is programmed well within -profile: let the profile
		// end rather than cut it off.
		select {
		case <-p.profiled:
		case <-time.After(*profile + 30*time.Second):
		}
	}
	if p.heapProfile != "" {
		heapProfile(p.heapProfile)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// config is one KubeProxyConfiguration for all three: only the mode
// differs (nftvs takes mode ipvs).
func config() string {
	mode := "ipvs"
	if *proxy == bench.ProxyNftables {
		mode = "nftables"
	}
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %s
clientConnection:
  kubeconfig: %s
  qps: 100
  burst: 200
hostnameOverride: %s
clusterCIDR: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
enableProfiling: %[6]v
conntrack:
  maxPerCore: 0
iptables:
  minSyncPeriod: 1s
  syncPeriod: %[5]s
ipvs:
  scheduler: rr
  minSyncPeriod: 1s
  syncPeriod: %[5]s
nftables:
  minSyncPeriod: 1s
  syncPeriod: %[5]s
`, mode, *kubeconfig, bench.NodeName, bench.ClusterCIDR, *syncPeriod, *profile > 0)
}

func startProxy() (*proxyProc, error) { return startProxyLog(*proxyLog) }

// startProxyLog starts the proxy with its output to logPath.
func startProxyLog(logPath string) (*proxyProc, error) {
	cfg := "/tmp/bench-kube-proxy.yaml"
	if err := os.WriteFile(cfg, []byte(config()), 0o644); err != nil {
		return nil, err
	}
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(*proxyBin, "--config="+cfg)
	cmd.Stdout, cmd.Stderr = f, f
	if *proxy == "nftvs" {
		// The Go GC's line per cycle (heap before, after, live; goal):
		// where nftvs's peak RSS comes from (gcSummary).
		cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	}
	p := &proxyProc{cmd: cmd, done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", *proxyBin, err)
	}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	if *profile > 0 && *proxy == bench.ProxyNftvs {
		name := "nftvs-first.pprof"
		if logPath != *proxyLog {
			name = "nftvs-restart.pprof"
		}
		p.profiled = make(chan struct{})
		go func() {
			defer close(p.profiled)
			cpuProfile(p, filepath.Join(filepath.Dir(*out), name))
		}()
		p.heapProfile = filepath.Join(filepath.Dir(*out), strings.TrimSuffix(name, ".pprof")+"-heap.pprof")
	}
	return p, nil
}

// cpuProfile writes the proxy's CPU profile of its first -profile (from
// as soon as its metrics server answers) to path: where a first sync's or
// a restart's time goes under emulation, which the host's benchmarks over
// fakes cannot say (go tool pprof -top path).
func cpuProfile(p *proxyProc, path string) {
	url := fmt.Sprintf("http://127.0.0.1:10249/debug/pprof/profile?seconds=%d", int(profile.Seconds()))
	client := &http.Client{Timeout: *profile + time.Minute}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && !p.exited(); time.Sleep(50 * time.Millisecond) {
		if saveProfile(client, url, path, "CPU profile") {
			return
		}
	}
	logf("CPU profile %s: the metrics server never answered", path)
}

// heapProfile writes the proxy's heap profile, taken after a GC, to
// path: at the end of a run, what a settled node holds (inuse_space) and
// what its whole life allocated (alloc_space), by allocation site. The
// host's benchmarks over fakes see neither the informers' objects nor the
// API client's (go tool pprof -sample_index=inuse_space -top path).
func heapProfile(path string) {
	if !saveProfile(&http.Client{Timeout: time.Minute}, "http://127.0.0.1:10249/debug/pprof/heap?gc=1", path, "heap profile") {
		logf("heap profile %s: the metrics server did not answer", path)
	}
}

// saveProfile writes what url answers to path and logs it; false if
// nothing answered.
func saveProfile(client *http.Client, url, path, what string) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode == http.StatusOK {
		err = os.WriteFile(path, b, 0o644)
	}
	logf("%s %s: %d bytes, status %d, %v", what, path, len(b), resp.StatusCode, err)
	return true
}

// procCPU is user+system time of pid and its waited-for children, in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return 0, errors.New("short stat")
	}
	var ticks float64
	for _, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, err := strconv.ParseFloat(f[k], 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	return ticks / 100, nil // USER_HZ
}

// vmCPU is the VM's busy and total CPU time (all vCPUs, seconds) from
// /proc/stat: busy is everything but idle and iowait.
func vmCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		total += x / 100
		if i != 3 && i != 4 { // idle, iowait
			busy += x / 100
		}
	}
	return busy, total
}

// watchCPU logs every second, until the returned stop, how many of the
// VM's vCPUs were busy and how many of them the proxy (pid) kept busy:
// whether a sync waits on the CPU or on something else (a lock, the
// kernel). stop logs the averages over the whole window.
func watchCPU(label string, pid int) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t0 := time.Now()
		p0, _ := procCPU(pid)
		b0, a0 := vmCPU()
		t, b, a, pc := t0, b0, a0, p0
		sample := func() (dt, busy, all, proc float64) {
			nt := time.Now()
			nb, na := vmCPU()
			np, _ := procCPU(pid)
			dt, busy, all, proc = nt.Sub(t).Seconds(), nb-b, na-a, np-pc
			t, b, a, pc = nt, nb, na, np
			return
		}
		for {
			select {
			case <-done:
				sample()
				if dt := t.Sub(t0).Seconds(); dt > 0 {
					logf("cpu %s, %.1f s in all: the VM's vCPUs busy %.2f on average, the proxy %.2f (%.1f s of CPU)",
						label, dt, (b-b0)/dt, (pc-p0)/dt, pc-p0)
				}
				return
			case <-time.After(time.Second):
				dt, busy, all, proc := sample()
				if all > 0 && dt > 0 {
					logf("cpu %s: vCPUs busy %.2f, the proxy %.2f", label, busy/dt, proc/dt)
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// procHWM is VmHWM (peak RSS) of pid in bytes.
func procHWM(pid int) (int64, error) { return procStatus(pid, "VmHWM") }

// procStatus is a size field of /proc/PID/status (VmHWM, VmRSS), in bytes.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s", field)
}

// logRSS logs the proxy's RSS now and its peak so far, after a phase:
// which phase (first sync, changes, periodic syncs, data plane) set the
// peak RSS reported at the end.
func logRSS(phase string, pid int) {
	rss, err1 := procStatus(pid, "VmRSS")
	hwm, err2 := procStatus(pid, "VmHWM")
	if err := errors.Join(err1, err2); err != nil {
		logf("RSS after %s: %v", phase, err)
		return
	}
	// Anonymous (the Go heap, stacks, the runtime's own) and file-backed
	// (the binary's pages) apart: what a smaller heap can win.
	anon, err1 := procStatus(pid, "RssAnon")
	file, err2 := procStatus(pid, "RssFile")
	if errors.Join(err1, err2) != nil {
		logf("RSS after %s: %.1f MB, peak so far %.1f MB", phase, float64(rss)/1e6, float64(hwm)/1e6)
		return
	}
	logf("RSS after %s: %.1f MB (anonymous %.1f, file %.1f), peak so far %.1f MB", phase, float64(rss)/1e6, float64(anon)/1e6, float64(file)/1e6, float64(hwm)/1e6)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// --- metrics ---

type hist struct {
	sum   float64
	count int
}

var metricLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)`)

// scrapeHist reads the IPv4 series of a histogram (or the unlabelled one).
// metricsClient scrapes the proxy's metrics uncompressed: gzip made each
// scrape cost the proxy about 18 ms of CPU under emulation, 7% of a vCPU
// at the first sync's polling (its CPU profile, 6 December).
var metricsClient = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableCompression: true}}

// histGrown polls the histogram name every period until its count
// passes before's, or until end, and returns what it grew by.
func histGrown(name string, before hist, end time.Time, period time.Duration) (hist, bool) {
	for ; ; time.Sleep(period) {
		if h, _ := scrapeHist(name); h.count > before.count {
			return hist{sum: h.sum - before.sum, count: h.count - before.count}, true
		}
		if time.Now().After(end) {
			return hist{}, false
		}
	}
}

func scrapeHist(name string) (hist, bool) {
	resp, err := metricsClient.Get(metricsURL)
	if err != nil {
		return hist{}, false
	}
	defer resp.Body.Close()
	var h hist
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := metricLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		if m[3] != "" && !strings.Contains(m[3], `ip_family="IPv4"`) {
			continue
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			continue
		}
		switch m[1] {
		case name + "_sum":
			h.sum, found = v, true
		case name + "_count":
			h.count, found = int(v), true
		}
	}
	return h, found
}

// scrapeSum sums every series of a counter.
func scrapeSum(name string) float64 {
	resp, err := metricsClient.Get(metricsURL)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := metricLine.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != name {
			continue
		}
		if v, err := strconv.ParseFloat(m[4], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// --- outside checks ---

type checker struct {
	ipvs *mobyipvs.Handle
	nft  *nftables.Conn
	done map[netip.Addr]bool // IPVS: virtual servers seen complete
}

func newChecker() *checker {
	c := &checker{done: map[netip.Addr]bool{}}
	if bench.UsesIPVS(*proxy) {
		h, err := mobyipvs.New("")
		if err != nil {
			logf("ipvs handle: %v", err)
		}
		c.ipvs = h
	} else {
		c.nft = &nftables.Conn{}
	}
	return c
}

func (c *checker) close() {
	if c.ipvs != nil {
		c.ipvs.Close()
	}
}

func benchVS(s *mobyipvs.Service) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok || s.FWMark != 0 || s.Protocol != unix.IPPROTO_TCP || s.Port != bench.ServicePort {
		return netip.Addr{}, false
	}
	a = a.Unmap()
	return a, bench.IsBenchClusterIP(a, *nServices)
}

// programmed reports whether every Service of the workload is programmed:
// IPVS: a virtual server per ClusterIP with every endpoint at weight > 0,
// and every ClusterIP on kube-ipvs0; nftables mode: every ClusterIP in
// the service-ips map and an endpoint chain per endpoint (kube-proxy
// writes each sync in one transaction).
func (c *checker) programmed() (bool, string, error) {
	n := *nServices
	if c.ipvs != nil {
		svcs, err := c.ipvs.GetServices()
		if err != nil {
			return false, "", err
		}
		var ours []*mobyipvs.Service
		for _, s := range svcs {
			if _, ok := benchVS(s); ok {
				ours = append(ours, s)
			}
		}
		if len(ours) < n {
			return false, fmt.Sprintf("%d/%d virtual servers", len(ours), n), nil
		}
		for _, s := range ours {
			a, _ := benchVS(s)
			if c.done[a] {
				continue
			}
			d, err := c.ipvs.GetDestinations(s)
			if err != nil {
				return false, "", err
			}
			live := 0
			for _, x := range d {
				if x.Weight > 0 {
					live++
				}
			}
			if live == *eps {
				c.done[a] = true
			}
		}
		if len(c.done) < n {
			return false, fmt.Sprintf("%d/%d virtual servers with all %d real servers", len(c.done), n, *eps), nil
		}
		addrs, err := kubeIPVS0()
		if err != nil {
			return false, "", err
		}
		k := 0
		for _, a := range addrs {
			if bench.IsBenchClusterIP(a, n) {
				k++
			}
		}
		if k < n {
			return false, fmt.Sprintf("%d/%d ClusterIPs on kube-ipvs0", k, n), nil
		}
		return true, "", nil
	}
	t := &nftables.Table{Name: "kube-proxy", Family: nftables.TableFamilyIPv4}
	set, err := c.nft.GetSetByName(t, "service-ips")
	if err != nil {
		return false, "no kube-proxy table yet", nil
	}
	elems, err := c.nft.GetSetElements(set)
	if err != nil {
		return false, "", err
	}
	k := 0
	for _, e := range elems {
		if len(e.Key) >= 4 {
			if a, ok := netip.AddrFromSlice(e.Key[:4]); ok && bench.IsBenchClusterIP(a, n) {
				k++
			}
		}
	}
	if k < n {
		return false, fmt.Sprintf("%d/%d ClusterIPs in service-ips", k, n), nil
	}
	// kube-proxy 1.36 dispatches each Service port with "dnat to numgen
	// random mod N map { i : ip . port }" (endpoint chains only with
	// session affinity): count the endpoints in those anonymous maps.
	sets, err := c.nft.GetSets(t)
	if err != nil {
		return false, "", err
	}
	cc := netip.MustParsePrefix(bench.ClusterCIDR)
	epc := 0
	for _, st := range sets {
		if !st.Anonymous || !st.IsMap {
			continue
		}
		el, err := c.nft.GetSetElements(st)
		if err != nil {
			return false, "", err
		}
		for _, e := range el {
			if a, ok := netip.AddrFromSlice(e.Val[:min(4, len(e.Val))]); ok && cc.Contains(a) {
				epc++
			}
		}
	}
	if epc < n**eps {
		return false, fmt.Sprintf("%d/%d endpoints in dnat maps", epc, n**eps), nil
	}
	return true, "", nil
}

// endpointLive reports whether, for the changed Service, ip is an
// endpoint taking traffic.
func (c *checker) endpointLive(svc int, ip string) (bool, error) {
	if c.ipvs != nil {
		s := &mobyipvs.Service{Address: net.IP(bench.ClusterIP(svc).AsSlice()), Protocol: unix.IPPROTO_TCP,
			Port: bench.ServicePort, AddressFamily: unix.AF_INET}
		d, err := c.ipvs.GetDestinations(s)
		if err != nil {
			return false, err
		}
		for _, x := range d {
			if x.Address.String() == ip && x.Weight > 0 {
				return true, nil
			}
		}
		return false, nil
	}
	// nftables mode: the Service port's chain dispatches with a numgen
	// map of "ip . port" (or, with affinity, a vmap of endpoint chains
	// "endpoint-HASH-ns/name/tcp/port__IP/PORT").
	t := &nftables.Table{Name: "kube-proxy", Family: nftables.TableFamilyIPv4}
	chains, err := c.nft.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, err
	}
	suffix := fmt.Sprintf("-%s/%s/tcp/http", bench.Namespace, bench.ServiceName(svc))
	var chain *nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == t.Name && strings.HasPrefix(ch.Name, "service-") && strings.HasSuffix(ch.Name, suffix) {
			chain = ch
		}
	}
	if chain == nil {
		return false, fmt.Errorf("no service chain *%s", suffix)
	}
	rules, err := c.nft.GetRules(t, chain)
	if err != nil {
		return false, err
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false, err
	}
	raw := addr.AsSlice()
	name := []byte("__" + ip + "/")
	for _, rule := range rules {
		for _, e := range rule.Exprs {
			l, ok := e.(*expr.Lookup)
			if !ok || !l.IsDestRegSet {
				continue
			}
			set, err := c.nft.GetSetByName(t, l.SetName)
			if err != nil {
				return false, err
			}
			elems, err := c.nft.GetSetElements(set)
			if err != nil {
				return false, err
			}
			for _, el := range elems {
				// A map's data is the raw "ip . port"; a verdict's
				// nested attributes (code, chain name) google/nftables
				// leaves undecoded in Val.
				if bytes.HasPrefix(el.Val, raw) || bytes.Contains(el.Val, name) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

func kubeIPVS0() ([]netip.Addr, error) {
	l, err := vnl.LinkByName("kube-ipvs0")
	if err != nil {
		return nil, nil
	}
	as, err := vnl.AddrList(l, vnl.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var r []netip.Addr
	for _, a := range as {
		if x, ok := netip.AddrFromSlice(a.IP); ok {
			r = append(r, x.Unmap())
		}
	}
	return r, nil
}

// ipsetEntries counts the entries of one ipset (one ipset process).
func ipsetEntries(set string) (int, error) {
	o, err := exec.Command("ipset", "save", set).Output()
	if err != nil {
		return 0, err
	}
	return strings.Count(string(o), "\nadd "), nil
}

// --- one-endpoint changes ---

func runChanges(r *bench.Run, check *checker) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	k := bench.ChangedService(*nServices)
	orig := bench.EndpointIP(k, *eps-1, *eps).String()
	total := *changes
	if total%2 == 1 {
		total++ // the last one restores the objects for the next proxy
	}
	for i := 0; i < total; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		es, err := cs.DiscoveryV1().EndpointSlices(bench.Namespace).Get(ctx, bench.SliceName(k), metav1.GetOptions{})
		cancel()
		if err != nil {
			return err
		}
		last := &es.Endpoints[len(es.Endpoints)-1]
		oldIP, newIP := orig, bench.AltEndpoint
		if last.Addresses[0] != orig {
			oldIP, newIP = bench.AltEndpoint, orig
		}
		last.Addresses = []string{newIP}
		if es.Annotations == nil {
			es.Annotations = map[string]string{}
		}
		beforeSync, _ := scrapeHist(syncMetric)
		beforeNP, _ := scrapeHist(netProg)
		// Observed counts from the update's start, as the trigger time
		// does: the proxy's watch can deliver the change, and the proxy
		// program it, before the update's own answer is back through the
		// VM's forwarded connection (seen: "observed" 3 ms after the
		// answer, against 25 ms of network programming).
		t0 := time.Now()
		es.Annotations[triggerAnn] = t0.Format(time.RFC3339Nano)
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		_, err = cs.DiscoveryV1().EndpointSlices(bench.Namespace).Update(ctx, es, metav1.UpdateOptions{})
		cancel()
		if err != nil {
			return err
		}
		deadline := t0.Add(*changeBound)
		var ch bench.Change
		// IPVS proxies are checked in the kernel alone (one virtual
		// server's real servers: cheap), and the sync metric read once
		// the change is seen. Scraping /metrics every poll, as before,
		// loaded the proxy being measured: a scrape costs nftvs about
		// 20 ms of CPU under emulation, so at a 20 ms poll the observer
		// took half a vCPU beside the sync it timed. nftables mode's check
		// lists every chain (20k at 10k Services), so there the metric
		// gates it, as before.
		gated := check.ipvs == nil
		for {
			moved := !gated
			if gated {
				h, _ := scrapeHist(syncMetric)
				moved = h.count > beforeSync.count
			}
			if moved {
				liveNew, err1 := check.endpointLive(k, newIP)
				liveOld, err2 := check.endpointLive(k, oldIP)
				if err := errors.Join(err1, err2); err != nil {
					logf("change %d: outside check: %v", i+1, err)
				} else if liveNew && !liveOld {
					ch.ObservedSeconds = time.Since(t0).Seconds()
					break
				}
			}
			if time.Now().After(deadline) {
				ch.TimedOut = true
				break
			}
			// 20 ms: a one-change sync takes tens of milliseconds, and a
			// coarser poll would round every change up to it.
			time.Sleep(changePoll)
		}
		if !ch.TimedOut {
			// The sync that programmed it: its metric is observed after
			// its last write, which for nftvs is IPVS's, but upstream IPVS
			// mode goes on to its iptables and ipsets for seconds after
			// the kernel's IPVS shows the change: wait for it within the
			// change's bound.
			if d, ok := histGrown(syncMetric, beforeSync, deadline, 50*time.Millisecond); ok {
				ch.Syncs, ch.SyncSeconds = d.count, d.sum/float64(d.count)
			} else {
				logf("change %d: programmed, but the sync metric did not move within the bound", i+1)
			}
			// nftvs observes network programming up to a poll (1 s) late.
			if d, ok := histGrown(netProg, beforeNP, time.Now().Add(3*time.Second), 200*time.Millisecond); ok {
				ch.NetProgSeconds = d.sum / float64(d.count)
			}
		}
		if i < *changes {
			r.Changes = append(r.Changes, ch)
			logf("change %d (%s → %s): sync %.4f s (%d syncs), network programming %.3f s, observed %.3f s, timed out %v",
				i+1, oldIP, newIP, ch.SyncSeconds, ch.Syncs, ch.NetProgSeconds, ch.ObservedSeconds, ch.TimedOut)
		} else {
			logf("restore (%s → %s): observed %.3f s, timed out %v", oldIP, newIP, ch.ObservedSeconds, ch.TimedOut)
		}
		if ch.TimedOut {
			return fmt.Errorf("change %d not programmed within %v", i+1, *changeBound)
		}
		time.Sleep(*changeGap)
	}
	return nil
}

// changePoll is how often a change's outside check looks: the kernel
// (IPVS proxies), or the sync metric and, once it moved, the kernel
// (nftables mode).
const changePoll = 20 * time.Millisecond

// --- the kernel's tables ---

func dumpIPVS() ([]bench.VirtualServer, error) {
	h, err := mobyipvs.New("")
	if err != nil {
		return nil, err
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil {
		return nil, err
	}
	var r []bench.VirtualServer
	for _, s := range svcs {
		a, _ := netip.AddrFromSlice(s.Address)
		v := bench.VirtualServer{Protocol: s.Protocol, Address: a.Unmap(), Port: s.Port, FWMark: s.FWMark,
			Scheduler: s.SchedName, Flags: s.Flags, Timeout: s.Timeout, Netmask: s.Netmask}
		ds, err := h.GetDestinations(s)
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			da, _ := netip.AddrFromSlice(d.Address)
			v.Real = append(v.Real, bench.RealServer{Address: da.Unmap(), Port: d.Port, Weight: d.Weight, Forward: d.ConnectionFlags & 0x7})
		}
		r = append(r, v)
	}
	return r, nil
}

func countObjects(r *bench.Run) bench.Counts {
	var c bench.Counts
	fail := func(what string, err error) { r.Errors = append(r.Errors, fmt.Sprintf("count %s: %v", what, err)) }
	if vss, err := dumpIPVS(); err != nil {
		fail("ipvs", err)
	} else {
		c.IPVSVirtualServers = len(vss)
		for _, v := range vss {
			c.IPVSRealServers += len(v.Real)
		}
	}
	if as, err := kubeIPVS0(); err != nil {
		fail("kube-ipvs0", err)
	} else {
		c.KubeIPVS0Addresses = len(as)
	}
	nc := &nftables.Conn{}
	tables, err := nc.ListTables()
	if err != nil {
		fail("nft tables", err)
	}
	c.NftTables = len(tables)
	for _, t := range tables {
		sets, err := nc.GetSets(t)
		if err != nil {
			fail("nft sets", err)
			continue
		}
		for _, s := range sets {
			c.NftSets++
			el, err := nc.GetSetElements(s)
			if err != nil {
				fail("nft elements", err)
				continue
			}
			c.NftElements += len(el)
		}
	}
	if chains, err := nc.ListChains(); err != nil {
		fail("nft chains", err)
	} else {
		c.NftChains = len(chains)
	}
	if n, err := countRules(); err != nil {
		fail("nft rules", err)
	} else {
		c.NftRules = n
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(cmd); err != nil {
			continue
		}
		o, err := exec.Command(cmd).Output()
		if err != nil {
			fail(cmd, err)
			continue
		}
		for _, l := range strings.Split(string(o), "\n") {
			if strings.HasPrefix(l, "-A ") {
				c.IptablesRules++
			}
		}
	}
	if _, err := exec.LookPath("ipset"); err == nil {
		o, err := exec.Command("ipset", "save").Output()
		if err != nil {
			fail("ipset", err)
		}
		for _, l := range strings.Split(string(o), "\n") {
			switch {
			case strings.HasPrefix(l, "create "):
				c.IpsetSets++
			case strings.HasPrefix(l, "add "):
				c.IpsetEntries++
			}
		}
	}
	return c
}

// countRules dumps every nftables rule of every table in one netlink
// request (google/nftables asks per chain: one round trip per chain).
func countRules() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, err
	}
	const seq = 1
	req := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], seq)
	req[16] = unix.AF_UNSPEC // nfgenmsg: family, version, resource id
	req[17] = unix.NFNETLINK_V0
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	n := 0
	for {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return n, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:k])
		if err != nil {
			return n, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return n, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
						return n, syscall.Errno(-e)
					}
				}
				return n, nil
			case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE:
				n++
			}
		}
	}
}
