//go:build vmtest

package kmod

// Kernel tests: real finit_module calls inside the test VM
// (go test -tags vmtest -count=1 -exec $PWD/e2e/vm/vmexec ./internal/kmod/).
// They use modules that e2e/vm/init.sh does not preload.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func requireVM(t *testing.T) *Loader {
	t.Helper()
	if os.Getenv("NFTVS_IN_VM") != "1" {
		t.Skip("KERNEL TEST SKIPPED: runs only inside the test VM (go test -tags vmtest -exec $PWD/e2e/vm/vmexec ./internal/kmod/); nothing was checked")
	}
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func live(t *testing.T, name string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/module", name, "initstate"))
	return err == nil && strings.TrimSpace(string(b)) == "live"
}

// nft_tproxy needs nf_tproxy_ipv4 and nf_tproxy_ipv6, which nothing else
// loads; ip_vs_fo is a scheduler the VM does not preload.
func TestLoadWithDependencies(t *testing.T) {
	l := requireVM(t)
	mods := []string{"nft_tproxy", "nf_tproxy_ipv4", "nf_tproxy_ipv6", "ip_vs_fo"}
	for _, m := range mods {
		if l.Loaded(m) {
			t.Fatalf("%s is already loaded before the test: pick a module the VM does not preload", m)
		}
	}
	for _, m := range []string{"nft_tproxy", "ip_vs_fo"} {
		if err := l.Load(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range mods {
		if !live(t, m) {
			t.Errorf("/sys/module/%s/initstate is not live after Load", m)
		}
	}
	// Loading again is a no-op, not EEXIST.
	if err := l.Load("nft-tproxy"); err != nil {
		t.Errorf("second load: %v", err)
	}
}

func TestLoadErrorsFromTheKernel(t *testing.T) {
	l := requireVM(t)
	if err := l.Load("no_such_module_nftvs"); err == nil || !strings.Contains(err.Error(), "no_such_module_nftvs") {
		t.Errorf("unknown module: err = %v", err)
	}

	// A file that is not a module: the kernel refuses it, the error says which.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/nftvs_garbage.ko:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kernel", "nftvs_garbage.ko"), []byte("not an ELF module"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := NewLoader(dir).Load("nftvs_garbage")
	t.Logf("garbage module: %v", err)
	if err == nil || !strings.Contains(err.Error(), "nftvs_garbage") || !strings.Contains(err.Error(), "finit_module") {
		t.Errorf("garbage module: err = %v, want a finit_module error naming it", err)
	}
}

// A compressed module: loaded when the kernel decompresses xz
// (/sys/module/compression, CONFIG_MODULE_DECOMPRESS, 5.17+), otherwise a
// clear error and nothing loaded. Debian 12's 6.1 is built without it
// (the error path); Debian 13's 6.12 decompresses xz (NFTVS_KERNEL=trixie:
// the load path).
func TestLoadCompressedKernel(t *testing.T) {
	l := requireVM(t)
	const name = "nft_numgen"
	if l.Loaded(name) {
		t.Fatalf("%s is already loaded before the test", name)
	}
	idx, err := l.Index()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := idx.Modules[name]
	if !ok {
		t.Fatalf("%s not in %s/modules.dep", name, l.Dir)
	}
	if err := l.Load("nf_tables"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	xz := filepath.Join(dir, name+".ko.xz")
	out, err := exec.Command("sh", "-c", `xz --check=crc32 -c "$1" > "$2"`, "xz", filepath.Join(l.Dir, m.Path), xz).CombinedOutput()
	if err != nil {
		t.Fatalf("xz: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(name+".ko.xz:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = NewLoader(dir).Load(name)
	t.Logf("compressed: %v", err)
	kind, kerr := os.ReadFile("/sys/module/compression")
	switch {
	case kerr != nil: // no in-kernel decompression
		if err == nil || !strings.Contains(err.Error(), "CONFIG_MODULE_DECOMPRESS") || !strings.Contains(err.Error(), name) {
			t.Errorf("err = %v, want one naming %s and CONFIG_MODULE_DECOMPRESS", err, name)
		}
		if l.Loaded(name) {
			t.Errorf("%s loaded although the kernel cannot decompress it", name)
		}
	case strings.TrimSpace(string(kind)) == "xz":
		if err != nil || !live(t, name) {
			t.Errorf("xz kernel: err = %v, live %v", err, live(t, name))
		}
	default:
		if err == nil || !strings.Contains(err.Error(), "only "+strings.TrimSpace(string(kind))) {
			t.Errorf("%s kernel: err = %v", kind, err)
		}
	}
}
