//go:build vmtest

package proxier_test

// TestRollout81775 reproduces kubernetes/kubernetes#81775 with a real
// rolling update: a client pod reuses a few source ports towards a
// ClusterIP while the Service's only endpoint is replaced, and counts what
// fails, with nftvs's conntrack cleaner off and on, under both
// net.ipv4.vs.conn_reuse_mode settings.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

const (
	// rolloutTraffic is how long the clients run in one case.
	rolloutTraffic = 15 * time.Second
	// rolloutReplace is when (after the traffic starts) the new endpoint
	// is added; rolloutRemove when the old one leaves the EndpointSlice;
	// rolloutGone how long after that its pod disappears.
	rolloutReplace = 3 * time.Second
	rolloutRemove  = 8 * time.Second
	rolloutGone    = time.Second
	// rolloutPorts is the number of TCP source ports the client cycles
	// through; rolloutPace the least time between two connections of
	// one port (or two UDP requests).
	rolloutPorts    = 8
	rolloutPace     = 100 * time.Millisecond
	rolloutTCPBase  = 41000
	rolloutUDPPort  = 42053
	rolloutRequests = 1000 // bound of attempts per port and case
)

// rollCase is one run of the rollout.
type rollCase struct {
	reuseMode int
	graceful  bool
	cleaner   bool
}

func (rc rollCase) variant() string {
	if rc.graceful {
		return "graceful"
	}
	return "abrupt"
}

func (rc rollCase) cleanerName() string {
	if rc.cleaner {
		return "on"
	}
	return "off"
}

func (rc rollCase) String() string {
	return fmt.Sprintf("conn_reuse_mode=%d %s cleaner-%s", rc.reuseMode, rc.variant(), rc.cleanerName())
}

// attempt is one request of the client.
type attempt struct {
	start time.Time
	took  time.Duration
	port  int
	pod   string
	err   error
}

// rollResult is what one protocol saw in one case.
type rollResult struct {
	attempts []attempt
	synRetr  int // TcpExtTCPSynRetrans difference (TCP only)
	syncAt   time.Time
	// cleanedAt (UDP, cleaner on) is when the first conntrack clean after
	// syncAt ended. A request sent between the two still follows the old
	// flow, and the old pod's answer is lost when the clean deletes that
	// flow under it: the race every cleaner has (kube-proxy's included),
	// a few milliseconds wide, wider when the host starves the VM. The
	// bar (failuresAfter) starts here; such a failure is reported.
	cleanedAt time.Time
	maxStall  time.Duration // the VM's longest stall during the run (TCP only)
}

// failures are the attempts that failed on the network: a connect or
// read error, or no answer in time. A connect refused by the client's
// own kernel before any packet left (EADDRNOTAVAIL: the fixed source
// port's 4-tuple still held by a socket of the client) is not one; see
// localBusy.
func (r rollResult) failures() []attempt {
	var out []attempt
	for _, a := range r.attempts {
		if a.err != nil && !errors.Is(a.err, syscall.EADDRNOTAVAIL) {
			out = append(out, a)
		}
	}
	return out
}

// synLossDelay: a client SYN that is dropped (#81775's symptom) is sent
// again after the initial RTO of 1 s, so its connect takes at least that.
const synLossDelay = 900 * time.Millisecond

// synDelayed are the connects that a lost SYN delayed. The bar is on
// these, not on the TcpExtTCPSynRetrans counter (reported beside them):
// the counter is per network namespace and also counts the SYN-ACKs
// that the client pod's own listener sends again, which say nothing
// about the proxy. Any client SYN retransmit shows up here as a connect
// of 1 s or more, or as a failure.
func (r rollResult) synDelayed() []attempt {
	var out []attempt
	for _, a := range r.attempts {
		if a.err == nil && a.took >= synLossDelay {
			out = append(out, a)
		}
	}
	return out
}

