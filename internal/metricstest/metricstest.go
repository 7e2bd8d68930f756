// Package metricstest reads metrics back in tests.
package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Value is the value of the counter or gauge name in g whose labels
// include labelValue (or of the one sample without labels), 0 when there
// is none.
func Value(t testing.TB, g prometheus.Gatherer, name, labelValue string) float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.Metric {
			match := labelValue == "" && len(s.Label) == 0
			for _, l := range s.Label {
				match = match || l.GetValue() == labelValue
			}
			if match {
				return s.GetCounter().GetValue() + s.GetGauge().GetValue()
			}
		}
	}
	return 0
}
