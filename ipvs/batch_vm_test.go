//go:build vmtest

package ipvs

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
)

// TestKernelWriteBatch: a batch does to the kernel what the same writes
// do one call at a time, and answers each write with the error that call
// returns — refusals in the middle of a batch included, and over several
// sendmsgs (BatchWrites each).
func TestKernelWriteBatch(t *testing.T) {
	var writes []Write
	add := func(v VirtualServer) { writes = append(writes, Write{Op: OpAddVirtualServer, VirtualServer: v}) }
	addRS := func(v VirtualServer, r RealServer) {
		writes = append(writes, Write{Op: OpAddRealServer, VirtualServer: v, RealServer: r})
	}
	v4 := svc(key(TCP, "10.96.0.1:80"), "rr").VirtualServer
	v6 := svc(key(UDP, "[fd00::96:1]:53"), "wrr").VirtualServer
	mark := svc(fwmark(0x4001, true), "sh").VirtualServer
	mark.Flags = SchedulerFlags("sh")
	missing := svc(key(TCP, "10.96.0.2:80"), "no-such-scheduler").VirtualServer
	add(v4)
	addRS(v4, rs("10.244.0.1:8080", 1))
	addRS(v4, rs("10.244.0.2:8080", 3))
	add(v4)                                  // EEXIST
	addRS(v4, rs("10.244.0.1:8080", 1))      // EEXIST
	add(missing)                             // refused (EINVAL on 6.1)
	addRS(missing, rs("10.244.0.3:8080", 1)) // ESRCH
	add(v6)
	addRS(v6, rs("[fd00:244::1]:5353", 1))
	add(mark)
	addRS(mark, rs("[fd00:244::2]:0", 2))
	// Enough more to take several sendmsgs.
	for _, s := range manyServices(150, 3) {
		add(s.VirtualServer)
		for _, r := range s.RealServers {
			addRS(s.VirtualServer, r)
		}
	}
	if len(writes) <= 2*BatchWrites {
		t.Fatalf("only %d writes: not several batches", len(writes))
	}

	batched, bns := newKernel(t)
	plain, pns := newKernel(t)
	got := batched.WriteBatch(writes)
	want := writeEach(plain, writes)
	for i, w := range writes {
		var ge, we syscall.Errno
		errors.As(got[i], &ge)
		errors.As(want[i], &we)
		if fmt.Sprint(got[i]) != fmt.Sprint(want[i]) || ge != we {
			t.Errorf("write %d (%s %s %s): batch says %v, the call says %v", i, w.Op, w.VirtualServer, w.RealServer.AddrPort(), got[i], want[i])
		}
	}
	// 0: done; EPERM here: refused, whatever the errno.
	for i, e := range []syscall.Errno{0, 0, 0, syscall.EEXIST, syscall.EEXIST, syscall.EPERM, syscall.ESRCH} {
		if e == 0 && got[i] != nil || e == syscall.EPERM && got[i] == nil || e != 0 && e != syscall.EPERM && !errors.Is(got[i], e) {
			t.Errorf("write %d: %v, want %v", i, got[i], e)
		}
	}
	if g, w := Format(dump(t, batched)), Format(dump(t, plain)); g != w {
		t.Errorf("the batch made\n%s\nthe calls made\n%s", g, w)
	}
	// ipvsadm's own view, every field it can print (forwarding method,
	// weights, thresholds, persistence, netmask, flags, schedulers).
	for _, args := range [][]string{{"-S", "-n"}, {"-L", "-n", "--thresholds"}, {"-L", "-n", "--persistent-conn"}} {
		g, w := ipvsadmIn(t, bns, args...), ipvsadmIn(t, pns, args...)
		if !strings.Contains(g, "10.96.0.1:80") || !strings.Contains(g, "10.244.0.2:8080") {
			t.Fatalf("ipvsadm %v did not see the batch's namespace:\n%s", args, g)
		}
		if g != w {
			t.Errorf("ipvsadm %v after the batch:\n%s\nafter the calls:\n%s", args, g, w)
		}
	}
}

// ipvsadmIn runs ipvsadm in ns (from a thread that entered it) and
// returns its output, lines sorted.
func ipvsadmIn(t *testing.T, ns netns.NsHandle, args ...string) string {
	t.Helper()
	type result struct {
		out []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread ends in ns
		if err := netns.Set(ns); err != nil {
			ch <- result{nil, err}
			return
		}
		out, err := exec.Command("ipvsadm", args...).CombinedOutput()
		ch <- result{out, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("ipvsadm %v: %v\n%s", args, r.err, r.out)
	}
	lines := strings.Split(strings.TrimSpace(string(r.out)), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestKernelReconcilerBatchedAdopts: a first sync whose batch meets a
// virtual server the kernel has already (a leftover the Reconciler never
// read) adopts it, real servers and all, as one write at a time would.
func TestKernelReconcilerBatchedAdopts(t *testing.T) {
	k, _ := newKernel(t)
	left := svc(key(TCP, "10.96.0.1:80"), "wlc", rs("10.244.0.9:8080", 1))
	if err := k.AddVirtualServer(left.VirtualServer); err != nil {
		t.Fatal(err)
	}
	if err := k.AddRealServer(left.Key(), left.RealServers[0]); err != nil {
		t.Fatal(err)
	}
	want := append(manyServices(20, 2), svc(key(TCP, "10.96.0.1:80"), "rr", rs("10.244.0.1:8080", 1), rs("10.244.0.9:8080", 2)))
	r := NewReconciler(k, nil)
	if _, err := r.Apply(want, nil); err != nil {
		t.Fatal(err)
	}
	checkKernelHolds(t, k, want)
}
