package proxier

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// TestStripUnread: the informers cache only what nftvs reads, and keep
// everything it does (issue 27: half the memory at 10k Services).
func TestStripUnread(t *testing.T) {
	big := strings.Repeat("x", 10_000)
	svc := makeService("ns", "web", clusterIPs("10.96.0.10"), loadBalancer(30080, "192.0.2.1"))
	svc.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	svc.Annotations = map[string]string{
		"kubectl.kubernetes.io/last-applied-configuration": big,
		"ipvs.nftvs.io/scheduler":                          "sh",
		"kube-router.io/service.scheduler":                 "mh",
	}
	want := svc.DeepCopy()
	want.ManagedFields = nil
	delete(want.Annotations, "kubectl.kubernetes.io/last-applied-configuration")
	slice := httpSlice(svc, ready("10.244.1.5", thisNode), ready("10.244.2.6", "node-b"))
	slice.ManagedFields = svc.ManagedFields
	slice.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-12-06T00:00:00Z", "other": big}
	host := "pod-1"
	slice.Endpoints[0].Hostname = &host
	slice.Endpoints[0].TargetRef = &v1.ObjectReference{Kind: "Pod", Name: "web-1", Namespace: "ns"}

	gotSvc, _ := StripUnread(svc.DeepCopy())
	if s := gotSvc.(*v1.Service); s.ManagedFields != nil || len(s.Annotations) != 2 || s.Annotations["ipvs.nftvs.io/scheduler"] != "sh" ||
		s.Annotations["kube-router.io/service.scheduler"] != "mh" {
		t.Errorf("Service stripped to %+v", s.ObjectMeta)
	}
	svc.Labels = map[string]string{"app": "web", "service.kubernetes.io/topology-mode": "Auto"}
	svc.Spec.Selector = map[string]string{"app": "web"}
	gotSvc, _ = StripUnread(svc.DeepCopy())
	if s := gotSvc.(*v1.Service); s.Spec.Selector != nil || len(s.Labels) != 1 || s.Labels["service.kubernetes.io/topology-mode"] != "Auto" ||
		!s.CreationTimestamp.Equal(&svc.CreationTimestamp) || s.ResourceVersion != svc.ResourceVersion {
		t.Errorf("Service labels and selector stripped to %v, %v", s.Labels, s.Spec.Selector)
	}
	zone := "zone-a"
	for i := range slice.Endpoints {
		z, r := zone, true // each endpoint its own copy, as decoded
		slice.Endpoints[i].Zone, slice.Endpoints[i].Conditions.Ready = &z, &r
	}
	slice.Labels[discovery.LabelManagedBy] = "endpointslice-controller.k8s.io"
	slice.Labels["app"] = "web"
	plansBefore, _ := PlanService(svc, []*discovery.EndpointSlice{slice}, testConfig())
	gotSlice, _ := StripUnread(slice.DeepCopy())
	c := gotSlice.(*cachedSlice)
	s := &c.EndpointSlice
	if s.ManagedFields != nil || s.Annotations != nil || s.Endpoints != nil || s.Namespace != slice.Namespace || s.Name != slice.Name ||
		s.ResourceVersion != slice.ResourceVersion || s.AddressType != slice.AddressType || len(s.Ports) != len(slice.Ports) {
		t.Errorf("EndpointSlice stripped to %+v", s)
	}
	if s.Labels != nil || c.service != svc.Name {
		t.Errorf("EndpointSlice labels stripped to %v, Service %q", s.Labels, c.service)
	}
	if again, _ := StripUnread(c); again != c {
		t.Errorf("StripUnread of a stripped slice: %#v", again)
	}
	if ns, name, got, service, trigger, ok := endpointSliceOf(cache.DeletedFinalStateUnknown{Obj: c}); !ok || ns != slice.Namespace ||
		name != slice.Name || got != &c.eps || service != svc.Name || trigger != c.trigger {
		t.Errorf("endpointSliceOf a tombstone: %s/%s %v %q %q %v", ns, name, got, service, trigger, ok)
	}
	// Repeated values are shared, and still what the API server sent.
	a, b := c.eps.endpoints[0], c.eps.endpoints[1]
	if a.zone != b.zone || *a.zone != zone || !a.ready() || !b.ready() || *a.node != thisNode || *b.node != "node-b" {
		t.Errorf("endpoints not shared: %+v %+v", a, b)
	}
	if _, ok := lastChangeTriggerTime(c.trigger); !ok {
		t.Error("the trigger-time annotation was stripped")
	}
	// What `nftvs explain` reads of the slice is still there.
	back := c.eps.apiSlice()
	for i, e := range back.Endpoints {
		w := slice.Endpoints[i]
		if fmt.Sprint(e.Addresses) != fmt.Sprint(w.Addresses) || *e.NodeName != *w.NodeName || *e.Zone != *w.Zone || !*e.Conditions.Ready ||
			!*e.Conditions.Serving || *e.Conditions.Terminating {
			t.Errorf("endpoint %d given back as %+v, was %+v", i, e, w)
		}
	}
	plansAfter, _ := planService(gotSvc.(*v1.Service), []*epSlice{&c.eps}, testConfig())
	if dump(plansBefore) != dump(plansAfter) {
		t.Errorf("stripping changed the plan:\n%s\nvs\n%s", dump(plansBefore), dump(plansAfter))
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{v1.LabelTopologyZone: "a"}},
		Status: v1.NodeStatus{Images: []v1.ContainerImage{{Names: []string{big}}}, Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.10"}}}}
	gotNode, _ := StripUnread(node)
	if n := gotNode.(*v1.Node); n.Status.Images != nil || len(n.Status.Addresses) != 1 || n.Labels[v1.LabelTopologyZone] != "a" {
		t.Errorf("Node stripped to %+v", n)
	}
}

// TestStringPoolIsBounded: names made up in EndpointSlices cannot grow
// the pool of shared node names and zones without bound; past the bound
// each keeps its own copy, with its value.
func TestStringPoolIsBounded(t *testing.T) {
	p := &stringPool{m: map[string]*string{}}
	for i := range 2 * maxPooledStrings {
		v := fmt.Sprintf("node-%d", i)
		if got := p.share(&v); *got != v {
			t.Fatalf("share(%q) = %q", v, *got)
		}
	}
	if len(p.m) != maxPooledStrings {
		t.Errorf("pool holds %d values, want %d", len(p.m), maxPooledStrings)
	}
	v := "node-1"
	if got := p.share(&v); got == &v || *got != v {
		t.Error("a pooled value was not shared")
	}
}

// BenchmarkStripUnreadHeap reports the heap one Service and its
// EndpointSlice (10 endpoints) hold in the informers' cache, as kubectl
// and the EndpointSlice controller write them, with and without
// StripUnread, after GC.
func BenchmarkStripUnreadHeap(b *testing.B) {
	const n = 2000
	objects := func() ([]*v1.Service, []*discovery.EndpointSlice) {
		var svcs []*v1.Service
		var slices []*discovery.EndpointSlice
		for i := range n {
			svc := makeService("ns", fmt.Sprintf("svc-%d", i), clusterIPs(fmt.Sprintf("10.96.%d.%d", i/250, 1+i%250)))
			svc.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": lastApplied}
			svc.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl-client-side-apply", Operation: metav1.ManagedFieldsOperationUpdate,
				APIVersion: "v1", FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(svcFields)}}}
			var eps []ep
			for j := range 10 {
				eps = append(eps, ready(fmt.Sprintf("10.244.%d.%d", j, 1+i%250), "node-b"))
			}
			s := httpSlice(svc, eps...)
			s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-12-06T00:00:00Z"}
			s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "endpointslice-controller.k8s.io", Operation: metav1.ManagedFieldsOperationUpdate,
				APIVersion: "discovery.k8s.io/v1", FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(sliceFields)}}}
			s.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: "0b7a1e2c-5d3f-4a8e-9c1b-2f6d7e8a9b0c"}}
			svc.Labels = map[string]string{"app": "web", "tier": "frontend"}
			svc.Spec.Selector = map[string]string{"app": "web"}
			// The EndpointSlice controller copies the Service's labels.
			s.Labels = map[string]string{discovery.LabelServiceName: svc.Name, discovery.LabelManagedBy: "endpointslice-controller.k8s.io", "app": "web", "tier": "frontend"}
			for k := range s.Endpoints {
				host := fmt.Sprintf("web-%d", k)
				zone := fmt.Sprintf("zone-%c", 'a'+k%3)
				s.Endpoints[k].TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "web-7d9f8c6b5-" + host, UID: "1c2d3e4f-5a6b-7c8d-9e0f-1a2b3c4d5e6f"}
				s.Endpoints[k].Hostname = &host
				s.Endpoints[k].Zone = &zone
			}
			// Decoded from the API server's protobuf, as an informer
			// holds them: every field its own allocation.
			svc, s = protoCopy(b, svc, &v1.Service{}), protoCopy(b, s, &discovery.EndpointSlice{})
			svcs, slices = append(svcs, svc), append(slices, s)
		}
		return svcs, slices
	}
	for _, strip := range []bool{false, true} {
		b.Run(fmt.Sprintf("strip=%v", strip), func(b *testing.B) {
			for range b.N {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				svcs, slices := objects()
				// What the informers cache: the transform's output.
				cached := make([]any, 0, 2*n)
				for i := range svcs {
					if !strip {
						cached = append(cached, svcs[i], slices[i])
						continue
					}
					svc, _ := StripUnread(svcs[i])
					slice, _ := StripUnread(slices[i])
					cached = append(cached, svc, slice)
				}
				svcs, slices = nil, nil
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/service")
				runtime.KeepAlive(cached)
			}
		})
	}
}

