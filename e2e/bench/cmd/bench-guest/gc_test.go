package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// gcSummary reads the lines GODEBUG=gctrace=1 writes (Go 1.2x format),
// among the proxy's own log lines.
func TestGCSummary(t *testing.T) {
	p := filepath.Join(t.TempDir(), "proxy.log")
	log := `I1206 16:36:44.231280     141 sync.go:139] "Full sync" services=10001
gc 1 @0.012s 1%: 0.010+0.50+0.002 ms clock, 0.020+0.10/0.40/0+0.004 ms cpu, 3->3->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P
gc 7 @5.100s 3%: 0.1+80+0.01 ms clock, 0.2+1/60/0+0.02 ms cpu, 210->230->120 MB, 220 MB goal, 1 MB stacks, 0 MB globals, 2 P
gc 8 @9.800s 3%: 0.1+80+0.01 ms clock, 0.2+1/60/0+0.02 ms cpu, 240->250->100 MB, 241 MB goal, 1 MB stacks, 0 MB globals, 2 P
`
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	got, ok := gcSummary(p)
	want := "GC: 3 cycles; largest heap at a cycle's start 240 MB (@9.800s), at its end 250 MB (@9.800s), largest live heap after one 120 MB (@5.100s)"
	if !ok || got != want {
		t.Errorf("gcSummary = %q, %v\nwant %q", got, ok, want)
	}
}

// The VM's CPU time: busy within total, and it grows while this test
// spins.
func TestVMCPU(t *testing.T) {
	b0, a0 := vmCPU()
	if b0 <= 0 || a0 < b0 {
		t.Fatalf("vmCPU() = %v busy of %v: want 0 < busy ≤ total", b0, a0)
	}
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
	}
	if b1, a1 := vmCPU(); b1-b0 < 0.1 || a1 < a0 {
		t.Errorf("after 300 ms of spinning: busy %v → %v, total %v → %v", b0, b1, a0, a1)
	}
}
