package app

import "testing"

// TestGCTuner: GOGC is lowered once, after the first sync, and never
// when the operator set GOGC or GOMEMLIMIT.
func TestGCTuner(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []int
	}{
		{env: map[string]string{}, want: []int{steadyGCPercent}},
		{env: map[string]string{"GOGC": "200"}},
		{env: map[string]string{"GOMEMLIMIT": "300MiB"}},
	} {
		var set []int
		g := &gcTuner{getenv: func(k string) string { return tc.env[k] }, setGOGC: func(p int) int { set = append(set, p); return 100 }}
		for range 3 {
			g.synced()
		}
		if len(set) != len(tc.want) || len(set) > 0 && set[0] != tc.want[0] {
			t.Errorf("env %v: GOGC set to %v, want %v", tc.env, set, tc.want)
		}
	}
}
