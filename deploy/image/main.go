// Command image builds nftvs's container image as an OCI image layout
// tarball without a container engine, a base image or a registry: one
// layer on an empty base holding the static nftvs binary at
// /usr/local/bin/nftvs and /usr/local/bin/kube-proxy (a symlink to it, so
// a kube-proxy DaemonSet's command works unchanged). Nothing else is in
// the image: no shell, no iptables, ipset, nft or modprobe (nftvs loads
// its kernel modules itself).
//
//	go run . -binary ../../bin/nftvs -out ../../bin/nftvs-image.tar
//
// Load the result with `podman load -i`, `skopeo copy oci-archive:FILE
// docker-daemon:NAME`, or `ctr -n k8s.io images import` on a node.
//
// It lives in its own module so that go-containerregistry is not a
// dependency of nftvs itself.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paths inside the image.
const (
	Entrypoint = "/usr/local/bin/nftvs"
	KubeProxy  = "/usr/local/bin/kube-proxy"
)

// Options say what to build.
type Options struct {
	Binary  string    // the static nftvs binary
	Out     string    // the OCI layout tarball to write
	Name    string    // image reference, e.g. docker.io/nftvs/nftvs:dev
	Version string    // org.opencontainers.image.version
	Created time.Time // config and file times (reproducible builds)
}

// Result describes what was built.
type Result struct {
	Out                string
	Digest             v1.Hash // of the image manifest
	TarballSize        int64
	LayerCompressed    int64 // the layer blob, gzip
	LayerUncompressed  int64 // the layer as a tar
	Architecture, Name string
}

func main() {
	var o Options
	flag.StringVar(&o.Binary, "binary", "", "static nftvs binary (CGO_ENABLED=0 go build ./cmd/nftvs)")
	flag.StringVar(&o.Out, "out", "", "OCI image layout tarball to write")
	flag.StringVar(&o.Name, "name", "docker.io/nftvs/nftvs:dev", "image name recorded in the layout's index (org.opencontainers.image.ref.name, io.containerd.image.name)")
	flag.StringVar(&o.Version, "version", "dev", "image version label")
	flag.Parse()
	if o.Binary == "" || o.Out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: image -binary FILE -out FILE.tar [-name REF] [-version V]")
		os.Exit(2)
	}
	o.Created = time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "image: SOURCE_DATE_EPOCH: %v\n", err)
			os.Exit(2)
		}
		o.Created = time.Unix(sec, 0).UTC()
	}
	r, err := Build(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %d bytes (%s, %s/linux, manifest %s; layer %d bytes gzip, %d bytes uncompressed)\n",
		r.Out, r.TarballSize, r.Name, r.Architecture, r.Digest, r.LayerCompressed, r.LayerUncompressed)
}

// Build writes the image tarball.
func Build(o Options) (*Result, error) {
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, err
	}
	arch, err := staticArch(o.Binary)
	if err != nil {
		return nil, err
	}
	layerTar, err := layerTar(bin, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer, History: v1.History{
		Created: v1.Time{Time: o.Created}, CreatedBy: "nftvs deploy/image: " + Entrypoint + ", " + KubeProxy + " -> nftvs", Comment: "nftvs " + o.Version,
	}})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", arch, v1.Time{Time: o.Created}
	cf.Config.Entrypoint = []string{Entrypoint}
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       "nftvs",
		"org.opencontainers.image.description": "Kubernetes service proxy in place of kube-proxy's IPVS mode: IPVS plus one nftables table over netlink, no iptables/ipset/nft",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}

	dir, err := os.MkdirTemp("", "nftvs-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	tag := o.Name
	if i := strings.LastIndex(tag, ":"); i > strings.LastIndex(tag, "/") {
		tag = tag[i+1:]
	}
	if err := p.AppendImage(img,
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}),
		layout.WithAnnotations(map[string]string{
			// The spec's ref.name is the tag; containerd's import reads
			// its own annotation for the full name.
			"org.opencontainers.image.ref.name": tag,
			"io.containerd.image.name":          o.Name,
		})); err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(o.Out), 0o755); err != nil {
		return nil, err
	}
	if err := tarDir(dir, o.Out, o.Created); err != nil {
		return nil, fmt.Errorf("write %s: %w", o.Out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	compressed, err := layer.Size()
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(o.Out)
	if err != nil {
		return nil, err
	}
	return &Result{Out: o.Out, Digest: digest, TarballSize: st.Size(), LayerCompressed: compressed,
		LayerUncompressed: int64(len(layerTar)), Architecture: arch, Name: o.Name}, nil
}

// staticArch checks that path is a statically linked Linux ELF executable
// (an empty image has no dynamic loader or libc) and returns its GOARCH.
func staticArch(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked (it has an ELF interpreter): build it with CGO_ENABLED=0", path)
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		return "", fmt.Errorf("%s needs shared libraries %v: build it with CGO_ENABLED=0", path, libs)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	}
	return "", fmt.Errorf("%s: unsupported ELF machine %v", path, f.Machine)
}

// layerTar is the image's only layer: the directories, the binary and the
// kube-proxy symlink, owned by root, with fixed times.
func layerTar(bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdrs := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "usr/local/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "usr/local/bin/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(Entrypoint, "/"), Mode: 0o755, Size: int64(len(bin))},
		// Relative, so it resolves wherever the layer is unpacked.
		{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(KubeProxy, "/"), Linkname: filepath.Base(Entrypoint), Mode: 0o777},
	}
	for _, h := range hdrs {
		h.ModTime, h.Format = mtime, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bin); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarDir writes the OCI layout directory dir as an uncompressed tar (its
// blobs are compressed already), files in a fixed order and time.
func tarDir(dir, out string, mtime time.Time) (err error) {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Mode: 0o644, Format: tar.FormatPAX}
		if d.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			return tw.WriteHeader(h)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", path)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
