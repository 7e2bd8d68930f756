package app

import (
	"os"
	"runtime/debug"

	"k8s.io/klog/v2"
)

// steadyGCPercent is the Go GC's target (GOGC) once the first sync is
// done. A node's live heap after its first sync is what it holds for
// good (at 10k Services, about 110 MB in the VM); what it allocates
// after that (changes, periodic syncs, metrics scrapes) is garbage that
// piles up to the GC's goal, by default twice the live heap, before a
// collection. That sawtooth, not the first sync, set nftvs's peak RSS
// (issue 27: the largest heap 183 MB against 110 live, 100 s after
// start). At 50 the goal is 1.5× the live heap; the GC runs more often
// on the little a settled node allocates. The first sync, which
// allocates most, keeps the default.
const steadyGCPercent = 50

// gcTuner lowers GOGC after the first sync, unless the operator set
// GOGC or GOMEMLIMIT in nftvs's environment (theirs wins).
type gcTuner struct {
	getenv  func(string) string
	setGOGC func(int) int
	done    bool
}

func newGCTuner() *gcTuner { return &gcTuner{getenv: os.Getenv, setGOGC: debug.SetGCPercent} }

// synced is called after every sync; only the first one counts.
func (g *gcTuner) synced() {
	if g.done {
		return
	}
	g.done = true
	if g.getenv("GOGC") != "" || g.getenv("GOMEMLIMIT") != "" {
		return
	}
	was := g.setGOGC(steadyGCPercent)
	klog.InfoS("First sync done: Go GC target lowered for the steady state", "GOGC", steadyGCPercent, "was", was)
}
