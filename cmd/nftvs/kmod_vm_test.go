//go:build vmtest

package main

import (
	"os"
	"strings"
	"testing"
)

// --init-only loads the scheduler's module itself (finit_module, no
// modprobe): ip_vs_fo is one the VM does not preload. Modules are global
// to the kernel, so this is checked in /sys/module, not in the netns.
// The kernel's own autoloader (request_module when a virtual server names
// a scheduler) is turned off meanwhile, or it would load ip_vs_fo itself.
func TestInitOnlyLoadsSchedulerModule(t *testing.T) {
	ns := requireVM(t)
	const modprobe = "/proc/sys/kernel/modprobe"
	old, err := os.ReadFile(modprobe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(modprobe, []byte("/nonexistent/modprobe\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(modprobe, old, 0o644) })
	if _, err := os.Stat("/sys/module/ip_vs_fo"); err == nil {
		t.Fatal("ip_vs_fo is loaded before the test: pick a scheduler the VM does not preload")
	}
	out, code := nftvs(t, ns, "--init-only", "--ipvs-scheduler=fo", "--conntrack-max-per-core=0")
	if code != 0 {
		t.Fatalf("nftvs --init-only --ipvs-scheduler=fo exited %d:\n%s", code, out)
	}
	b, err := os.ReadFile("/sys/module/ip_vs_fo/initstate")
	if err != nil || strings.TrimSpace(string(b)) != "live" {
		t.Errorf("ip_vs_fo after --init-only: %q, %v; want live\n%s", b, err, out)
	}
}
