package metrics

import (
	"errors"

	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/conntrack"
)

// NewInstrumentedConntrack is inner, run once per IP family and counted
// in m (nil: not counted).
func NewInstrumentedConntrack(inner conntrack.Interface, m *Metrics) conntrack.Interface {
	return instrumentedConntrack{inner: inner, metrics: m}
}

// instrumentedConntrack runs the conntrack cleaner once per IP family,
// as kube-proxy runs its reconciler in each family's proxier, and counts
// what it does under that family. The proxier logs and swallows cleanup
// errors (entries expire on their own), so this is where they are
// counted.
type instrumentedConntrack struct {
	inner   conntrack.Interface
	metrics *Metrics
}

func (c instrumentedConntrack) Clean(stale []conntrack.Stale) (conntrack.Result, error) {
	var total conntrack.Result
	var errs []error
	for _, f := range staleByFamily(stale) {
		r, err := c.inner.Clean(f.stale)
		total = addResults(total, r)
		if err != nil {
			errs = append(errs, err)
		}
		if m := c.metrics; m != nil {
			// Every run, as kube-proxy's reconciler observes every run,
			// whether it found flows to delete or not.
			m.conntrackDuration.WithLabelValues(string(f.family)).Observe(r.Duration.Seconds())
			m.conntrackDeleted.WithLabelValues(string(f.family)).Add(float64(r.Deleted))
			if err != nil {
				m.syncErrors.WithLabelValues("conntrack").Inc()
			}
		}
	}
	return total, errors.Join(errs...)
}

type familyStale struct {
	family v1.IPFamily
	stale  []conntrack.Stale
}

// staleByFamily splits stale by the family of its frontends (or of its
// endpoint), IPv4 first; an entry with neither goes with IPv4.
func staleByFamily(stale []conntrack.Stale) []familyStale {
	var v4, v6 []conntrack.Stale
	for _, s := range stale {
		is6 := s.Endpoint.Addr().Is6()
		if len(s.Frontends) > 0 {
			is6 = s.Frontends[0].Addr().Is6()
		}
		if is6 {
			v6 = append(v6, s)
		} else {
			v4 = append(v4, s)
		}
	}
	var out []familyStale
	if len(v4) > 0 || len(v6) == 0 {
		out = append(out, familyStale{v1.IPv4Protocol, v4})
	}
	if len(v6) > 0 {
		out = append(out, familyStale{v1.IPv6Protocol, v6})
	}
	return out
}

// addResults sums two cleanups' results.
func addResults(a, b conntrack.Result) conntrack.Result {
	filtered := b.Filtered && (a.Walks == 0 || a.Filtered)
	return conntrack.Result{
		Walks: a.Walks + b.Walks, Scanned: a.Scanned + b.Scanned, Filtered: filtered,
		Deleted: a.Deleted + b.Deleted, Vanished: a.Vanished + b.Vanished,
		Duration: a.Duration + b.Duration, DumpDuration: a.DumpDuration + b.DumpDuration,
	}
}
