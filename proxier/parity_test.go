package proxier

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// The health check node port answers with the Service's ready local
// endpoints, as kube-proxy counts them: a node whose only local pods are
// terminating (still serving, so still used by the fallback) reports 0, so
// that a cloud load balancer drains it (issue 16).
func TestPlanHealthCheckCountsReadyLocalEndpoints(t *testing.T) {
	runPlanCases(t, []planCase{{
		name: "only a serving-and-terminating local endpoint",
		svc:  makeService("ns", "web", loadBalancer(30080), etpLocal(32100)),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{httpSlice(s, servingTerminating("10.244.1.5", thisNode), ready("10.244.2.5", "node-b"))}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w0, 10.244.2.5:8080 w1]
		  TCP 192.168.0.10:30080 rr -> [10.244.1.5:8080 w1]
		  FWM 0x75805000 v4 rr -> [10.244.1.5:8080 w0, 10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  node-ports-local tcp . 30080
		  node-port-fwmarks tcp . 30080 : 0x75805000
		  health-check-node-ports 32100
		  healthcheck 32100 local=0
		`,
	}, {
		name: "two ports count the same pod once",
		svc: makeService("ns", "web", ports(v1.ServicePort{Name: "http", Port: 80, NodePort: 30080}, v1.ServicePort{Name: "https", Port: 443, NodePort: 30443}),
			func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }, etpLocal(32100)),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{
				makeSlice(s, discovery.AddressTypeIPv4, "http", 8080, v1.ProtocolTCP, ready("10.244.1.5", thisNode)),
				makeSlice(s, discovery.AddressTypeIPv4, "https", 8443, v1.ProtocolTCP, ready("10.244.1.5", thisNode)),
			}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w1]
		  TCP 192.168.0.10:30080 rr -> [10.244.1.5:8080 w1]
		  FWM 0x75805000 v4 rr -> [10.244.1.5:8080 w1]
		  addr 10.96.0.10
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  node-ports-local tcp . 30080
		  node-port-fwmarks tcp . 30080 : 0x75805000
		  health-check-node-ports 32100
		  healthcheck 32100 local=1
		ns/web:https
		  TCP 10.96.0.10:443 rr -> [10.244.1.5:8443 w1]
		  TCP 192.168.0.10:30443 rr -> [10.244.1.5:8443 w1]
		  FWM 0x76eb5000 v4 rr -> [10.244.1.5:8443 w1]
		  addr 10.96.0.10
		  hairpin 10.244.1.5 . tcp . 8443 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 443
		  ipvs-addresses 10.96.0.10
		  node-ports-local tcp . 30443
		  node-port-fwmarks tcp . 30443 : 0x76eb5000
		  health-check-node-ports 32100
		  healthcheck 32100 local=1
		`,
	}, {
		// kube-proxy has one proxier, and one health check server, per
		// family: a dual-stack pod is one local endpoint in each.
		name: "a dual-stack pod counts once in each family",
		svc: makeService("ns", "web", clusterIPs("10.96.0.10", "fd00:96::10"),
			func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30080 }, etpLocal(32100)),
		slices: func(s *v1.Service) []*discovery.EndpointSlice {
			return []*discovery.EndpointSlice{
				makeSlice(s, discovery.AddressTypeIPv4, "http", 8080, v1.ProtocolTCP, ready("10.244.1.5", thisNode)),
				makeSlice(s, discovery.AddressTypeIPv6, "http", 8080, v1.ProtocolTCP, ready("fd00:244:1::5", thisNode)),
			}
		},
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.1.5:8080 w1]
		  TCP 192.168.0.10:30080 rr -> [10.244.1.5:8080 w1]
		  FWM 0x75805000 v4 rr -> [10.244.1.5:8080 w1]
		  TCP [fd00:96::10]:80 rr -> [[fd00:244:1::5]:8080 w1]
		  TCP [fd00::10]:30080 rr -> [[fd00:244:1::5]:8080 w1]
		  FWM 0x75805000 v6 rr -> [[fd00:244:1::5]:8080 w1]
		  addr 10.96.0.10
		  addr fd00:96::10
		  hairpin 10.244.1.5 . tcp . 8080 . 10.244.1.5
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  hairpin fd00:244:1::5 . tcp . 8080 . fd00:244:1::5
		  cluster-ips fd00:96::10 . tcp . 80
		  ipvs-addresses fd00:96::10
		  node-ports-local tcp . 30080
		  node-port-fwmarks tcp . 30080 : 0x75805000
		  health-check-node-ports 32100
		  healthcheck 32100 local=1 local6=1
		`,
	}})
}
