// Package k8stest holds the builders the proxier's tests and the VM
// suites share, in the style of kube-proxy's proxier tests: a Service is
// built from a few tweaks that each read like the field they set.
package k8stest

import v1 "k8s.io/api/core/v1"

// Tweak changes a Service under construction.
type Tweak = func(*v1.Service)

// NodePort gives the first port node port np, making a ClusterIP Service
// a NodePort one.
func NodePort(np int32) Tweak {
	return func(s *v1.Service) {
		if s.Spec.Type == "" || s.Spec.Type == v1.ServiceTypeClusterIP {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		s.Spec.Ports[0].NodePort = np
	}
}

// LoadBalancer makes a LoadBalancer Service whose first port has node
// port np (0: none) and whose status lists the ingress IPs.
func LoadBalancer(np int32, ingress ...string) Tweak {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = np
		s.Status.LoadBalancer.Ingress = nil
		for _, ip := range ingress {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

// ExternalIPs sets spec.externalIPs.
func ExternalIPs(ips ...string) Tweak {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

// SourceRanges sets spec.loadBalancerSourceRanges.
func SourceRanges(ranges ...string) Tweak {
	return func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = ranges }
}

// ETPLocal sets externalTrafficPolicy Local with a health check node port
// (0: none).
func ETPLocal(healthCheckNodePort int32) Tweak {
	return func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

// ITPLocal sets internalTrafficPolicy Local.
func ITPLocal(s *v1.Service) {
	p := v1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &p
}

// ClientIPAffinity sets sessionAffinity ClientIP, with its timeout when
// timeout > 0 (else the API's default applies).
func ClientIPAffinity(timeout int32) Tweak {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		if timeout > 0 {
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &timeout}}
		}
	}
}
