// Package netnstest gives kernel tests a throwaway, named network
// namespace, so that they never touch the host's own networking.
package netnstest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

var seq atomic.Int64

// RequireRoot skips the test, loudly, when not running as root. Kernel
// tests may skip only for this reason.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("KERNEL TEST SKIPPED: needs root (run `make test` as root); nothing was checked")
	}
}

// NS is a named network namespace (visible to `ip netns exec`).
type NS struct {
	Name   string
	Handle netns.NsHandle
}

// New creates a named network namespace, deleted when the test ends.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("nftvs-test-%d-%d", os.Getpid(), seq.Add(1))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("return to original netns: %v", err)
	}
	ns := &NS{Name: name, Handle: h}
	t.Cleanup(func() {
		h.Close()
		_ = netns.DeleteNamed(name)
	})
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// FD is the namespace's file descriptor.
func (n *NS) FD() int { return int(n.Handle) }

// Run runs a command inside the namespace and returns its output; it fails
// the test when the command fails.
func (n *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Try(name, args...)
	if err != nil {
		t.Fatalf("ip netns exec %s %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command inside the namespace and returns its output and error.
func (n *NS) Try(name string, args ...string) (string, error) {
	return n.TryStdin(nil, name, args...)
}

// TryStdin is Try with the command's standard input read from stdin.
func (n *NS) TryStdin(stdin io.Reader, name string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Do runs fn with the calling goroutine's thread inside the namespace.
func (n *NS) Do(t testing.TB, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(n.Handle); err != nil {
		t.Fatalf("enter netns %s: %v", n.Name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("cannot return to original netns: %v", err))
		}
	}()
	fn()
}
