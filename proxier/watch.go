package proxier

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Labels kube-proxy honours when watching.
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	labelHeadless         = "service.kubernetes.io/headless"
)

// WatchOptions are what Watch watches besides Services and
// EndpointSlices.
type WatchOptions struct {
	// Resync is the informers' resync period (--config-sync-period).
	Resync time.Duration
	// Node is the informer on this Node: its topology zone and addresses
	// feed the proxier (OnNodeUpdate). It may already be running (the
	// command starts it first, to wait for the Node's IPs); Watch
	// then only adds the proxier's handler to it.
	Node *NodeInformer
	// OnChange, when set, is called after each Service and EndpointSlice
	// event has been handed to the proxier (kube-proxy's change metrics).
	OnChange func(Change)
}

// Change is one Service or EndpointSlice event handed to the proxier.
type Change struct {
	// EndpointSlice is true for an EndpointSlice event, false for a
	// Service event.
	EndpointSlice bool
	// Service is the Service the object belongs to.
	Service types.NamespacedName
	// Changed is false for an update that changed nothing (an informer
	// resync hands every object again with the same resourceVersion).
	Changed bool
}

// Source lists and watches what the proxier is fed: nftvs's API client
// (internal/kubeclient), or in tests a clientset
// (internal/kubeclient/clientset). Each tweak, if not nil, sets the
// selectors of every list and watch.
type Source interface {
	Services(tweak func(*metav1.ListOptions)) cache.ListerWatcher
	EndpointSlices(tweak func(*metav1.ListOptions)) cache.ListerWatcher
}

// NodeSource lists and watches Nodes.
type NodeSource interface {
	Nodes(tweak func(*metav1.ListOptions)) cache.ListerWatcher
}

// NodeInformer is an informer on one Node only, by name.
type NodeInformer struct {
	cache.SharedIndexInformer
	started atomic.Bool
}

// NewNodeInformer returns an informer on the Node named nodeName; it does
// not start it.
func NewNodeInformer(client NodeSource, nodeName string, resync time.Duration) *NodeInformer {
	lw := client.Nodes(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
	})
	return &NodeInformer{SharedIndexInformer: newInformer(lw, &v1.Node{}, resync)}
}

// newInformer is an informer on what lw lists, its objects stripped of
// what nftvs never reads (StripUnread).
func newInformer(lw cache.ListerWatcher, obj runtime.Object, resync time.Duration) cache.SharedIndexInformer {
	inf := cache.NewSharedIndexInformerWithOptions(lw, obj, cache.SharedIndexInformerOptions{ResyncPeriod: resync})
	// Only a running informer refuses a transform.
	utilruntime.Must(inf.SetTransform(StripUnread))
	return inf
}

// Start starts the informer unless it runs already.
func (n *NodeInformer) Start(stop <-chan struct{}) {
	if !n.started.Swap(true) {
		go n.Run(stop)
	}
}

// Watch starts informers for Services and EndpointSlices, adds the
// proxier's handler to the Node's informer (o.Node), feeds the proxier,
// and returns once the caches have synced (or ctx ends). Like
// kube-proxy, it ignores objects labelled with another proxy's name and
// EndpointSlices of headless Services. The Node's informer is the
// command's, so that the Node is watched once.
func (p *Proxier) Watch(ctx context.Context, client Source, o WatchOptions) error {
	if o.Node == nil {
		return errors.New("watch: no Node informer")
	}
	tweak, err := serviceSelector()
	if err != nil {
		return err
	}
	svcInformer := newInformer(strippedPages(client.Services(tweak)), &v1.Service{}, o.Resync)
	sliceInformer := newInformer(strippedPages(client.EndpointSlices(tweak)), &discovery.EndpointSlice{}, o.Resync)
	nodeInformer := o.Node.SharedIndexInformer
	onChange := o.OnChange
	if onChange == nil {
		onChange = func(Change) {}
	}
	var handlers []cache.ResourceEventHandlerRegistration
	for inf, fn := range map[cache.SharedIndexInformer]func(old, obj any, deleted bool){
		svcInformer: p.serviceHandler(onChange), sliceInformer: p.sliceHandler(onChange), nodeInformer: p.nodeHandler,
	} {
		reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { fn(nil, o, false) },
			UpdateFunc: func(old, o any) { fn(old, o, false) },
			DeleteFunc: func(o any) { fn(nil, o, true) },
		})
		if err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		handlers = append(handlers, reg)
	}
	// A Node informer its caller started is not started again (nor given
	// a watch error handler, which a running informer refuses); the
	// proxier's handler on it is waited for all the same.
	toStart := map[string]cache.SharedIndexInformer{"services": svcInformer, "endpointslices.discovery.k8s.io": sliceInformer}
	if !o.Node.started.Load() {
		toStart["nodes"] = nodeInformer
	}
	err = StartAndSync(ctx, toStart, handlers, func() {
		go svcInformer.Run(ctx.Done())
		go sliceInformer.Run(ctx.Done())
		o.Node.Start(ctx.Done())
	})
	if err != nil {
		return err
	}
	klog.InfoS("Informer caches synced", "services", len(svcInformer.GetStore().ListKeys()),
		"endpointSlices", len(sliceInformer.GetStore().ListKeys()))
	p.SetSynced()
	return nil
}

