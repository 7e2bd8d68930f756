package netnstest

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// RaiseConntrackMax lifts the global nf_conntrack_max (writable only from
// the initial namespace) to at least atLeast for a benchmark that fills a
// namespace's table, and restores it when the benchmark ends. It skips,
// loudly, where it cannot.
func RaiseConntrackMax(b *testing.B, atLeast int) {
	b.Helper()
	const path = "/proc/sys/net/netfilter/nf_conntrack_max"
	old, err := os.ReadFile(path)
	if err != nil {
		b.Skipf("BENCHMARK SKIPPED: read %s: %v", path, err)
	}
	cur, _ := strconv.Atoi(strings.TrimSpace(string(old)))
	if cur >= atLeast {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(atLeast)), 0o644); err != nil {
		b.Skipf("BENCHMARK SKIPPED: raise %s to %d (needs the initial netns): %v", path, atLeast, err)
	}
	b.Cleanup(func() {
		if err := os.WriteFile(path, old, 0o644); err != nil {
			b.Errorf("restore %s: %v", path, err)
		}
	})
}
