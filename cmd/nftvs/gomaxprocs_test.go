package main

// nftvs sets no GOMAXPROCS of its own: since Go 1.25 the runtime takes it
// from the container's CPU limit (the cgroup's CPU bandwidth quota, v1 or
// v2), rounded up, never below 2, and follows the limit when it changes,
// for every module whose go.mod says go 1.25 or later (GODEBUG
// containermaxprocs=1 and updatemaxprocs=1 by default;
// src/runtime/cgroup_linux.go). This module says go 1.26, so a DaemonSet
// given resources.limits.cpu: 2 on a 16-CPU node runs with GOMAXPROCS 2,
// and a package such as go.uber.org/automaxprocs would add nothing. This
// test runs the command's own test binary in a cgroup with a two-CPU quota
// and asks it. Since 2 is also the floor, it needs 3 CPUs or more: on a
// 2-CPU machine run it in the VM with more vCPUs,
//
//	NFTVS_VM_SMP=4 go test -exec $PWD/e2e/vm/vmexec -run GOMAXPROCS ./cmd/nftvs/

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestGOMAXPROCSChild is the child: it prints what the runtime chose.
func TestGOMAXPROCSChild(t *testing.T) {
	if os.Getenv("NFTVS_PRINT_GOMAXPROCS") != "1" {
		t.Skip("only as the child of TestGOMAXPROCSFromCPULimit")
	}
	fmt.Printf("GOMAXPROCS=%d\n", runtime.GOMAXPROCS(0))
}

func TestGOMAXPROCSFromCPULimit(t *testing.T) {
	if runtime.NumCPU() < 3 {
		t.Skipf("SKIPPED LOUDLY: %d CPUs cannot tell a two-CPU limit (the runtime's floor) from the machine; run it in the VM with NFTVS_VM_SMP=4", runtime.NumCPU())
	}
	cg := cpuCgroup(t)

	// The machine's CPUs without a limit; 2 with a two-CPU quota; and the
	// machine's again when the default is turned off, which shows that the
	// runtime, not something else, read the quota.
	if got := childGOMAXPROCS(t, "", nil); got != runtime.NumCPU() {
		t.Errorf("no limit: GOMAXPROCS %d, want %d (the CPUs)", got, runtime.NumCPU())
	}
	if got := childGOMAXPROCS(t, cg, nil); got != 2 {
		t.Errorf("a two-CPU limit on %d CPUs: GOMAXPROCS %d, want 2", runtime.NumCPU(), got)
	}
	if got := childGOMAXPROCS(t, cg, []string{"GODEBUG=containermaxprocs=0"}); got != runtime.NumCPU() {
		t.Errorf("a two-CPU limit, GODEBUG=containermaxprocs=0: GOMAXPROCS %d, want %d", got, runtime.NumCPU())
	}
}

// cpuCgroup makes a cgroup limited to two CPUs (200 ms of CPU per 100 ms)
// and returns its cgroup.procs file: in the unified hierarchy (v2, mounted
// for the test if nothing is), or else in v1's cpu controller. It skips the
// test without root.
func cpuCgroup(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: needs root to make a cgroup")
	}
	name := fmt.Sprintf("nftvs-gomaxprocs-%d", os.Getpid())
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil {
		dir := mkdir(t, filepath.Join("/sys/fs/cgroup/cpu", name))
		write(t, filepath.Join(dir, "cpu.cfs_period_us"), "100000")
		write(t, filepath.Join(dir, "cpu.cfs_quota_us"), "200000")
		return filepath.Join(dir, "cgroup.procs")
	}
	root := "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
		root = t.TempDir()
		if err := syscall.Mount("cgroup2", root, "cgroup2", 0, ""); err != nil {
			t.Skipf("SKIPPED LOUDLY: no cpu cgroup controller to limit (v1 absent, mount cgroup2: %v)", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(root, 0) })
	}
	// Children get the cpu controller only once it is delegated.
	write(t, filepath.Join(root, "cgroup.subtree_control"), "+cpu")
	dir := mkdir(t, filepath.Join(root, name))
	write(t, filepath.Join(dir, "cpu.max"), "200000 100000")
	return filepath.Join(dir, "cgroup.procs")
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	return dir
}

func write(t *testing.T, file, value string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(value), 0o644); err != nil {
		t.Fatal(err)
	}
}

// childGOMAXPROCS runs this test binary as TestGOMAXPROCSChild, inside the
// cgroup whose cgroup.procs is procs (none when empty): a shell moves
// itself in, then execs the binary, so the runtime starts under the limit.
func childGOMAXPROCS(t *testing.T, procs string, env []string) int {
	t.Helper()
	script := `exec "$0" -test.run '^TestGOMAXPROCSChild$' -test.v`
	if procs != "" {
		script = `echo $$ >"$1" && ` + script
	}
	cmd := exec.Command("/bin/sh", "-c", script, os.Args[0], procs)
	cmd.Env = append(append(os.Environ(), "NFTVS_PRINT_GOMAXPROCS=1"), env...)
	// GOMAXPROCS in the environment would win over the limit.
	cmd.Env = append(cmd.Env, "GOMAXPROCS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "GOMAXPROCS="); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("child said %q", l)
			}
			return n
		}
	}
	t.Fatalf("child did not say:\n%s", out)
	return 0
}
