// Package kubeclient is the part of the Kubernetes API that nftvs uses:
// it lists and watches Services, EndpointSlices and its Node, and writes
// Events. It is client-go's REST client over a scheme of those three API
// groups alone.
//
// Why not client-go's generated clientset: the clientset, and the
// informer factory and event broadcaster built on it, link and register
// at start every API group Kubernetes serves (55 of them). That cost
// nftvs 8.5 MB of resident memory on every node, whatever its size (a
// program that only builds a clientset: 19.8 MB RSS, 16.6 MB of it the
// binary's pages that the groups' init functions touch; the same program
// on this package's scheme: 11.2 MB).
package kubeclient

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/flowcontrol"
)

// Scheme holds the types of the three groups nftvs reads or writes.
var Scheme = runtime.NewScheme()

var codecs = serializer.NewCodecFactory(Scheme)

func init() {
	utilruntime.Must(v1.AddToScheme(Scheme))
	utilruntime.Must(discovery.AddToScheme(Scheme))
	utilruntime.Must(eventsv1.AddToScheme(Scheme))
}

// Client is nftvs's access to the API server: one REST client per API
// group, sharing one HTTP client and one rate limiter (clientConnection's
// qps and burst), as the clientset's groups do.
type Client struct {
	core, discovery, events rest.Interface
}

// NewForConfig builds a Client from c, as the clientset's NewForConfig
// does for its groups.
func NewForConfig(c *rest.Config) (*Client, error) {
	cfg := *c
	if cfg.RateLimiter == nil && cfg.QPS > 0 {
		if cfg.Burst <= 0 {
			return nil, fmt.Errorf("burst is required to be greater than 0 when RateLimiter is not set and QPS is set to greater than 0")
		}
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	hc, err := rest.HTTPClientFor(&cfg)
	if err != nil {
		return nil, err
	}
	group := func(gv schema.GroupVersion, apiPath string) (rest.Interface, error) {
		g := cfg
		g.GroupVersion = &gv
		g.APIPath = apiPath
		g.NegotiatedSerializer = codecs.WithoutConversion()
		return rest.RESTClientForConfigAndClient(&g, hc)
	}
	var out Client
	for _, g := range []struct {
		to   *rest.Interface
		gv   schema.GroupVersion
		path string
	}{
		{&out.core, v1.SchemeGroupVersion, "/api"},
		{&out.discovery, discovery.SchemeGroupVersion, "/apis"},
		{&out.events, eventsv1.SchemeGroupVersion, "/apis"},
	} {
		if *g.to, err = group(g.gv, g.path); err != nil {
			return nil, fmt.Errorf("%s client: %w", g.gv, err)
		}
	}
	return &out, nil
}

// RESTClients are the client's REST clients by group ("core",
// "discovery", "events"), for tests of their configuration.
func (c *Client) RESTClients() map[string]rest.Interface {
	return map[string]rest.Interface{"core": c.core, "discovery": c.discovery, "events": c.events}
}

// Services lists and watches Services in every namespace; tweak, if not
// nil, sets the selectors of every list and watch.
func (c *Client) Services(tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	return listWatch(c.core, "services", tweak)
}

// EndpointSlices lists and watches EndpointSlices in every namespace.
func (c *Client) EndpointSlices(tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	return listWatch(c.discovery, "endpointslices", tweak)
}

// Nodes lists and watches Nodes.
func (c *Client) Nodes(tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	return listWatch(c.core, "nodes", tweak)
}

func listWatch(rc rest.Interface, resource string, tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	return cache.NewFilteredListWatchFromClient(rc, resource, metav1.NamespaceAll, tweak)
}

// CreateEvent creates e in its namespace.
func (c *Client) CreateEvent(ctx context.Context, e *eventsv1.Event) (*eventsv1.Event, error) {
	out := &eventsv1.Event{}
	err := c.events.Post().Namespace(e.Namespace).Resource("events").Body(e).Do(ctx).Into(out)
	return out, err
}

// PatchEvent applies a JSON merge patch to the Event namespace/name.
func (c *Client) PatchEvent(ctx context.Context, namespace, name string, patch []byte) (*eventsv1.Event, error) {
	out := &eventsv1.Event{}
	err := c.events.Patch(types.MergePatchType).Namespace(namespace).Resource("events").Name(name).Body(patch).Do(ctx).Into(out)
	return out, err
}
