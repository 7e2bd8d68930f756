package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// guestScript runs in the test VM (a real IPVS kernel): the image's
// rootfs gets only what the DaemonSet gives the container (/proc, /sys,
// the host's /lib/modules read-only), the kernel's own module autoloader
// is turned off, and kube-proxy (the symlink) runs --init-only with a
// scheduler the VM does not preload. It must load ip_vs_lblc itself, with
// no modprobe, shell or library in its root.
const guestScript = `set -eu
R=$1
echo /nonexistent/modprobe > /proc/sys/kernel/modprobe
mkdir -p "$R/proc" "$R/sys" "$R/lib/modules"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --bind /lib/modules "$R/lib/modules"
mount -o remount,bind,ro "$R/lib/modules"
if [ -e /sys/module/ip_vs_lblc ]; then echo "ip_vs_lblc is preloaded: pick another scheduler"; exit 3; fi
chroot "$R" /usr/local/bin/kube-proxy --init-only --ipvs-scheduler=lblc --conntrack-max-per-core=0
echo "ip_vs_lblc initstate: $(cat /sys/module/ip_vs_lblc/initstate)"
`

func TestImageRunsInVM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("VM TEST SKIPPED: needs root to boot the test VM (e2e/vm/vmexec); the image was NOT run")
	}
	dir, tarball := runBuild(t)
	img, _ := openImage(t, tarball, filepath.Join(dir, "layout"))
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	unpackLayer(t, layers[0], rootfs)

	vmexec, err := filepath.Abs("../../e2e/vm/vmexec")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(vmexec, "/bin/sh", "-c", guestScript, "sh", rootfs).CombinedOutput()
	t.Logf("in the VM:\n%s", out)
	if err != nil {
		t.Fatalf("the image's kube-proxy --init-only in an empty root: %v", err)
	}
	if !strings.Contains(string(out), "ip_vs_lblc initstate: live") {
		t.Error("ip_vs_lblc was not loaded by the image's binary")
	}
	// moby/ipvs's failed modprobe exec is expected here and must not reach
	// the log as a logrus warning (cmd/nftvs/app/logrus.go).
	if strings.Contains(string(out), "modprobe") {
		t.Error("the log mentions modprobe, which the image does not have")
	}
}
