package ipvs

import (
	"os"
	"strings"
	"testing"
)

// A kernel without IPVS is an error, not a panic: moby/ipvs's GetConfig
// panicked there, and with it `nftvs --cleanup` on such a node.
func TestNewKernelWithoutIPVS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("KERNEL TEST SKIPPED: needs root")
	}
	k, err := NewKernel("")
	if _, statErr := os.Stat("/proc/net/ip_vs"); statErr == nil {
		if k != nil {
			k.Close()
		}
		t.Skip("KERNEL TEST SKIPPED: this kernel has IPVS; the test needs one without (the host of make test)")
	}
	if err == nil || !strings.Contains(err.Error(), "ip_vs") {
		t.Errorf("NewKernel without IPVS: %v, want an error naming ip_vs", err)
	}
}
