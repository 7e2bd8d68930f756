package app

import (
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/internal/metricstest"
	"github.com/nftvs/nftvs/metrics"
	"strings"
)

func metav1Duration(d time.Duration) metav1.Duration { return metav1.Duration{Duration: d} }

func step(c *clocktesting.FakePassiveClock, d time.Duration) { c.SetTime(c.Now().Add(d)) }

// failingCleaner deletes two flows and fails.
type failingCleaner struct{}

func (failingCleaner) Clean([]conntrack.Stale) (conntrack.Result, error) {
	return conntrack.Result{Walks: 1, Deleted: 2, Duration: time.Millisecond}, errors.New("netlink: ENOBUFS")
}

// value is the value of the counter or gauge name in m whose labels
// include labelValue (metricstest.Value).
func value(t *testing.T, m *metrics.Metrics, name, labelValue string) float64 {
	return metricstest.Value(t, m.Registry, name, labelValue)
}

func mustParse(t *testing.T, args ...string) *config.Config {
	t.Helper()
	o := config.NewOptions()
	fs := o.NewFlagSet()
	fs.SetOutput(&strings.Builder{})
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	cfg, err := o.Complete()
	if err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return cfg
}