// localBusy counts the connects the client's kernel refused with
// EADDRNOTAVAIL; the client tries that port again at the next pace.
// Seen only under heavy host load (2 cores shared with other emulated
// VMs), with no SYN sent and no SYN retransmit: a limit of the
// fixed-source-port client, not of the proxy.
func (r rollResult) localBusy() int {
	n := 0
	for _, a := range r.attempts {
		if errors.Is(a.err, syscall.EADDRNOTAVAIL) {
			n++
		}
	}
	return n
}

// failuresAfter counts the failures that started after the removal was
// synced, and its flows cleaned when that is known (all of them when it
// never was).
func (r rollResult) failuresAfter() int {
	n := 0
	for _, a := range r.failures() {
		if r.syncAt.IsZero() || a.start.After(r.bar()) {
			n++
		}
	}
	return n
}

// bar is when the removal was done: synced, and cleaned if known.
func (r rollResult) bar() time.Time {
	if r.cleanedAt.After(r.syncAt) {
		return r.cleanedAt
	}
	return r.syncAt
}

// inNS runs fn on a goroutine whose thread is in n for good (the thread
// dies with the goroutine).
//
// The thread is also pinned to CPU 0. A packet a socket sends through a
// veth is queued on the backlog of the CPU that sent it: a client thread
// that moved to the other vCPU between closing a connection (its RST)
// and opening the next from the same source port (its SYN) can have the
// SYN processed before the RST, so the node's conntrack still holds the
// old flow and IPVS drops the SYN of the "reused" connection, as it does
// for a confirmed old conntrack entry. A real client's packets leave
// through one NIC queue, in order.
func inNS(n *netNS, fn func()) {
	runtime.LockOSThread()
	if err := netns.Set(n.NS); err != nil {
		panic(fmt.Sprintf("enter netns %s: %v", n.Name, err))
	}
	var cpu0 unix.CPUSet
	cpu0.Set(0)
	if err := unix.SchedSetaffinity(0, &cpu0); err != nil {
		panic(fmt.Sprintf("pin the client thread to CPU 0: %v", err))
	}
	fn()
}

// synRetrans reads TcpExtTCPSynRetrans of n (/proc/thread-self: the
// reading thread's namespace), or -1.
func synRetrans(n *netNS) int {
	v := -1
	_ = n.do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		var header []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "TcpExt:" {
				continue
			}
			if header == nil {
				header = f
				continue
			}
			for i, h := range header {
				if h == "TCPSynRetrans" && i < len(f) {
					v, _ = strconv.Atoi(f[i])
				}
			}
			break
		}
		return nil
	})
	return v
}

// reuseDialer binds a fixed source port with SO_REUSEADDR.
func reuseDialer(src netip.AddrPort, timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout:   timeout,
		LocalAddr: net.TCPAddrFromAddrPort(src),
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
			return errors.Join(err, serr)
		},
	}
}

// tcpOnce connects from src to dst, reads the answer and closes with a
// reset (SO_LINGER 0: no TIME_WAIT at either end), all within ioTimeout.
func tcpOnce(src, dst netip.AddrPort) (string, error) {
	deadline := time.Now().Add(ioTimeout)
	c, err := reuseDialer(src, ioTimeout).Dial("tcp4", dst.String())
	if err != nil {
		return "", err
	}
	tc := c.(*net.TCPConn)
	defer func() {
		_ = tc.SetLinger(0)
		tc.Close()
	}()
	_ = tc.SetDeadline(deadline)
	b, err := io.ReadAll(tc)
	if err != nil {
		return "", fmt.Errorf("connected, no answer: %w", err)
	}
	if len(b) == 0 {
		return "", errors.New("connected, closed without an answer")
	}
	a, err := parseAnswer(b)
	return a.Pod, err
}

