package kubeclient

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/reference"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// EventSink writes Events: a Client, or a fake in tests.
type EventSink interface {
	CreateEvent(ctx context.Context, e *eventsv1.Event) (*eventsv1.Event, error)
	PatchEvent(ctx context.Context, namespace, name string, patch []byte) (*eventsv1.Event, error)
}

// What the Recorder keeps to client-go's event broadcaster
// (k8s.io/client-go/tools/events), whose package imports the clientset:
const (
	// maxQueuedEvents: more waiting to be written are dropped.
	maxQueuedEvents = 1000
	// seriesWindow: an Event isomorphic to one recorded less than this
	// long ago counts in its series instead of being written anew; a
	// series is written again (its count) and forgotten this long after
	// its last occurrence.
	seriesWindow = 6 * time.Minute
	// maxTries and retryWait: writing an Event is retried while the API
	// server cannot be reached.
	maxTries  = 12
	retryWait = 10 * time.Second
	// maxSeries bounds the Events remembered for series (one per Service
	// and reason at most, for seriesWindow): beyond, an Event is written
	// but not remembered.
	maxSeries = 4096
)

// Recorder records events.k8s.io/v1 Events as client-go's event
// broadcaster does: asynchronously, at most maxQueuedEvents waiting, and
// an Event isomorphic to a recent one (same type, reason, action,
// reporter, regarding and related objects; not the note) written as that
// one's series count instead of as a new Event.
type Recorder struct {
	sink                 EventSink
	controller, instance string
	clock                clock.WithTicker
	retryWait            time.Duration
	queue                chan *eventsv1.Event

	// series: owned by Run.
	series map[seriesKey]*recorded
}

type seriesKey struct {
	eventType, action, reason string
	regarding, related        v1.ObjectReference
}

// recorded is an Event as last written, and its count since.
type recorded struct {
	event   *eventsv1.Event
	written int32 // the series count last written (0: none, 1: the Event alone)
}

// NewRecorder returns a Recorder writing to sink as controller (the
// Events' reportingController; the instance is controller-hostname, as
// client-go's). Nothing is written until Run.
func NewRecorder(sink EventSink, controller string) *Recorder {
	host, _ := os.Hostname()
	return &Recorder{sink: sink, controller: controller, instance: controller + "-" + host,
		clock: clock.RealClock{}, retryWait: retryWait,
		queue: make(chan *eventsv1.Event, maxQueuedEvents), series: map[seriesKey]*recorded{}}
}

// Eventf queues an Event regarding an object (an *v1.ObjectReference, or
// an object of Scheme); related may be nil. It never blocks: with
// maxQueuedEvents waiting, the Event is dropped.
func (r *Recorder) Eventf(regarding, related runtime.Object, eventType, reason, action, note string, args ...any) {
	if eventType != v1.EventTypeNormal && eventType != v1.EventTypeWarning {
		klog.ErrorS(nil, "Unsupported event type", "eventType", eventType)
		return
	}
	reg, err := reference.GetReference(Scheme, regarding)
	if err != nil {
		klog.ErrorS(err, "Could not construct reference, will not report event", "object", regarding, "reason", reason)
		return
	}
	var rel *v1.ObjectReference
	if related != nil {
		if rel, err = reference.GetReference(Scheme, related); err != nil {
			klog.V(4).InfoS("Could not construct reference", "object", related, "err", err)
		}
	}
	now := r.clock.Now()
	ns := reg.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	e := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%v.%x", reg.Name, now.UnixNano()), Namespace: ns},
		EventTime:  metav1.MicroTime{Time: now}, ReportingController: r.controller, ReportingInstance: r.instance,
		Action: action, Reason: reason, Regarding: *reg, Related: rel, Note: fmt.Sprintf(note, args...), Type: eventType,
	}
	select {
	case r.queue <- e:
	default:
		klog.V(2).InfoS("Event queue full, event dropped", "regarding", reg.Name, "reason", reason)
	}
}

// flushTimeout bounds the last writes when Run stops.
const flushTimeout = 2 * time.Second

