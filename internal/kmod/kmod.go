package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Loader loads modules from one module tree.
type Loader struct {
	// Dir is the module tree, /lib/modules/RELEASE.
	Dir string
	// SysModule is where the kernel lists loaded modules (/sys/module).
	SysModule string

	// finit is finit_module(2); tests replace it.
	finit func(fd int, params string, flags int) error

	once  sync.Once
	index *Index
	err   error
}

// New is a Loader for the running kernel's tree, /lib/modules/$(uname -r).
func New() (*Loader, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	return NewLoader(filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))), nil
}

// NewLoader is a Loader for the module tree dir.
func NewLoader(dir string) *Loader {
	return &Loader{Dir: dir, SysModule: "/sys/module", finit: unix.FinitModule}
}

// Loaded says whether the kernel has module name loaded (or built in with
// parameters or a version: those have /sys/module entries too).
func (l *Loader) Loaded(name string) bool {
	_, err := os.Stat(filepath.Join(l.SysModule, Name(name)))
	return err == nil
}

// Load makes sure module name is in the kernel: already loaded and built-in
// modules are left alone; otherwise its dependencies (from modules.dep),
// its soft pre-dependencies (best effort: libcrc32c wants crc32c) and then
// the module itself are loaded. The error names the module that failed.
func (l *Loader) Load(name string) error {
	name = Name(name)
	if l.Loaded(name) {
		return nil
	}
	idx, err := l.Index()
	if err != nil {
		return fmt.Errorf("load kernel module %s: not loaded, and %w", name, err)
	}
	if idx.Builtin[name] {
		return nil
	}
	m, ok := idx.Modules[name]
	if !ok {
		return fmt.Errorf("load kernel module %s: %w in %s (neither in modules.dep nor in modules.builtin)", name, ErrNotFound, l.Dir)
	}
	// modules.dep lists a module's dependencies so that loading them from
	// last to first satisfies each one's own (what modprobe does).
	for i := len(m.Deps) - 1; i >= 0; i-- {
		dep := Name(m.Deps[i])
		if err := l.loadOne(idx, dep); err != nil {
			return fmt.Errorf("load kernel module %s: dependency: %w", name, err)
		}
	}
	if err := l.loadOne(idx, name); err != nil {
		return fmt.Errorf("load kernel module %s: %w", name, err)
	}
	return nil
}

// ErrNotFound: the module tree has no such module.
var ErrNotFound = errors.New("no such module")

// loadOne loads one module whose dependencies are already in.
func (l *Loader) loadOne(idx *Index, name string) error {
	if l.Loaded(name) || idx.Builtin[name] {
		return nil
	}
	m, ok := idx.Modules[name]
	if !ok {
		return fmt.Errorf("%s: %w in %s", name, ErrNotFound, l.Dir)
	}
	for _, pre := range idx.SoftPre[name] {
		// Best effort, as modprobe: a soft dependency that cannot be
		// loaded leaves the module to fail (or not) on its own. Its own
		// dependencies are not followed (crc32c's providers have none).
		for _, cand := range idx.resolve(pre) {
			if l.Loaded(cand) || idx.Builtin[cand] {
				break
			}
			if _, ok := idx.Modules[cand]; ok && l.loadFile(idx.Modules[cand]) == nil {
				break
			}
		}
	}
	return l.loadFile(m)
}

// loadFile calls finit_module on the module's file.
func (l *Loader) loadFile(m Module) error {
	path := filepath.Join(l.Dir, m.Path)
	flags := 0
	if c := compression(m.Path); c != "" {
		// Since 5.17 (CONFIG_MODULE_DECOMPRESS)
		// the kernel decompresses a module itself, only in the one format
		// it was built for, which it names in /sys/module/compression.
		b, err := os.ReadFile(filepath.Join(l.SysModule, "compression"))
		if err != nil {
			return fmt.Errorf("%s: %s is %s-compressed and this kernel cannot decompress modules (no %s/compression: CONFIG_MODULE_DECOMPRESS is off); decompress the module tree or preload %s on the host", m.Name, path, c, l.SysModule, m.Name)
		}
		if got := strings.TrimSpace(string(b)); got != c {
			return fmt.Errorf("%s: %s is %s-compressed but this kernel decompresses only %s modules", m.Name, path, c, got)
		}
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	defer f.Close()
	err = l.finit(int(f.Fd()), "", flags)
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		// EEXIST: loaded meanwhile (by the kernel's autoloader, or
		// another nftvs).
		return nil
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: finit_module %s: %w (needs CAP_SYS_MODULE in the host's user namespace)", m.Name, path, err)
	case errors.Is(err, unix.ENOEXEC), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%s: finit_module %s: %w (not a module for this kernel?)", m.Name, path, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s: finit_module %s: %w (unknown symbol: a dependency is missing; see the kernel log)", m.Name, path, err)
	}
	return fmt.Errorf("%s: finit_module %s: %w", m.Name, path, err)
}

