package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/ipvs"
)

type outcome struct {
	res SyncResult
	err error
}

// runLoop runs f's proxier's sync loop until the test ends, and hands
// every sync's outcome to the returned channel.
func runLoop(t *testing.T, f *fakeNode) <-chan outcome {
	t.Helper()
	results := make(chan outcome, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.p.Run(ctx, func(res SyncResult, err error) { results <- outcome{res, err} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return results
}

// nextSync waits (in real time) for the loop's next sync.
func nextSync(t *testing.T, results <-chan outcome, what string) outcome {
	t.Helper()
	select {
	case o := <-results:
		return o
	case <-time.After(10 * time.Second):
		t.Fatalf("no sync: %s", what)
		return outcome{}
	}
}

// noSync checks that the loop does not sync while its clock stands still.
func noSync(t *testing.T, results <-chan outcome, what string) {
	t.Helper()
	select {
	case o := <-results:
		t.Fatalf("a sync (full %v, err %v) %s", o.res.Full, o.err, what)
	case <-time.After(100 * time.Millisecond):
	}
}

// startedLoop runs the sync loop of a node with one Service (SyncPeriod
// 30 s, MinSyncPeriod 5 s) until its first sync, a full one.
func startedLoop(t *testing.T) (*fakeNode, <-chan outcome) {
	t.Helper()
	f := newFakeNodeWith(t, func(c *Config) {
		c.SyncPeriod = 30 * time.Second
		c.MinSyncPeriod = 5 * time.Second
		c.DrainCheckPeriod = time.Hour
	})
	f.addService(makeService("ns", "web", clusterIPs("10.96.0.10")))
	results := runLoop(t, f)
	if o := nextSync(t, results, "for the first change"); o.err != nil || !o.res.Full {
		t.Fatalf("first sync: full %v, err %v; want a full one", o.res.Full, o.err)
	}
	return f, results
}

// TestRunLoop drives the sync loop by a fake clock: the first change
// syncs at once (a full sync: the first), the next waits MinSyncPeriod
// after the last sync, and SyncPeriod brings a Repair with no change at
// all (nothing replanned), and FullReplanPeriod a full one.
func TestRunLoop(t *testing.T) {
	f, results := startedLoop(t)
	f.addService(makeService("ns", "api", clusterIPs("10.96.0.11")))
	noSync(t, results, "within MinSyncPeriod of the last one")
	f.clock.Step(5 * time.Second)
	if o := nextSync(t, results, "MinSyncPeriod after the last one"); o.err != nil || o.res.Full || o.res.ServicesReplanned != 1 {
		t.Errorf("second sync: full %v, %d Services replanned, err %v; want a partial one of ns/api", o.res.Full, o.res.ServicesReplanned, o.err)
	}
	noSync(t, results, "with nothing changed")
	f.clock.Step(25 * time.Second)
	if o := nextSync(t, results, "SyncPeriod after the start"); o.err != nil || o.res.Full || !o.res.Repair || o.res.ServicesReplanned != 0 {
		t.Errorf("periodic sync: full %v, repair %v, %d Services replanned, err %v; want a repair replanning nothing",
			o.res.Full, o.res.Repair, o.res.ServicesReplanned, o.err)
	}
	for range FullReplanPeriod / (30 * time.Second) {
		f.clock.Step(30 * time.Second)
		if o := nextSync(t, results, "every SyncPeriod"); o.res.Full {
			return // the hourly full replan
		}
	}
	t.Error("no full sync within FullReplanPeriod of periodic syncs")
}

// TestRunLoopBacksOff: a failed sync is retried after a backoff that
// doubles (1s, then 2s), on the loop's clock, and a success ends it.
func TestRunLoopBacksOff(t *testing.T) {
	f := newFakeNodeWith(t, func(c *Config) {
		c.SyncPeriod = time.Hour
		c.MinSyncPeriod = time.Nanosecond
		c.DrainCheckPeriod = time.Hour
	})
	f.kern.Inject = func(op ipvs.Op, key ipvs.VSKey, _ *ipvs.RealServer) error {
		if op == ipvs.OpAddVirtualServer {
			return fmt.Errorf("add virtual server %s: %w", key, syscall.ENOMEM)
		}
		return nil
	}
	f.addService(makeService("ns", "web", clusterIPs("10.96.0.10")))
	results := runLoop(t, f)
	if o := nextSync(t, results, "at start"); o.err == nil {
		t.Fatal("IPVS out of memory did not fail the sync")
	}
	// Each wait is the backoff and MinSyncPeriod (1ns): a millisecond
	// more than the backoff ends it.
	noSync(t, results, "before the first backoff")
	f.clock.Step(time.Second + time.Millisecond)
	if o := nextSync(t, results, "after 1s"); o.err == nil {
		t.Fatal("the retry did not fail")
	}
	f.clock.Step(time.Second)
	noSync(t, results, "1s into a 2s backoff")
	f.kern.Inject = nil
	f.clock.Step(time.Second + time.Millisecond)
	if o := nextSync(t, results, "after 2s more"); o.err != nil {
		t.Fatalf("the second retry failed: %v", o.err)
	}
	noSync(t, results, "after a success")
}

// TestRunLoopChangeDoesNotWaitForARepairsRead: the periodic repair reads
// the kernel (10k virtual servers, most of a second under emulation) off
// the sync loop, so a change that comes meanwhile is synced at once; the
// repair follows when its read is done (MinSyncPeriod after the change),
// and the next change does not wait MinSyncPeriod after the repair.
func TestRunLoopChangeDoesNotWaitForARepairsRead(t *testing.T) {
	f, results := startedLoop(t)
	reading, release := make(chan struct{}), make(chan struct{})
	f.ipvs.mu.Lock()
	f.ipvs.beforeDump = func() {
		close(reading)
		<-release
	}
	f.ipvs.mu.Unlock()
	f.clock.Step(30 * time.Second)
	select {
	case <-reading:
	case <-time.After(10 * time.Second):
		t.Fatal("the repair did not read IPVS at SyncPeriod")
	}
	f.ipvs.mu.Lock()
	f.ipvs.beforeDump = nil
	f.ipvs.mu.Unlock()

	f.addService(makeService("ns", "api", clusterIPs("10.96.0.11")))
	if o := nextSync(t, results, "for a change while the repair reads"); o.err != nil || o.res.Repair || o.res.ServicesReplanned != 1 {
		t.Fatalf("sync while the repair reads: repair %v, %d Services replanned, err %v; want the change alone", o.res.Repair, o.res.ServicesReplanned, o.err)
	}
	close(release)
	noSync(t, results, "within MinSyncPeriod of the change")
	f.clock.Step(5 * time.Second)
	if o := nextSync(t, results, "the repair, once read"); o.err != nil || !o.res.Repair {
		t.Fatalf("after the read: repair %v, err %v; want the repair", o.res.Repair, o.err)
	}
	f.addService(makeService("ns", "db", clusterIPs("10.96.0.12")))
	if o := nextSync(t, results, "a change right after the repair"); o.err != nil || o.res.Repair || o.res.ServicesReplanned != 1 {
		t.Fatalf("change after the repair: repair %v, %d replanned, err %v", o.res.Repair, o.res.ServicesReplanned, o.err)
	}
}

// TestRepairFromAnEarlierRead: what a repair read before the changes
// synced since does not undo them. The drift it saw (a virtual server and
// an address taken behind nftvs's back) is repaired; a Service deleted
// since the read does not come back, and one created since is not taken
// for lost.
func TestRepairFromAnEarlierRead(t *testing.T) {
	f := newFakeNode(t)
	a := makeService("ns", "a", clusterIPs("10.96.0.10"))
	b := makeService("ns", "b", clusterIPs("10.96.0.11"))
	f.addService(a, httpSlice(a, ready("10.244.2.1", "node-b")))
	f.addService(b, httpSlice(b, ready("10.244.2.2", "node-b")))
	f.sync(t, false)

	_ = f.kern.DeleteVirtualServer(ipvs.VSKey{Address: netip.MustParseAddr("10.96.0.11"), Protocol: ipvs.TCP, Port: 80})
	if _, _, err := f.addrs.SyncAddresses(ipvs.DummyName, []netip.Addr{netip.MustParseAddr("10.96.0.10")}); err != nil {
		t.Fatal(err)
	}
	read := f.p.readForRepair()

	f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: "a"}, nil)
	c := makeService("ns", "c", clusterIPs("10.96.0.12"))
	f.addService(c, httpSlice(c, ready("10.244.2.3", "node-b")))
	f.sync(t, false)

	f.ipvs.Reset()
	res, err := f.p.repair(read)
	if err != nil {
		t.Fatal(err)
	}
	want := ipvs.WriteCounts{AddVirtualServer: 1, AddRealServer: 1}
	if w := f.ipvs.Writes(); w != want || res.IPVS.Writes != want {
		t.Errorf("the repair wrote %+v to IPVS (it says %+v), want ns/b's virtual server back alone: %+v", w, res.IPVS.Writes, want)
	}
	got := f.ipvsText()
	for _, s := range []string{"10.96.0.11:80", "10.244.2.2:8080", "10.96.0.12:80", "10.244.2.3:8080"} {
		if !strings.Contains(got, s) {
			t.Errorf("after the repair IPVS lacks %s:\n%s", s, got)
		}
	}
	if strings.Contains(got, "10.96.0.10:80") {
		t.Errorf("ns/a, deleted after the read, came back:\n%s", got)
	}
	if got, want := f.addresses(t), []netip.Addr{netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("10.96.0.12")}; !slices.Equal(got, want) {
		t.Errorf("kube-ipvs0 holds %v after the repair, want %v", got, want)
	}
}