// tcpClients runs rolloutPorts connection loops from cl to dst, one per
// source port, until stop.
func tcpClients(cl *pod, dst netip.AddrPort, stop <-chan struct{}) (all []attempt, ssOut string) {
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		ssOnce sync.Once
	)
	for i := range rolloutPorts {
		port := rolloutTCPBase + i
		wg.Add(1)
		go func() {
			defer wg.Done()
			inNS(cl.ns, func() {
				src := netip.AddrPortFrom(cl.v4, uint16(port))
				for range rolloutRequests {
					select {
					case <-stop:
						return
					default:
					}
					start := time.Now()
					p, err := tcpOnce(src, dst)
					a := attempt{start: start, took: time.Since(start), port: port, pod: p, err: err}
					if errors.Is(err, syscall.EADDRNOTAVAIL) {
						// Who still holds the 4-tuple in the client's
						// own socket table.
						ssOnce.Do(func() {
							ssOut = fmt.Sprintf("port %d at %s:\n%s", port, start.Format("15:04:05.000"),
								command("ip", "netns", "exec", cl.ns.Name, "ss", "-tanoie", "sport", "=", fmt.Sprintf(":%d", port)))
						})
					}
					mu.Lock()
					all = append(all, a)
					mu.Unlock()
					if d := rolloutPace - time.Since(start); d > 0 {
						time.Sleep(d)
					}
				}
			})
		}()
	}
	wg.Wait()
	return all, ssOut
}

// udpClient asks dst from one fixed source port of cl, one datagram per
// request, each answered within ioTimeout or failed, until stop.
func udpClient(cl *pod, dst netip.AddrPort, stop <-chan struct{}) []attempt {
	var all []attempt
	done := make(chan struct{})
	go func() {
		defer close(done)
		inNS(cl.ns, func() {
			src := netip.AddrPortFrom(cl.v4, rolloutUDPPort)
			c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst))
			if err != nil {
				all = append(all, attempt{start: time.Now(), port: rolloutUDPPort, err: err})
				return
			}
			defer c.Close()
			buf := make([]byte, 512)
			for range rolloutRequests * rolloutPorts {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				a := attempt{start: start, port: rolloutUDPPort}
				// A late answer of an earlier request is not this one's.
				_ = c.SetReadDeadline(time.Now())
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				_, a.err = c.Write([]byte("query\n"))
				if a.err == nil {
					_ = c.SetReadDeadline(start.Add(ioTimeout))
					var k int
					if k, a.err = c.Read(buf); a.err == nil {
						var ans answer
						ans, a.err = parseAnswer(buf[:k])
						a.pod = ans.Pod
					}
				}
				a.took = time.Since(start)
				all = append(all, a)
				if d := rolloutPace - time.Since(start); d > 0 {
					time.Sleep(d)
				}
			}
		})
	}()
	<-done
	return all
}

// removePod makes p disappear: its veth goes, and its host routes with it.
func (tb *testbed) removePod(t *testing.T, p *pod) {
	t.Helper()
	l, err := tb.node.NL.LinkByName("vp-" + p.name)
	if err == nil {
		err = tb.node.NL.LinkDel(l)
	}
	if err != nil {
		t.Errorf("remove pod %s: %v", p.name, err)
	}
}

// grepLines keeps the lines of s holding any of the words.
func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// rolloutRow is one line of the final table.
type rolloutRow struct {
	kernel string
	rc     rollCase
	try    int // 1: the case again after a starved run
	proto  string
	res    rollResult
	oldAfterTerm,
	attempts int
}

