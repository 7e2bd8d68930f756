package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// forbidden are programs an nftvs image must not carry: the point of
// nftvs is that the node needs none of them, and a shell in a privileged
// container is an attack surface.
func forbidden(name string) bool {
	for _, p := range []string{"iptables", "ip6tables", "xtables", "arptables", "ebtables"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return slices.Contains([]string{"ipset", "nft", "modprobe", "insmod", "kmod", "ipvsadm", "conntrack",
		"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox", "toybox"}, name)
}

// TestImage builds the image with build.sh, as a user would, then opens
// the tarball as an OCI layout and checks what a container runtime will
// see: the entrypoint a static ELF, kube-proxy resolving to it, nothing
// else in the filesystem, and both commands running.
func TestImage(t *testing.T) {
	dir, tarball := runBuild(t)

	img, desc := openImage(t, tarball, filepath.Join(dir, "layout"))
	if desc.Annotations["io.containerd.image.name"] != "docker.io/nftvs/nftvs:dev" || desc.Annotations["org.opencontainers.image.ref.name"] != "dev" {
		t.Errorf("index annotations %v", desc.Annotations)
	}
	if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != "amd64" {
		t.Errorf("platform %+v", desc.Platform)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{Entrypoint}) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [%s] and none", cf.Config.Entrypoint, cf.Config.Cmd, Entrypoint)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "v0.0.0-test" || cf.Config.Labels["org.opencontainers.image.title"] != "nftvs" {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want 1", len(layers), err)
	}
	compressed, err := layers[0].Size()
	if err != nil {
		t.Fatal(err)
	}
	// The filesystem a container gets, unpacked as a runtime would.
	rootfs := filepath.Join(dir, "rootfs")
	files, uncompressed := unpackLayer(t, layers[0], rootfs)
	for _, name := range files {
		if forbidden(path.Base(name)) {
			t.Errorf("image has %s", name)
		}
	}
	want := []string{"/usr", "/usr/local", "/usr/local/bin", Entrypoint, KubeProxy}
	if !slices.Equal(files, want) {
		t.Errorf("image files %v, want exactly %v", files, want)
	}

	// The entrypoint: the binary build.sh built, static.
	entry := filepath.Join(rootfs, Entrypoint)
	got, want1 := sum(t, entry), sum(t, filepath.Join(dir, "nftvs"))
	if got != want1 {
		t.Error("the image's nftvs differs from the binary build.sh built")
	}
	f, err := elf.Open(entry)
	if err != nil {
		t.Fatalf("%s is not ELF: %v", Entrypoint, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked", Entrypoint)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs %v", Entrypoint, libs)
	}
	f.Close()
	if st, err := os.Stat(entry); err != nil || st.Mode().Perm()&0o111 == 0 {
		t.Errorf("%s not executable: %v %v", Entrypoint, st.Mode(), err)
	}

	// kube-proxy resolves, inside the image's root, to the entrypoint.
	link, err := os.Readlink(filepath.Join(rootfs, KubeProxy))
	if err != nil {
		t.Fatal(err)
	}
	if resolved := path.Join(path.Dir(KubeProxy), link); resolved != Entrypoint {
		t.Errorf("%s -> %s resolves to %s, want %s", KubeProxy, link, resolved, Entrypoint)
	}
	for _, c := range []string{Entrypoint, KubeProxy} {
		out, err := exec.Command(filepath.Join(rootfs, c), "--version").CombinedOutput()
		// nftvs's version first (its identity), then what it stands in for.
		if want := "nftvs v0.0.0-test (in place of kube-proxy"; err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), want) {
			t.Errorf("%s --version: %q, %v; want %s...", c, out, err, want)
		}
	}

	st, err := os.Stat(tarball)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image: tarball %.1f MB, layer %.1f MB compressed (gzip), %.1f MB uncompressed",
		float64(st.Size())/1e6, float64(compressed)/1e6, float64(uncompressed)/1e6)
}

// runBuild runs build.sh into a temporary directory, as a user would, and
// returns the directory and the image tarball.
func runBuild(t *testing.T) (dir, tarball string) {
	t.Helper()
	dir = t.TempDir()
	cmd := exec.Command("./build.sh")
	cmd.Env = append(os.Environ(), "NFTVS_BIN_DIR="+dir, "NFTVS_VERSION=v0.0.0-test")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	t.Logf("build.sh:\n%s", out)
	tarball = filepath.Join(dir, "nftvs-image.tar")
	if !strings.Contains(string(out), tarball) {
		t.Errorf("build.sh did not print the tarball path %s", tarball)
	}
	return dir, tarball
}

// openImage unpacks the OCI layout tarball into lay and reads its one
// image back with go-containerregistry.
func openImage(t *testing.T, tarball, lay string) (v1.Image, v1.Descriptor) {
	t.Helper()
	untar(t, tarball, lay)
	for _, f := range []string{"oci-layout", "index.json"} {
		if _, err := os.Stat(filepath.Join(lay, f)); err != nil {
			t.Fatalf("not an OCI layout: %v", err)
		}
	}
	idx, err := layout.ImageIndexFromPath(lay)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("%d manifests in index.json, want 1", len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, im.Manifests[0]
}

// unpackLayer extracts a layer into rootfs and returns its entries (as
// absolute paths) and the bytes of its regular files.
func unpackLayer(t *testing.T, layer v1.Layer, rootfs string) (files []string, size int64) {
	t.Helper()
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, size
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimSuffix(path.Clean(h.Name), "/")
		files = append(files, name)
		dst := filepath.Join(rootfs, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(dst, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, dst)
		case tar.TypeReg:
			var data []byte
			data, err = io.ReadAll(tr)
			size += int64(len(data))
			if err == nil {
				err = os.WriteFile(dst, data, os.FileMode(h.Mode))
			}
		default:
			t.Errorf("%s: unexpected tar entry type %c", name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func sum(t *testing.T, file string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func untar(t *testing.T, file, dst string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dst+string(filepath.Separator)) {
			t.Fatalf("tarball entry %q escapes", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
					err = os.WriteFile(p, data, 0o644)
				}
			}
		default:
			t.Fatalf("tarball entry %q of type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Build refuses a dynamically linked binary: it could not run on an empty
// base.
func TestRefusesDynamicBinary(t *testing.T) {
	for _, bin := range []string{"/bin/ls", "/usr/bin/env"} {
		if _, err := os.Stat(bin); err != nil {
			continue
		}
		_, err := Build(Options{Binary: bin, Out: filepath.Join(t.TempDir(), "x.tar")})
		if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
			t.Errorf("Build(%s): err = %v, want a refusal naming CGO_ENABLED=0", bin, err)
		}
		return
	}
	t.Fatal("no dynamically linked binary found to test with")
}
