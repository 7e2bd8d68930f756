// Package clientset serves what nftvs's kubeclient.Client serves from a
// client-go clientset instead, for tests: the fake clientset, or a real
// one in end-to-end tests. nftvs itself never imports it (kubeclient's
// package comment says why).
package clientset

import (
	"context"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Source is a clientset as kubeclient.Client's lists, watches and Event
// writes.
type Source struct{ kubernetes.Interface }

// New wraps cs.
func New(cs kubernetes.Interface) Source { return Source{cs} }

// lw is a ListerWatcher from a list and a watch function; the fake
// clientset tells the reflector it cannot serve watch-list streams.
func (s Source) lw(tweak func(*metav1.ListOptions), list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.ListerWatcher {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return watchFn(ctx, o)
		},
	}, s.Interface)
}

// Services lists and watches Services in every namespace.
func (s Source) Services(tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	c := s.CoreV1().Services("")
	return s.lw(tweak, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }, c.Watch)
}

// EndpointSlices lists and watches EndpointSlices in every namespace.
func (s Source) EndpointSlices(tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	c := s.DiscoveryV1().EndpointSlices("")
	return s.lw(tweak, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }, c.Watch)
}

// Nodes lists and watches Nodes.
func (s Source) Nodes(tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	c := s.CoreV1().Nodes()
	return s.lw(tweak, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }, c.Watch)
}

// CreateEvent creates e.
func (s Source) CreateEvent(ctx context.Context, e *eventsv1.Event) (*eventsv1.Event, error) {
	return s.EventsV1().Events(e.Namespace).Create(ctx, e, metav1.CreateOptions{})
}

// PatchEvent applies a JSON merge patch to an Event.
func (s Source) PatchEvent(ctx context.Context, namespace, name string, patch []byte) (*eventsv1.Event, error) {
	return s.EventsV1().Events(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
}