func TestRollout81775(t *testing.T) {
	requireVM(t)
	begin := time.Now()
	release, _ := ipvs.KernelRelease()
	tb := newTestbed(t)
	cl := tb.addPod(t, "cl", nodeName, "10.244.1.99", "fd00:244:1::99")
	var rows []rolloutRow
	t.Cleanup(func() {
		var b strings.Builder
		fmt.Fprintf(&b, "%-22s %-5s %-9s %-7s %-3s %-5s %8s %6s %8s %8s %12s %14s %12s %10s %8s\n",
			"kernel", "reuse", "variant", "cleaner", "try", "proto", "attempts", "failed", "synLost", "synRetr", "failedAfter", "oldAfterTerm", "syncAfterRm", "localBusy", "stall")
		for _, r := range rows {
			syn, lost := strconv.Itoa(r.res.synRetr), strconv.Itoa(len(r.res.synDelayed()))
			if r.proto == "udp" {
				syn, lost = "-", "-"
			}
			sync := "never"
			if !r.res.syncAt.IsZero() {
				sync = "synced"
			}
			stall := "-"
			if r.proto == "tcp" {
				stall = r.res.maxStall.Round(time.Millisecond).String()
			}
			fmt.Fprintf(&b, "%-22s %-5d %-9s %-7s %-3d %-5s %8d %6d %8s %8s %12d %14d %12s %10d %8s\n",
				r.kernel, r.rc.reuseMode, r.rc.variant(), r.rc.cleanerName(), r.try+1, r.proto, r.attempts,
				len(r.res.failures()), lost, syn, r.res.failuresAfter(), r.oldAfterTerm, sync, r.res.localBusy(), stall)
		}
		fmt.Fprintf(&b, "suite ran %v", time.Since(begin).Round(time.Second))
		t.Logf("#81775 rollout table (synLost: connects a lost SYN delayed by 1 s, the bar; synRetr: the client netns's TcpExtTCPSynRetrans, which also counts its listener's SYN-ACKs; failedAfter: failures that started after nftvs synced the removal (UDP with the cleaner: and its clean of the old flow ended); "+
			"oldAfterTerm: answers by the old pod after it stopped being ready; localBusy: connects the client's own kernel refused with EADDRNOTAVAIL, not counted as failed; stall: the VM's longest stall, a case stalled over 300ms that missed the bar runs again as try 2):\n%s", b.String())
	})
	t.Cleanup(func() { tb.node.sysctls(t, "net/ipv4/vs/conn_reuse_mode=1") })

	var cases []rollCase
	for _, mode := range []int{1, 0} {
		for _, graceful := range []bool{true, false} {
			for _, cleaner := range []bool{false, true} {
				cases = append(cases, rollCase{reuseMode: mode, graceful: graceful, cleaner: cleaner})
			}
		}
	}
	for i, rc := range cases {
		t.Run(strings.ReplaceAll(rc.String(), " ", "_"), func(t *testing.T) {
			// A case whose VM was starved by the host (software
			// emulation on 2 shared cores) runs once more: a SYN
			// retransmit then says nothing about the proxy. The stall is
			// measured, reported in the table, and only a starved run
			// is repeated; the repeat must pass.
			var problems []string
			for try := range 2 {
				tcp, udp, oldTCP, oldUDP := runRollout(t, tb, cl, i+try*len(cases), rc)
				rows = append(rows,
					rolloutRow{kernel: release, rc: rc, try: try, proto: "tcp", res: tcp, oldAfterTerm: oldTCP, attempts: len(tcp.attempts)},
					rolloutRow{kernel: release, rc: rc, try: try, proto: "udp", res: udp, oldAfterTerm: oldUDP, attempts: len(udp.attempts)})
				problems = rolloutProblems(rc, tcp, udp)
				if len(problems) == 0 || !tcp.starved() || try == 1 {
					break
				}
				t.Logf("%s: %s; the VM was starved during the run (host load: longest stall %v, %d of %d TCP attempts): running the case again",
					rc, strings.Join(problems, "; "), tcp.maxStall.Round(time.Millisecond), len(tcp.attempts), rolloutNominal)
			}
			for _, p := range problems {
				t.Error(p)
			}
		})
	}
}

// A run is starved when the VM went longer than rolloutStarved without
// running a ready goroutine (see stallMonitor), or when its TCP client
// made fewer than 85% of the rolloutNominal attempts an unloaded VM
// makes (1,090–1,190 of 1,200 measured on an idle host).
const (
	rolloutStarved = 300 * time.Millisecond
	rolloutNominal = rolloutPorts * int(rolloutTraffic/rolloutPace)
)

func (r rollResult) starved() bool {
	return r.maxStall >= rolloutStarved || len(r.attempts) < rolloutNominal*85/100
}