// serviceSelector is the label selector of the Services and
// EndpointSlices watched: not those kube-proxy ignores, labelled with
// another proxy's name, and headless Services' EndpointSlices.
func serviceSelector() (func(*metav1.ListOptions), error) {
	noProxyName, err := labels.NewRequirement(labelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	noHeadless, err := labels.NewRequirement(labelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	sel := labels.NewSelector().Add(*noProxyName, *noHeadless).String()
	return func(lo *metav1.ListOptions) { lo.LabelSelector = sel }, nil
}

// keptAnnotationPrefixes are the Service annotations nftvs reads: its
// own scheduling annotations and kube-router's (docs/scheduling.md).
var keptAnnotationPrefixes = []string{"ipvs.nftvs.io/", "kube-router.io/"}

// keptServiceLabelPrefix: the Service labels kube-proxy honours
// (service-proxy-name, headless) are all under it.
const keptServiceLabelPrefix = "service.kubernetes.io/"

// cachedSlice is an EndpointSlice as the informers cache it (StripUnread):
// its metadata, address type and ports; its endpoints only in the
// compact form planning reads (epSlice), with the one label and the one
// annotation nftvs reads as fields.
type cachedSlice struct {
	discovery.EndpointSlice
	eps     epSlice
	service string // its kubernetes.io/service-name label
	trigger string // its endpoints.kubernetes.io/last-change-trigger-time annotation
}

// endpointSliceOf is an informer's EndpointSlice (cached, plain, or in a
// tombstone): its namespace and name, its endpoints as the proxier keeps
// them, its Service's name and its trigger-time annotation.
func endpointSliceOf(obj any) (namespace, name string, s *epSlice, service, trigger string, ok bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	switch o := obj.(type) {
	case *cachedSlice:
		return o.Namespace, o.Name, &o.eps, o.service, o.trigger, true
	case *discovery.EndpointSlice:
		return o.Namespace, o.Name, newEpSlice(o), o.Labels[discovery.LabelServiceName], o.Annotations[v1.EndpointsLastChangeTriggerTime], true
	}
	return "", "", nil, "", "", false
}

// StripUnread is the informers' transform: it drops from each object what
// nftvs never reads before the object is cached, since every node caches
// every Service and EndpointSlice of the cluster. Managed fields and
// kubectl's last-applied-configuration are often most of an object;
// selectors and the labels copied from a Service onto its slices are
// maps of their own; UIDs are never read (objects are known by
// namespace and name, as in kube-proxy). Kept: everything planning and `nftvs explain` read,
// the creation time (the older Service keeps a contested frontend), the
// resource version (a resync is no change), the EndpointSlice
// trigger-time annotation (network programming latency), a slice's
// Service name label (EndpointSlices are cached as cachedSlice, their
// endpoints as epSlice). It is idempotent, as client-go asks. The values
// repeated across a cluster's endpoints (node names, zones) are shared,
// not one copy each.
func StripUnread(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		o.ManagedFields = nil
		o.OwnerReferences = nil
		o.Finalizers = nil
		o.UID = ""
		o.Spec.Selector = nil
		o.Status.Conditions = nil
		for i := range o.Status.LoadBalancer.Ingress {
			o.Status.LoadBalancer.Ingress[i].Ports = nil
		}
		o.Annotations = keepKeys(o.Annotations, func(k string) bool {
			return slices.ContainsFunc(keptAnnotationPrefixes, func(p string) bool { return strings.HasPrefix(k, p) })
		})
		o.Labels = keepKeys(o.Labels, func(k string) bool { return strings.HasPrefix(k, keptServiceLabelPrefix) })
	case *discovery.EndpointSlice:
		// The endpoints are kept only as planning reads them (epSlice):
		// the API's structs were most of a slice. The one label and the
		// one annotation read, as fields: two maps of one entry each
		// were 800 bytes a slice.
		c := &cachedSlice{eps: *newEpSlice(o), service: o.Labels[discovery.LabelServiceName],
			trigger: o.Annotations[v1.EndpointsLastChangeTriggerTime]}
		c.ObjectMeta = metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Name, ResourceVersion: o.ResourceVersion}
		c.TypeMeta, c.AddressType, c.Ports = o.TypeMeta, o.AddressType, o.Ports
		return c, nil
	case *v1.Node:
		o.ManagedFields = nil
		// The images a node holds can be thousands of names.
		o.Status.Images = nil
		o.Status.VolumesAttached = nil
		o.Status.VolumesInUse = nil
	}
	return obj, nil
}

