package kubeclient

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"
)

// sink is an EventSink in memory: what was created and patched, and
// errors to answer first.
type sink struct {
	created []*eventsv1.Event
	patched []map[string]eventsv1.EventSeries // each patch's body
	names   []string                          // each patch's Event
	errs    []error                           // answered, in turn, before success
	stored  map[string]bool
}

func (s *sink) fail() error {
	if len(s.errs) == 0 {
		return nil
	}
	err := s.errs[0]
	s.errs = s.errs[1:]
	return err
}

func (s *sink) CreateEvent(_ context.Context, e *eventsv1.Event) (*eventsv1.Event, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	s.created = append(s.created, e)
	if s.stored == nil {
		s.stored = map[string]bool{}
	}
	s.stored[e.Namespace+"/"+e.Name] = true
	return e, nil
}

func (s *sink) PatchEvent(_ context.Context, ns, name string, patch []byte) (*eventsv1.Event, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	if !s.stored[ns+"/"+name] {
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: "events.k8s.io", Resource: "events"}, name)
	}
	var body map[string]eventsv1.EventSeries
	if err := json.Unmarshal(patch, &body); err != nil {
		return nil, err
	}
	s.patched, s.names = append(s.patched, body), append(s.names, name)
	return &eventsv1.Event{}, nil
}

func newTestRecorder(s *sink) (*Recorder, *clocktesting.FakeClock) {
	r := NewRecorder(s, "nftvs")
	c := clocktesting.NewFakeClock(time.Date(2026, 12, 7, 11, 0, 0, 0, time.UTC))
	r.clock = c
	return r, c
}

// drain records what Eventf queued, as Run does.
func drain(r *Recorder) {
	for {
		select {
		case e := <-r.queue:
			r.record(context.Background(), e)
		default:
			return
		}
	}
}

var service = &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: "tenant", Name: "web"}

// The first Event is written whole, its fields as client-go's recorder
// makes them; an isomorphic one (another note) becomes the first's series
// (count 2, patched at once); later ones are counted, and their count is
// written when the series window ends, after which the series is
// forgotten and the next Event is written anew.
func TestRecorderSeries(t *testing.T) {
	s := &sink{}
	r, c := newTestRecorder(s)
	node := &v1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: "node-a"}
	r.Eventf(service, node, v1.EventTypeWarning, "AddressRefused", "SyncProxyRules", "address %s refused", "10.0.0.1")
	drain(r)
	if len(s.created) != 1 {
		t.Fatalf("%d Events created, want 1", len(s.created))
	}
	e := s.created[0]
	if e.Namespace != "tenant" || e.Regarding.Name != "web" || e.Related == nil || e.Related.Name != "node-a" ||
		e.Note != "address 10.0.0.1 refused" || e.ReportingController != "nftvs" || e.Reason != "AddressRefused" ||
		e.Action != "SyncProxyRules" || e.Type != v1.EventTypeWarning || e.EventTime.IsZero() || e.Series != nil {
		t.Errorf("Event %+v", e)
	}

	c.Step(time.Second)
	r.Eventf(service, node, v1.EventTypeWarning, "AddressRefused", "SyncProxyRules", "another note")
	drain(r)
	if len(s.created) != 1 || len(s.patched) != 1 || s.names[0] != e.Name || s.patched[0]["series"].Count != 2 {
		t.Fatalf("second Event: created %d, patches %v; want none created and the first's series patched to 2", len(s.created), s.patched)
	}
	for range 3 {
		r.Eventf(service, node, v1.EventTypeWarning, "AddressRefused", "SyncProxyRules", "again")
	}
	// Not isomorphic: another reason.
	r.Eventf(service, node, v1.EventTypeWarning, "SourceRangesRefused", "SyncProxyRules", "x")
	drain(r)
	if len(s.created) != 2 || len(s.patched) != 1 {
		t.Fatalf("after 3 more and one other: created %d, patched %d; want 2 and 1", len(s.created), len(s.patched))
	}

	c.Step(seriesWindow)
	r.finishSeries(context.Background())
	if len(s.patched) != 2 || s.patched[1]["series"].Count != 5 {
		t.Fatalf("series window ended: patches %v, want the count 5 written", s.patched)
	}
	if len(r.series) != 0 {
		t.Errorf("%d series remembered after the window, want none", len(r.series))
	}
	r.Eventf(service, node, v1.EventTypeWarning, "AddressRefused", "SyncProxyRules", "later")
	drain(r)
	if len(s.created) != 3 {
		t.Errorf("an Event after the window: %d created, want a new one (3)", len(s.created))
	}
}