// rolloutProblems is what the #81775 bar says of one case: cleaner-off
// runs are reported, not asserted.
func rolloutProblems(rc rollCase, tcp, udp rollResult) []string {
	if !rc.cleaner {
		return nil
	}
	var out []string
	if rc.graceful {
		if n := len(tcp.failures()); n > 0 {
			out = append(out, fmt.Sprintf("%s: %d TCP connections failed, want 0", rc, n))
		}
		if n := len(tcp.synDelayed()); n > 0 {
			out = append(out, fmt.Sprintf("%s: %d TCP connects delayed by a lost SYN (took over %v), want 0 (TcpExtTCPSynRetrans +%d)",
				rc, n, synLossDelay, tcp.synRetr))
		}
		if n := udp.failuresAfter(); n > 0 {
			out = append(out, fmt.Sprintf("%s: %d UDP requests failed after nftvs synced the removal, want 0", rc, n))
		}
	} else if n := tcp.failuresAfter(); n > 0 {
		out = append(out, fmt.Sprintf("%s: %d TCP connections failed after nftvs synced the removal, want 0", rc, n))
	}
	if tcp.syncAt.IsZero() || udp.syncAt.IsZero() {
		out = append(out, fmt.Sprintf("%s: nftvs never synced the removal of the old endpoint (tcp %v, udp %v)", rc, tcp.syncAt, udp.syncAt))
	}
	return out
}

// stallMonitor measures, until stop, the longest gap between two ticks
// of a 10 ms ticker beyond the period: how long the VM ran nothing that
// was ready to run. Read the result after stop is closed.
func stallMonitor(stop <-chan struct{}) func() time.Duration {
	var (
		worst time.Duration
		done  = make(chan struct{})
	)
	go func() {
		defer close(done)
		const period = 10 * time.Millisecond
		tick := time.NewTicker(period)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				if gap := now.Sub(last) - period; gap > worst {
					worst = gap
				}
				last = now
			}
		}
	}()
	return func() time.Duration { <-done; return worst }
}

