// Command images writes one container image as an OCI image layout
// tarball, without a container engine, base image or registry, from files
// of this machine: each -add file (a dynamically linked executable brings
// the shared libraries ldd names, and its ELF interpreter), optionally
// busybox with a symlink per applet. The layer is an uncompressed tar, so
// that importing it under emulation costs no decompression.
//
//	go run . -name registry.k8s.io/pause:3.10.2 -out pause.tar \
//	    -add /tmp/pause:/pause -entrypoint /pause
//
// Import the result with `ctr -n k8s.io images import FILE`: containerd
// names the image from the io.containerd.image.name annotation.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

// entry is one file of the layer: content from a host file, or a symlink.
type entry struct {
	src  string // host file (regular files)
	link string // symlink target
	mode int64
}

type layer map[string]*entry // image path (absolute) → entry

func main() {
	var adds, entrypoint, cmd, dirs list
	name := flag.String("name", "", "image reference (io.containerd.image.name)")
	out := flag.String("out", "", "OCI layout tarball to write")
	busybox := flag.String("busybox", "", "static busybox to install as /bin/busybox with a symlink per applet (files from -add win)")
	flag.Var(&adds, "add", "HOST[:IMAGEPATH] file to add (repeatable); executables bring their shared libraries")
	flag.Var(&entrypoint, "entrypoint", "entrypoint word (repeatable)")
	flag.Var(&cmd, "cmd", "cmd word (repeatable)")
	flag.Var(&dirs, "dir", "empty directory (mode 1777 for /tmp) to create (repeatable)")
	flag.Parse()
	if *name == "" || *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: images -name REF -out FILE.tar -add HOST[:PATH]... [-busybox FILE] [-entrypoint W]... [-cmd W]...")
		os.Exit(2)
	}
	if err := run(*name, *out, *busybox, adds, entrypoint, cmd, dirs); err != nil {
		fmt.Fprintf(os.Stderr, "images: %v\n", err)
		os.Exit(1)
	}
}

func run(name, out, busybox string, adds, entrypoint, cmd, dirs []string) error {
	l := layer{}
	for _, a := range adds {
		src, dst, ok := strings.Cut(a, ":")
		if !ok {
			dst = src
		}
		if err := l.addExecutable(src, dst); err != nil {
			return err
		}
	}
	if busybox != "" {
		if err := l.addBusybox(busybox); err != nil {
			return err
		}
	}
	for _, d := range dirs {
		l[path.Clean(d)] = &entry{mode: -1}
	}
	// Minimal account files: some tools look their user up.
	data, err := l.tar(map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"/etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	})
	if err != nil {
		return err
	}
	lay := static.NewLayer(data, types.OCIUncompressedLayer)
	created := time.Unix(0, 0).UTC()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: lay, MediaType: types.OCIUncompressedLayer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "nftvs e2e/tools/images"}})
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", "amd64", v1.Time{Time: created}
	cf.Config.Entrypoint, cf.Config.Cmd = entrypoint, cmd
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "nftvs-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	tag := name[strings.LastIndex(name, ":")+1:]
	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
		layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": tag,
			"io.containerd.image.name":          name,
		})); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	c := exec.Command("tar", "-C", dir, "-cf", tmp, "--sort=name", "--owner=0", "--group=0", "--mtime=@0", ".")
	c.Stderr = os.Stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("tar: %w", err)
	}
	return os.Rename(tmp, out)
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// addExecutable adds src at dst and, for a dynamically linked ELF file,
// every library ldd lists at the path ldd names.
func (l layer) addExecutable(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	l[path.Clean(dst)] = &entry{src: src, mode: int64(st.Mode().Perm())}
	outp, err := exec.Command("ldd", src).Output()
	if err != nil {
		return nil // static, or not an executable: ldd says so and fails
	}
	for _, line := range strings.Split(string(outp), "\n") {
		m := lddLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		lst, err := os.Stat(m[1])
		if err != nil {
			return fmt.Errorf("%s needs %s: %w", src, m[1], err)
		}
		l[path.Clean(m[1])] = &entry{src: m[1], mode: int64(lst.Mode().Perm())}
	}
	return nil
}

func (l layer) addBusybox(bb string) error {
	l["/bin/busybox"] = &entry{src: bb, mode: 0o755}
	outp, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("%s --list-full: %w", bb, err)
	}
	have := map[string]bool{}
	for p := range l {
		have[path.Base(p)] = true
	}
	for _, a := range strings.Fields(string(outp)) {
		p := "/" + a
		if have[path.Base(p)] {
			continue
		}
		l[p] = &entry{link: "/bin/busybox", mode: 0o777}
	}
	return nil
}

// tar writes the layer: parents first, sorted, root-owned, fixed times.
func (l layer) tar(extra map[string]string) ([]byte, error) {
	all := map[string]bool{}
	for p := range l {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			all[d+"/"] = true
		}
		all[p] = true
	}
	for p := range extra {
		all[p] = true
		all[path.Dir(p)+"/"] = true
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, p := range names {
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), ModTime: mtime, Format: tar.FormatPAX}
		var data []byte
		e := l[p]
		switch {
		case strings.HasSuffix(p, "/"):
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case extra[p] != "":
			h.Typeflag, h.Mode, data = tar.TypeReg, 0o644, []byte(extra[p])
		case e.mode == -1:
			h.Typeflag, h.Mode, h.Name = tar.TypeDir, 0o755, h.Name+"/"
			if p == "/tmp" {
				h.Mode = 0o1777
			}
		case e.link != "":
			h.Typeflag, h.Mode, h.Linkname = tar.TypeSymlink, 0o777, e.link
		default:
			b, err := os.ReadFile(e.src)
			if err != nil {
				return nil, err
			}
			h.Typeflag, h.Mode, data = tar.TypeReg, e.mode, b
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