// A series whose Event is gone is written whole; an API server that
// cannot be reached is retried; one that refuses the Event is not.
func TestRecorderRetries(t *testing.T) {
	s := &sink{}
	r, c := newTestRecorder(s)
	r.retryWait = 0
	r.Eventf(service, nil, v1.EventTypeWarning, "R", "A", "n")
	r.Eventf(service, nil, v1.EventTypeWarning, "R", "A", "n")
	drain(r)
	if len(s.created) != 1 || len(s.patched) != 1 {
		t.Fatalf("created %d patched %d, want 1 and 1", len(s.created), len(s.patched))
	}
	// The Event expired in the API server: the series is created whole.
	s.stored = nil
	r.Eventf(service, nil, v1.EventTypeWarning, "R", "A", "n")
	drain(r)
	c.Step(seriesWindow)
	r.finishSeries(context.Background())
	if len(s.created) != 2 || s.created[1].Series == nil || s.created[1].Series.Count != 3 || s.created[1].ResourceVersion != "" {
		t.Fatalf("a gone Event's series: created %d (last %+v), want it created with count 3", len(s.created), s.created[len(s.created)-1])
	}

	s.errs = []error{errors.New("connection refused"), errors.New("connection refused")}
	r.Eventf(service, nil, v1.EventTypeNormal, "Other", "A", "n")
	drain(r)
	if len(s.created) != 3 {
		t.Errorf("after two transport errors: %d created, want the Event written on the third try", len(s.created))
	}
	s.errs = []error{apierrors.NewForbidden(schema.GroupResource{Group: "events.k8s.io", Resource: "events"}, "x", errors.New("no"))}
	r.Eventf(service, nil, v1.EventTypeNormal, "Third", "A", "n")
	drain(r)
	if len(s.created) != 3 || len(s.errs) != 0 {
		t.Errorf("a refused Event was retried: %d created", len(s.created))
	}
}

// Eventf never blocks: past maxQueuedEvents waiting, Events are dropped;
// an unknown type is not queued.
func TestRecorderQueueBounded(t *testing.T) {
	r, _ := newTestRecorder(&sink{})
	done := make(chan struct{})
	go func() {
		for range maxQueuedEvents + 10 {
			r.Eventf(service, nil, v1.EventTypeNormal, "R", "A", "n")
		}
		r.Eventf(service, nil, "Bogus", "R", "A", "n")
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Eventf blocked on a full queue")
	}
	if len(r.queue) != maxQueuedEvents {
		t.Errorf("%d queued, want %d", len(r.queue), maxQueuedEvents)
	}
}

// The Event queued right before nftvs stops is written when Run returns.
func TestRecorderFlushesAtStop(t *testing.T) {
	s := &sink{}
	r, _ := newTestRecorder(s)
	ctx, cancel := context.WithCancel(context.Background())
	r.Eventf(service, nil, v1.EventTypeWarning, "FailedToStartMetricServer", "StartKubeProxy", "bind: address in use")
	cancel()
	r.Run(ctx)
	if len(s.created) != 1 || s.created[0].Reason != "FailedToStartMetricServer" {
		t.Fatalf("created %v, want the Event queued before the stop", s.created)
	}
}