// keepKeys deletes from m the keys keep refuses; nil if none is left.
func keepKeys(m map[string]string, keep func(string) bool) map[string]string {
	for k := range m {
		if !keep(k) {
			delete(m, k)
		}
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

// stringPool hands out one *string per value: a node name or zone is
// repeated on every endpoint of the cluster (10 endpoints × 10k Services:
// 200k copies of a few node and zone names). It holds at most
// maxPooledStrings values, so that made-up names in EndpointSlices
// (any namespace user writes them) cannot grow it without bound; beyond
// that a value keeps its own copy.
type stringPool struct {
	mu sync.Mutex
	m  map[string]*string
}

const maxPooledStrings = 1 << 14

var endpointStrings = &stringPool{m: map[string]*string{}}

func (p *stringPool) share(s *string) *string {
	if s == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.m[*s]; ok {
		return v
	}
	if len(p.m) < maxPooledStrings {
		p.m[*s] = s
	}
	return s
}

// serviceHandler hands Service events to the proxier, then to onChange.
func (p *Proxier) serviceHandler(onChange func(Change)) func(old, obj any, deleted bool) {
	return func(old, obj any, deleted bool) {
		svc, ok := unwrap[*v1.Service](obj)
		if !ok {
			return
		}
		name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		if deleted {
			svc = nil
		}
		p.OnServiceUpdate(name, svc)
		onChange(Change{Service: name, Changed: changed(old, obj)})
	}
}

// sliceHandler hands EndpointSlice events to the proxier, then to
// onChange.
func (p *Proxier) sliceHandler(onChange func(Change)) func(old, obj any, deleted bool) {
	return func(old, obj any, deleted bool) {
		namespace, name, s, owner, trigger, ok := endpointSliceOf(obj)
		if !ok {
			return
		}
		if deleted {
			s = nil
		}
		p.updateEndpointSlice(namespace, name, s, owner, trigger)
		if owner != "" {
			onChange(Change{EndpointSlice: true, Service: types.NamespacedName{Namespace: namespace, Name: owner}, Changed: changed(old, obj)})
		}
	}
}

// nodeHandler hands this Node's topology zone and addresses to the
// proxier.
func (p *Proxier) nodeHandler(_, obj any, deleted bool) {
	n, ok := unwrap[*v1.Node](obj)
	if !ok || deleted {
		return
	}
	p.OnNodeUpdate(n.Labels[v1.LabelTopologyZone], NodeIPs(n, p.cfg.BindAddress))
}

// changed says whether an event changes the object: an add or delete
// does (old is nil); an update does unless both have the same
// resourceVersion (an informer resync).
func changed(old, obj any) bool {
	if old == nil {
		return true
	}
	a, errA := meta.Accessor(old)
	b, errB := meta.Accessor(obj)
	return errA != nil || errB != nil || a.GetResourceVersion() != b.GetResourceVersion()
}

// unwrap handles the tombstones informers hand to delete handlers.
func unwrap[T any](obj any) (T, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	v, ok := obj.(T)
	return v, ok
}

// StartAndSync starts informers (start starts their factories) and waits
// until their caches have synced. A missing permission would otherwise
// only show as client-go's retries in the log while nothing is ever
// programmed: before the caches have synced it ends the wait with an
// error naming the resource; later (a role changed under a running
// proxy) it is logged as an error on every retry, and the last synced
// state stays programmed. informers maps a resource name (for messages)
// to its informer, which must not have started yet.
//
// The wait also covers handlers, the registrations of the informers'
// event handlers: an informer's cache is synced before its handlers have
// been handed every object of the initial list, and the proxier's first
// sync is a full one that deletes the IPVS virtual servers it was not
// told about (those of a node it takes over, or its own after a
// restart), so it must not start on a part of the list.
func StartAndSync(ctx context.Context, informers map[string]cache.SharedIndexInformer, handlers []cache.ResourceEventHandlerRegistration, start func()) error {
	denied := make(chan error, 1)
	var synced []cache.InformerSynced
	for _, h := range handlers {
		synced = append(synced, h.HasSynced)
	}
	for name, inf := range informers {
		synced = append(synced, inf.HasSynced)
		if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			if !apierrors.IsForbidden(err) && !apierrors.IsUnauthorized(err) {
				cache.DefaultWatchErrorHandler(ctx, r, err)
				return
			}
			err = fmt.Errorf("list/watch %s: %w (the proxy's identity needs get, list and watch on %s: check its ClusterRole, deploy/clusterrole.yaml)", name, err, name)
			klog.ErrorS(err, "Permission denied by the API server")
			select {
			case denied <- err:
			default:
			}
		}); err != nil {
			return fmt.Errorf("set watch error handler: %w", err)
		}
	}
	syncCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start()
	done := make(chan bool, 1)
	go func() { done <- cache.WaitForCacheSync(syncCtx.Done(), synced...) }()
	select {
	case err := <-denied:
		return err
	case ok := <-done:
		if !ok {
			return fmt.Errorf("informer caches did not sync: %w", ctx.Err())
		}
		return nil
	}
}
