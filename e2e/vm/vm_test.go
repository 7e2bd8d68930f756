//go:build vmtest

package vm

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// These tests run inside the VM (go test -tags vmtest -exec .../vmexec) and
// check what every other kernel test there relies on.

func TestInsideVM(t *testing.T) {
	if got := os.Getenv("NFTVS_IN_VM"); got != "1" {
		t.Fatalf("NFTVS_IN_VM=%q, want 1: run with go test -exec $PWD/e2e/vm/vmexec", got)
	}
	if uid := os.Geteuid(); uid != 0 {
		t.Fatalf("euid %d, want 0 (root)", uid)
	}
}

func TestIPVSLoaded(t *testing.T) {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Fatalf("IPVS not loaded: %v", err)
	}
	// Every scheduler nftvs may configure; a missing one would only show
	// as EINVAL or ENOENT when a Service asks for it.
	for _, s := range []string{"rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq", "mh"} {
		if _, err := os.Stat("/sys/module/ip_vs_" + s); err != nil {
			t.Errorf("IPVS scheduler %s not loaded: %v", s, err)
		}
	}
}

func TestDummyLink(t *testing.T) {
	const name = "nftvs-smoke0"
	run(t, "ip", "link", "add", name, "type", "dummy")
	run(t, "ip", "link", "set", name, "up")
	run(t, "ip", "link", "del", name)
}

func TestNFTables(t *testing.T) {
	run(t, "nft", "list", "tables")
	run(t, "nft", "add", "table", "inet", "nftvs_smoke")
	if out := run(t, "nft", "list", "tables"); !strings.Contains(out, "nftvs_smoke") {
		t.Errorf("nft list tables = %q, want the table just added", out)
	}
	run(t, "nft", "delete", "table", "inet", "nftvs_smoke")
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