// protoCopy is obj marshalled and unmarshalled into out.
func protoCopy[T interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}](b testing.TB, obj, out T) T {
	data, err := obj.Marshal()
	if err == nil {
		err = out.Unmarshal(data)
	}
	if err != nil {
		b.Fatal(err)
	}
	return out
}

const lastApplied = `{"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"labels":{"app":"web","tier":"frontend"},"name":"web","namespace":"ns"},"spec":{"ports":[{"name":"http","port":80,"protocol":"TCP","targetPort":8080}],"selector":{"app":"web"},"type":"ClusterIP"}}` + "\n"

const svcFields = `{"f:metadata":{"f:annotations":{".":{},"f:kubectl.kubernetes.io/last-applied-configuration":{}},"f:labels":{".":{},"f:app":{},"f:tier":{}}},"f:spec":{"f:internalTrafficPolicy":{},"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:type":{}}}`

const sliceFields = `{"f:addressType":{},"f:endpoints":{},"f:metadata":{"f:annotations":{".":{},"f:endpoints.kubernetes.io/last-change-trigger-time":{}},"f:generateName":{},"f:labels":{".":{},"f:endpointslice.kubernetes.io/managed-by":{},"f:kubernetes.io/service-name":{}},"f:ownerReferences":{".":{},"k:{\"uid\":\"0b7a1e2c-5d3f-4a8e-9c1b-2f6d7e8a9b0c\"}":{}}},"f:ports":{}}`