// compression is the format of a compressed module file as the kernel
// names it in /sys/module/compression, or "" for a plain .ko.
func compression(path string) string {
	switch filepath.Ext(path) {
	case ".xz":
		return "xz"
	case ".zst":
		return "zstd"
	case ".gz":
		return "gzip"
	}
	return ""
}

// Index reads (once) the module tree's index files.
func (l *Loader) Index() (*Index, error) {
	l.once.Do(func() { l.index, l.err = ReadIndex(l.Dir) })
	return l.index, l.err
}

// Module is one loadable module of modules.dep.
type Module struct {
	Name string
	// Path is relative to the module tree.
	Path string
	// Deps are the paths of its dependencies, in modules.dep's order.
	Deps []string
}

// Index is what depmod wrote about a module tree.
type Index struct {
	Modules map[string]Module
	Builtin map[string]bool
	// SoftPre is modules.softdep's "pre:" list per module.
	SoftPre map[string][]string
	// Aliases maps an exact alias (no wildcards) to module names, as
	// softdeps name aliases such as crc32c.
	Aliases map[string][]string
}

// ReadIndex reads modules.dep (required), modules.builtin,
// modules.softdep and modules.alias (optional) of the tree dir.
func ReadIndex(dir string) (*Index, error) {
	idx := &Index{Modules: map[string]Module{}, Builtin: map[string]bool{}, SoftPre: map[string][]string{}, Aliases: map[string][]string{}}
	dep, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("module tree %s: %w (mount the host's /lib/modules, or preload the module on the host)", dir, err)
	}
	defer dep.Close()
	if err := ParseDep(dep.Name(), bufio.NewScanner(dep), idx); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name  string
		parse func(string, *bufio.Scanner, *Index) error
	}{{"modules.builtin", ParseBuiltin}, {"modules.softdep", ParseSoftdep}, {"modules.alias", ParseAlias}} {
		file, err := os.Open(filepath.Join(dir, f.name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // depmod of old kernels, or nothing built in
		}
		if err != nil {
			return nil, fmt.Errorf("module tree %s: %w", dir, err)
		}
		err = f.parse(file.Name(), bufio.NewScanner(file), idx)
		file.Close()
		if err != nil {
			return nil, err
		}
	}
	return idx, nil
}

// ParseDep reads modules.dep lines "kernel/a/b.ko: kernel/c.ko kernel/d.ko".
func ParseDep(file string, s *bufio.Scanner, idx *Index) error {
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		path, deps, ok := strings.Cut(line, ":")
		if !ok || path == "" {
			return fmt.Errorf("%s:%d: want \"module.ko: dependencies\", got %q", file, n, line)
		}
		name := Name(path)
		idx.Modules[name] = Module{Name: name, Path: path, Deps: strings.Fields(deps)}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}

// ParseBuiltin reads modules.builtin: one path per built-in module.
func ParseBuiltin(file string, s *bufio.Scanner, idx *Index) error {
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); line != "" && !strings.HasPrefix(line, "#") {
			idx.Builtin[Name(line)] = true
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}

// ParseSoftdep reads modules.softdep lines "softdep MOD pre: A B post: C";
// only "pre:" matters here (post: are extras modprobe loads afterwards).
func ParseSoftdep(file string, s *bufio.Scanner, idx *Index) error {
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) < 2 || f[0] != "softdep" {
			continue
		}
		name, pre := Name(f[1]), false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					idx.SoftPre[name] = append(idx.SoftPre[name], w)
				}
			}
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}

// ParseAlias reads modules.alias lines "alias ALIAS MODULE", keeping only
// aliases without wildcards (device aliases are of no use here).
func ParseAlias(file string, s *bufio.Scanner, idx *Index) error {
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) != 3 || f[0] != "alias" || strings.ContainsAny(f[1], "*?[") {
			continue
		}
		if m := Name(f[2]); !slices.Contains(idx.Aliases[f[1]], m) {
			idx.Aliases[f[1]] = append(idx.Aliases[f[1]], m)
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return nil
}

// resolve turns a soft dependency (a module name or an alias) into module
// names to try in order.
func (idx *Index) resolve(name string) []string {
	if _, ok := idx.Modules[Name(name)]; ok || idx.Builtin[Name(name)] {
		return []string{Name(name)}
	}
	return idx.Aliases[name]
}

// Name is the kernel's name of a module given as a name or a path:
// "kernel/net/ipv4/netfilter/nf-defrag_ipv4.ko.xz" → "nf_defrag_ipv4"
// (the kernel treats '-' and '_' alike and shows '_').
func Name(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}
