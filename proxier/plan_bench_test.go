package proxier

import (
	"testing"

	discovery "k8s.io/api/discovery/v1"
)

// BenchmarkPlanService is planning alone, one Service with a slice of 10
// endpoints: what a first sync or a restart does 10k times.
func BenchmarkPlanService(b *testing.B) {
	svcs, slices := benchObjects(100)
	cfg := testConfig()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := PlanService(svcs[i%100], []*discovery.EndpointSlice{slices[i%100]}, cfg); err != nil {
			b.Fatal(err)
		}
	}
}
