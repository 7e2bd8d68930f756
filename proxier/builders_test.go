package proxier

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftvs/nftvs/internal/k8stest"
)

// Tiny builders in the style of kube-proxy's proxier tests; the Service
// tweaks are shared with the VM suites (internal/k8stest).

var (
	nodePort     = k8stest.NodePort
	loadBalancer = k8stest.LoadBalancer
	etpLocal     = k8stest.ETPLocal
	itpLocal     = k8stest.ITPLocal
	externalIPs  = k8stest.ExternalIPs
	sourceRanges = k8stest.SourceRanges
	affinity     = k8stest.ClientIPAffinity
)

func makeService(ns, name string, tweaks ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, t := range tweaks {
		t(svc)
	}
	return svc
}

func clusterIPs(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

func ports(ps ...v1.ServicePort) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Ports = ps }
}

// ep is an endpoint; by default ready, on node "remote".
type ep struct {
	ip                          string
	node                        string
	ready, serving, terminating *bool
	zones, nodes                []string
}

func ready(ip, node string) ep { return ep{ip: ip, node: node} }

func notReady(ip, node string) ep { f := false; return ep{ip: ip, node: node, ready: &f, serving: &f} }

func servingTerminating(ip, node string) ep {
	f, t := false, true
	return ep{ip: ip, node: node, ready: &f, serving: &t, terminating: &t}
}

// readyTerminating is a pod of a Service with publishNotReadyAddresses
// that is terminating: the EndpointSlice controller keeps it ready.
func readyTerminating(ip, node string) ep {
	f, t := false, true
	return ep{ip: ip, node: node, ready: &t, serving: &f, terminating: &t}
}

func terminatingNotServing(ip, node string) ep {
	f, t := false, true
	return ep{ip: ip, node: node, ready: &f, serving: &f, terminating: &t}
}

func (e ep) inZones(z ...string) ep  { e.zones = z; return e }
func (e ep) forNodes(n ...string) ep { e.nodes = n; return e }

var sliceSeq int

func makeSlice(svc *v1.Service, addrType discovery.AddressType, portName string, port int32, proto v1.Protocol, eps ...ep) *discovery.EndpointSlice {
	sliceSeq++
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: fmt.Sprintf("%s-%d", svc.Name, sliceSeq),
			Labels: map[string]string{discovery.LabelServiceName: svc.Name},
		},
		AddressType: addrType,
		Ports:       []discovery.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}
	for _, e := range eps {
		node := e.node
		de := discovery.Endpoint{Addresses: []string{e.ip}, NodeName: &node,
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}}
		if len(e.zones) > 0 || len(e.nodes) > 0 {
			de.Hints = &discovery.EndpointHints{}
			for _, z := range e.zones {
				de.Hints.ForZones = append(de.Hints.ForZones, discovery.ForZone{Name: z})
			}
			for _, n := range e.nodes {
				de.Hints.ForNodes = append(de.Hints.ForNodes, discovery.ForNode{Name: n})
			}
		}
		s.Endpoints = append(s.Endpoints, de)
	}
	return s
}

// httpSlice is an IPv4 slice for port "http" 8080/TCP.
func httpSlice(svc *v1.Service, eps ...ep) *discovery.EndpointSlice {
	return makeSlice(svc, discovery.AddressTypeIPv4, "http", 8080, v1.ProtocolTCP, eps...)
}
