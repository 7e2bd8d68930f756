package kmod

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// An excerpt of Debian 6.1's tree (depmod output), with the shapes that
// matter: a chain of dependencies, a built-in, a softdep on an alias.
const (
	testDep = `kernel/lib/libcrc32c.ko:
kernel/net/netfilter/nfnetlink.ko:
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko:
kernel/crypto/crc32c_generic.ko:
kernel/net/netfilter/nf_conntrack.ko: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs_fo.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nft-numgen.ko.xz: kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
`
	testBuiltin = `kernel/net/ipv4/tcp_cubic.ko
kernel/net/netfilter/x_tables.ko
`
	testSoftdep = `# Soft dependencies extracted from modules themselves.
softdep libcrc32c pre: crc32c
softdep cifs gcm
softdep foo pre: a b post: c
`
	testAlias = `alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias pci:v00008086d*sv*sd*bc*sc*i* e1000e
`
)

func scanner(s string) *bufio.Scanner { return bufio.NewScanner(strings.NewReader(s)) }

func TestParse(t *testing.T) {
	idx := &Index{Modules: map[string]Module{}, Builtin: map[string]bool{}, SoftPre: map[string][]string{}, Aliases: map[string][]string{}}
	for _, p := range []struct {
		parse func(string, *bufio.Scanner, *Index) error
		text  string
	}{{ParseDep, testDep}, {ParseBuiltin, testBuiltin}, {ParseSoftdep, testSoftdep}, {ParseAlias, testAlias}} {
		if err := p.parse("test", scanner(p.text), idx); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := len(idx.Modules), 10; got != want {
		t.Errorf("%d modules, want %d", got, want)
	}
	vs := idx.Modules["ip_vs"]
	if vs.Path != "kernel/net/netfilter/ipvs/ip_vs.ko" || len(vs.Deps) != 4 || vs.Deps[0] != "kernel/net/netfilter/nf_conntrack.ko" {
		t.Errorf("ip_vs = %+v", vs)
	}
	if m, ok := idx.Modules["nft_numgen"]; !ok || m.Path != "kernel/net/netfilter/nft-numgen.ko.xz" {
		t.Errorf("nft-numgen.ko.xz not indexed as nft_numgen: %+v", idx.Modules)
	}
	if !idx.Builtin["tcp_cubic"] || !idx.Builtin["x_tables"] || idx.Builtin["ip_vs"] {
		t.Errorf("builtin = %v", idx.Builtin)
	}
	want := map[string][]string{"libcrc32c": {"crc32c"}, "foo": {"a", "b"}}
	if !reflect.DeepEqual(idx.SoftPre, want) {
		t.Errorf("softdeps = %v, want %v", idx.SoftPre, want)
	}
	if got := idx.Aliases["crc32c"]; !reflect.DeepEqual(got, []string{"crc32c_generic"}) {
		t.Errorf("alias crc32c = %v", got)
	}
	if len(idx.Aliases) != 2 {
		t.Errorf("wildcard aliases kept: %v", idx.Aliases)
	}
}

func TestParseDepRejectsGarbage(t *testing.T) {
	idx := &Index{Modules: map[string]Module{}}
	err := ParseDep("modules.dep", scanner("kernel/a.ko:\nnot a dep line\n"), idx)
	if err == nil || !strings.Contains(err.Error(), "modules.dep:2:") {
		t.Fatalf("err = %v, want one naming modules.dep:2", err)
	}
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"ip_vs": "ip_vs", "nf-conntrack": "nf_conntrack",
		"kernel/net/netfilter/ipvs/ip_vs_rr.ko":       "ip_vs_rr",
		"kernel/net/netfilter/nft_ct.ko.zst":          "nft_ct",
		"kernel/net/ipv4/netfilter/nf-nat-ipv4.ko.xz": "nf_nat_ipv4",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

// fakeTree writes the test index and empty module files into a temporary
// tree and returns a Loader whose finit_module records the loads and
// "loads" each module by creating its /sys/module entry.
func fakeTree(t *testing.T, loaded ...string) (*Loader, *[]string) {
	t.Helper()
	dir, sys := t.TempDir(), t.TempDir()
	for name, text := range map[string]string{"modules.dep": testDep, "modules.builtin": testBuiltin, "modules.softdep": testSoftdep, "modules.alias": testAlias} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, line := range strings.Split(testDep, "\n") {
		path, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, path), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range loaded {
		if err := os.Mkdir(filepath.Join(sys, m), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var loads []string
	l := NewLoader(dir)
	l.SysModule = sys
	l.finit = func(fd int, params string, flags int) error {
		path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if err != nil {
			return err
		}
		name := Name(path)
		if flags != 0 {
			name += "+" + strconv.Itoa(flags)
		}
		loads = append(loads, name)
		return os.Mkdir(filepath.Join(sys, Name(path)), 0o755)
	}
	return l, &loads
}

func TestLoadOrder(t *testing.T) {
	l, loads := fakeTree(t)
	if err := l.Load("ip_vs_fo"); err != nil {
		t.Fatal(err)
	}
	// Dependencies from the last listed to the first; libcrc32c's soft
	// dependency crc32c (an alias of crc32c_generic) before it.
	want := []string{"crc32c_generic", "libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs", "ip_vs_fo"}
	if !reflect.DeepEqual(*loads, want) {
		t.Errorf("loaded %v, want %v", *loads, want)
	}
	// A second Load finds everything in /sys/module.
	*loads = nil
	if err := l.Load("ip_vs_fo"); err != nil || len(*loads) != 0 {
		t.Errorf("second Load: err %v, loaded %v; want nothing loaded", err, *loads)
	}
}

func TestLoadSkipsLoadedAndBuiltin(t *testing.T) {
	l, loads := fakeTree(t, "nf_conntrack", "libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6")
	if err := l.Load("ip_vs"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"ip_vs"}; !reflect.DeepEqual(*loads, want) {
		t.Errorf("loaded %v, want %v", *loads, want)
	}
	*loads = nil
	if err := l.Load("tcp_cubic"); err != nil || len(*loads) != 0 {
		t.Errorf("built-in tcp_cubic: err %v, loaded %v; want nothing", err, *loads)
	}
}

func TestLoadErrors(t *testing.T) {
	l, _ := fakeTree(t)
	err := l.Load("ip_vs_nosuch")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "ip_vs_nosuch") {
		t.Errorf("unknown module: err = %v, want ErrNotFound naming ip_vs_nosuch", err)
	}

	// A failing dependency is named, and so is the module that needed it.
	l, _ = fakeTree(t)
	l.finit = func(int, string, int) error { return unix.EPERM }
	err = l.Load("ip_vs")
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "load kernel module ip_vs: dependency: libcrc32c") || !strings.Contains(err.Error(), "CAP_SYS_MODULE") {
		t.Errorf("EPERM: err = %v", err)
	}

	// Loaded meanwhile by someone else: fine.
	l, _ = fakeTree(t, "nf_conntrack", "libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6")
	l.finit = func(int, string, int) error { return unix.EEXIST }
	if err := l.Load("ip_vs"); err != nil {
		t.Errorf("EEXIST: err = %v, want nil", err)
	}

	// No module tree: an error only for a module that is not loaded.
	l = NewLoader(filepath.Join(t.TempDir(), "missing"))
	l.SysModule = t.TempDir()
	if err := os.Mkdir(filepath.Join(l.SysModule, "ip_vs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.Load("ip_vs"); err != nil {
		t.Errorf("loaded ip_vs without a module tree: err = %v, want nil", err)
	}
	if err := l.Load("nf_tables"); err == nil || !strings.Contains(err.Error(), "nf_tables") || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("nf_tables without a module tree: err = %v", err)
	}
}

func TestLoadCompressed(t *testing.T) {
	// The kernel cannot decompress: a clear error, finit_module not called.
	l, loads := fakeTree(t, "nf_tables", "nfnetlink", "libcrc32c")
	err := l.Load("nft_numgen")
	if err == nil || !strings.Contains(err.Error(), "xz-compressed") || !strings.Contains(err.Error(), "CONFIG_MODULE_DECOMPRESS") || len(*loads) != 0 {
		t.Errorf("no decompression: err = %v, loaded %v", err, *loads)
	}
	// It decompresses another format.
	if err := os.WriteFile(filepath.Join(l.SysModule, "compression"), []byte("zstd\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := l.Load("nft_numgen"); err == nil || !strings.Contains(err.Error(), "only zstd") {
		t.Errorf("zstd kernel: err = %v", err)
	}
	// It decompresses xz: the file goes to finit_module with the flag.
	if err := os.WriteFile(filepath.Join(l.SysModule, "compression"), []byte("xz\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := l.Load("nft_numgen"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"nft_numgen+" + strconv.Itoa(unix.MODULE_INIT_COMPRESSED_FILE)}; !reflect.DeepEqual(*loads, want) {
		t.Errorf("loaded %v, want %v", *loads, want)
	}
}