// Run writes the queued Events until ctx ends, then, for at most
// flushTimeout, those still queued: the Event that says why nftvs stops
// (a server that cannot bind with --bind-address-hard-fail) is queued
// right before it does.
func (r *Recorder) Run(ctx context.Context) {
	t := r.clock.NewTicker(seriesWindow)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.flush()
			return
		case e := <-r.queue:
			r.record(ctx, e)
		case <-t.C():
			r.finishSeries(ctx)
		}
	}
}

// flush writes what is queued, once each, within flushTimeout.
func (r *Recorder) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	for ctx.Err() == nil {
		select {
		case e := <-r.queue:
			if err := r.writeOnce(ctx, &recorded{event: e}); err != nil {
				klog.ErrorS(err, "Unable to write event at exit", "regarding", e.Regarding.Name, "reason", e.Reason)
			}
		default:
			return
		}
	}
}

// record writes e, or counts it in the series of an isomorphic Event:
// the second occurrence writes the series (count 2) at once, later ones
// only count until finishSeries writes the count.
func (r *Recorder) record(ctx context.Context, e *eventsv1.Event) {
	k := seriesKey{eventType: e.Type, action: e.Action, reason: e.Reason, regarding: e.Regarding}
	if e.Related != nil {
		k.related = *e.Related
	}
	if s, ok := r.series[k]; ok {
		if s.event.Series != nil {
			s.event.Series.Count++
			s.event.Series.LastObservedTime = e.EventTime
			return
		}
		s.event.Series = &eventsv1.EventSeries{Count: 2, LastObservedTime: e.EventTime}
		r.write(ctx, s)
		return
	}
	s := &recorded{event: e}
	if len(r.series) < maxSeries {
		r.series[k] = s
	}
	r.write(ctx, s)
}

// finishSeries writes the counts of series that grew since last written,
// and forgets the Events last seen more than seriesWindow ago.
func (r *Recorder) finishSeries(ctx context.Context) {
	for k, s := range r.series {
		last := s.event.EventTime.Time
		if s.event.Series != nil {
			if s.event.Series.Count != s.written {
				r.write(ctx, s)
			}
			last = s.event.Series.LastObservedTime.Time
		}
		if r.clock.Since(last) >= seriesWindow {
			delete(r.series, k)
		}
	}
}

// write writes s's Event (its series as a patch of the Event already
// written, or the whole Event when that is gone), retrying while the
// API server cannot be reached.
func (r *Recorder) write(ctx context.Context, s *recorded) {
	for try := 1; ; try++ {
		err := r.writeOnce(ctx, s)
		if err == nil {
			return
		}
		if apierrors.IsAlreadyExists(err) || apierrors.IsInvalid(err) || apierrors.IsForbidden(err) || apierrors.IsBadRequest(err) {
			klog.ErrorS(err, "Server rejected event (will not retry!)", "regarding", s.event.Regarding.Name, "reason", s.event.Reason)
			return
		}
		if try >= maxTries {
			klog.ErrorS(err, "Unable to write event (retry limit exceeded!)", "regarding", s.event.Regarding.Name, "reason", s.event.Reason)
			return
		}
		klog.ErrorS(err, "Unable to write event (may retry after sleeping)")
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait.Jitter(r.retryWait, 0.25)):
		}
	}
}

func (r *Recorder) writeOnce(ctx context.Context, s *recorded) error {
	e := s.event
	if e.Series != nil {
		patch, err := json.Marshal(map[string]*eventsv1.EventSeries{"series": e.Series})
		if err != nil {
			return err
		}
		_, err = r.sink.PatchEvent(ctx, e.Namespace, e.Name, patch)
		if err == nil {
			s.written = e.Series.Count
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		// The Event is gone (expired, deleted): write it whole again.
	}
	written := e.DeepCopy()
	written.ResourceVersion = ""
	if _, err := r.sink.CreateEvent(ctx, written); err != nil {
		return err
	}
	s.written = 1
	if e.Series != nil {
		s.written = e.Series.Count
	}
	return nil
}