// runRollout runs case i: traffic from cl to a fresh Service while its
// endpoint is replaced.
func runRollout(t *testing.T, tb *testbed, cl *pod, i int, rc rollCase) (tcp, udp rollResult, oldTCP, oldUDP int) {
	clusterIP := fmt.Sprintf("10.96.1.%d", 10+i)
	oldPod := tb.addPod(t, fmt.Sprintf("o%d", i), nodeName, fmt.Sprintf("10.244.1.%d", 110+i), fmt.Sprintf("fd00:244:1::%x", 0x110+i))
	newPod := tb.addPod(t, fmt.Sprintf("n%d", i), nodeName, fmt.Sprintf("10.244.1.%d", 150+i), fmt.Sprintf("fd00:244:1::%x", 0x150+i))
	oldTCPRS := netip.AddrPortFrom(oldPod.v4, podTCPPort)
	oldUDPRS := netip.AddrPortFrom(oldPod.v4, podUDPPort)

	var (
		mu                             sync.Mutex
		syncLog                        []string
		tcpSynced, udpSync, udpCleaned time.Time
		t0                             time.Time
	)
	rel := func(at time.Time) string {
		if at.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%+.3fs", at.Sub(t0).Seconds())
	}
	onSync := func(res proxier.SyncResult, err error) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if len(res.Removed) == 0 && len(res.Stale) == 0 && err == nil {
			return
		}
		var rm []string
		for _, r := range res.Removed {
			rm = append(rm, r.String())
			if r.VirtualServer.Address == netip.MustParseAddr(clusterIP) {
				switch r.RealServer.AddrPort() {
				case oldTCPRS:
					if tcpSynced.IsZero() {
						tcpSynced = now
					}
				case oldUDPRS:
					if udpSync.IsZero() {
						udpSync = now
					}
				}
			}
		}
		syncLog = append(syncLog, fmt.Sprintf("%s sync (took %v): removed %v; queued %d stale for conntrack; err %v",
			now.Format("15:04:05.000"), res.Duration.Round(time.Millisecond), rm, len(res.Stale), err))
	}
	var ct conntrack.Interface
	if rc.cleaner {
		cc, err := conntrack.New()
		if err != nil {
			t.Fatal(err)
		}
		// The clean runs after the sync (proxier/cleanqueue.go): log
		// each one as it ends.
		ct = cleanLogger{cc, func(stale []conntrack.Stale, r conntrack.Result, err error) {
			mu.Lock()
			defer mu.Unlock()
			for _, st := range stale {
				if st.Endpoint == oldUDPRS && udpCleaned.IsZero() {
					udpCleaned = time.Now()
				}
			}
			syncLog = append(syncLog, fmt.Sprintf("%s conntrack clean of %d stale: deleted %d (vanished %d, scanned %d); err %v",
				time.Now().Format("15:04:05.000"), len(stale), r.Deleted, r.Vanished, r.Scanned, err))
		}}
	}
	c := startClusterWith(t, tb, ct, onSync)
	tb.node.sysctls(t, fmt.Sprintf("net/ipv4/vs/conn_reuse_mode=%d", rc.reuseMode))

	svc := service(fmt.Sprintf("roll%d", i), clusterIP, withDNS)
	c.apply(t, svc, slice4(svc, readyEP(oldPod)))
	c.waitIPVS(t, tcpKey(clusterIP, 80), weights(podTCPPort, false, 1, oldPod))
	c.waitIPVS(t, udpKey(clusterIP, 53), weights(podUDPPort, false, 1, oldPod))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var tcpAttempts, udpAttempts []attempt
	var ssOut string
	synBefore := synRetrans(cl.ns)
	t0 = time.Now()
	stalled := stallMonitor(stop)
	wg.Add(2)
	go func() {
		defer wg.Done()
		tcpAttempts, ssOut = tcpClients(cl, netip.AddrPortFrom(netip.MustParseAddr(clusterIP), 80), stop)
	}()
	go func() {
		defer wg.Done()
		udpAttempts = udpClient(cl, netip.AddrPortFrom(netip.MustParseAddr(clusterIP), 53), stop)
	}()

	var tReplace, tRemove, tGone time.Time
	time.Sleep(time.Until(t0.Add(rolloutReplace)))
	tReplace = time.Now()
	if rc.graceful {
		c.apply(t, svc, slice4(svc, readyEP(newPod), servingTerminatingEP(oldPod)))
	} else {
		c.apply(t, svc, slice4(svc, readyEP(newPod), readyEP(oldPod)))
	}
	time.Sleep(time.Until(t0.Add(rolloutRemove)))
	tRemove = time.Now()
	c.apply(t, svc, slice4(svc, readyEP(newPod)))
	time.Sleep(time.Until(tRemove.Add(rolloutGone)))
	// What the kernel holds for the old pod when it disappears.
	words := []string{clusterIP, oldPod.v4.String()}
	ctBefore := grepLines(command("conntrack", "-L"), words...)
	ipvsBefore := grepLines(command("ipvsadm", "-Lnc"), words...)
	tGone = time.Now()
	tb.removePod(t, oldPod)
	time.Sleep(time.Until(t0.Add(rolloutTraffic)))
	close(stop)
	wg.Wait()
	synAfter := synRetrans(cl.ns)

	mu.Lock()
	tcp = rollResult{attempts: tcpAttempts, synRetr: synAfter - synBefore, syncAt: tcpSynced, maxStall: stalled()}
	udp = rollResult{attempts: udpAttempts, syncAt: udpSync, cleanedAt: udpCleaned}
	logged := strings.Join(syncLog, "\n  ")
	mu.Unlock()
	if synBefore < 0 || synAfter < 0 {
		t.Errorf("TcpExtTCPSynRetrans unreadable in %s", cl.ns.Name)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%s, ClusterIP %s, old %s, new %s; t0 %s\n", rc, clusterIP, oldPod.v4, newPod.v4, t0.Format("15:04:05.000"))
	replace := "new endpoint added, old one ready"
	if rc.graceful {
		replace = "new endpoint added, old one serving+terminating"
	}
	fmt.Fprintf(&b, "  %s: %s\n  %s: old endpoint removed from the EndpointSlice\n", rel(tReplace), replace, rel(tRemove))
	fmt.Fprintf(&b, "  %s: nftvs synced the removal of %s (TCP); %s: of %s (UDP)\n", rel(tcpSynced), oldTCPRS, rel(udpSync), oldUDPRS)
	fmt.Fprintf(&b, "  %s: old pod gone (veth deleted)\n", rel(tGone))
	fmt.Fprintf(&b, "  syncs with removals:\n  %s\n", logged)
	for _, pr := range []struct {
		name string
		as   []attempt
		res  *rollResult
		old  *int
	}{{"tcp", tcpAttempts, &tcp, &oldTCP}, {"udp", udpAttempts, &udp, &oldUDP}} {
		byPhase := map[string]map[string]int{}
		var slow []string
		for _, a := range pr.as {
			phase := "before"
			switch {
			case a.start.After(tGone):
				phase = "after-gone"
			case a.start.After(tRemove):
				phase = "after-remove"
			case a.start.After(tReplace):
				phase = "after-replace"
			}
			if byPhase[phase] == nil {
				byPhase[phase] = map[string]int{}
			}
			who := a.pod
			if a.err != nil {
				who = "FAILED"
			}
			byPhase[phase][who]++
			// A SYN retransmit costs a connect at least 1 s: which
			// phase, port and pod it hit says where the SYN was lost.
			if a.err == nil && a.took >= synLossDelay {
				slow = append(slow, fmt.Sprintf("    slow %s connect started %s (%s), port %d, took %v, answered by %s",
					pr.name, rel(a.start), phase, a.port, a.took.Round(time.Millisecond), a.pod))
			}
			if a.err == nil && a.pod == oldPod.name && (rc.graceful && a.start.After(tReplace) || a.start.After(tRemove)) {
				*pr.old++
			}
		}
		fmt.Fprintf(&b, "  %s: %d attempts; by phase: before %v, after-replace %v, after-remove %v, after-gone %v\n",
			pr.name, len(pr.as), byPhase["before"], byPhase["after-replace"], byPhase["after-remove"], byPhase["after-gone"])
		for _, l := range slow {
			fmt.Fprintln(&b, l)
		}
		for _, f := range pr.res.failures() {
			after := "before the sync"
			switch {
			case pr.res.syncAt.IsZero() || f.start.After(pr.res.bar()):
				after = "AFTER the sync"
			case f.start.After(pr.res.syncAt):
				after = "after the sync, before its flows were cleaned"
			}
			fmt.Fprintf(&b, "    %s failure started %s (%s), port %d, took %v: %v\n",
				pr.name, rel(f.start), after, f.port, f.took.Round(time.Millisecond), f.err)
		}
	}
	if ssOut != "" {
		fmt.Fprintf(&b, "  EADDRNOTAVAIL: ss in %s, %s\n", cl.ns.Name, ssOut)
	}
	fmt.Fprintf(&b, "  TcpExtTCPSynRetrans %d → %d (+%d)\n", synBefore, synAfter, tcp.synRetr)
	if len(tcp.failures())+len(udp.failures()) > 0 || tcp.synRetr > 0 {
		fmt.Fprintf(&b, "  conntrack -L (ClusterIP or old pod) just before the old pod disappeared:\n%s\n", ctBefore)
		fmt.Fprintf(&b, "  ipvsadm -Lnc (ClusterIP or old pod) just before the old pod disappeared:\n%s\n", ipvsBefore)
		fmt.Fprintf(&b, "  conntrack -L at the end:\n%s\n", grepLines(command("conntrack", "-L"), words...))
		fmt.Fprintf(&b, "  ipvsadm -Lnc at the end:\n%s\n", grepLines(command("ipvsadm", "-Lnc"), words...))
	}
	if s := c.syncErrors(); s != "" {
		fmt.Fprintf(&b, "%s\n", s)
	}
	t.Log(b.String())
	return tcp, udp, oldTCP, oldUDP
}

// cleanLogger is a conntrack cleaner that reports each Clean's outcome.
type cleanLogger struct {
	conntrack.Interface
	report func([]conntrack.Stale, conntrack.Result, error)
}

func (c cleanLogger) Clean(stale []conntrack.Stale) (conntrack.Result, error) {
	r, err := c.Interface.Clean(stale)
	c.report(stale, r, err)
	return r, err
}
