package proxier

import "testing"

// BenchmarkPlanService is planning alone, one Service with a slice of 10
// endpoints: what a first sync or a restart does 10k times.
func BenchmarkPlanService(b *testing.B) {
	svcs, apiSlices := benchObjects(100)
	slices := newEpSlices(apiSlices) // as the proxier keeps them
	cfg := testConfig()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := planService(svcs[i%100], []*epSlice{slices[i%100]}, cfg); err != nil {
			b.Fatal(err)
		}
	}
}
