package healthcheck

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/proxier"
)

// eventRecorder is the part of client-go's events.EventRecorder used here.
type eventRecorder interface {
	Eventf(regarding runtime.Object, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// ServiceHealthServers are the health check node ports of
// externalTrafficPolicy: Local Services (kube-proxy's ServiceHealthServer,
// pkg/proxy/healthcheck/service_health.go): one HTTP server per Service on
// its healthCheckNodePort, answering 200 when the node has local endpoints
// for it and the proxy is healthy, 503 otherwise, so that load balancers
// send traffic only to nodes that can serve it locally. As kube-proxy's
// one server per IP family, each family is served on its own sockets and
// answers its own family's count.
type ServiceHealthServers struct {
	nodeName string
	recorder eventRecorder
	// addresses are where to listen: nil means every address.
	addresses func() []netip.Addr
	// families are the IP families proxied: where addresses is nil, one
	// wildcard socket each.
	families []v1.IPFamily
	healthy  func() bool
	listen   func(network, address string) (net.Listener, error)

	mu       sync.RWMutex
	services map[types.NamespacedName]*serviceHealth
}

type serviceHealth struct {
	port      int
	endpoints proxier.FamilyCount
	servers   []*http.Server
}

// NewServiceHealthServers returns the servers' manager. healthy is the
// proxy's health; addresses returns the node port addresses, or nil for
// all of them; families are the IP families proxied.
func NewServiceHealthServers(nodeName string, recorder eventRecorder, addresses func() []netip.Addr, families []v1.IPFamily, healthy func() bool) *ServiceHealthServers {
	return &ServiceHealthServers{
		nodeName:  nodeName,
		recorder:  recorder,
		addresses: addresses,
		families:  families,
		healthy:   healthy,
		listen:    net.Listen,
		services:  map[types.NamespacedName]*serviceHealth{},
	}
}

// Sync opens the health check ports of new Services, closes those of
// Services gone (or whose port changed), and updates local endpoint
// counts. A Service's count, per family, is the largest over its ports
// (kube-proxy counts distinct local endpoint IPs; pods usually serve
// every port).
func (s *ServiceHealthServers) Sync(checks []proxier.ServiceHealth) {
	type want struct {
		port      int
		endpoints proxier.FamilyCount
	}
	wanted := map[types.NamespacedName]want{}
	for _, c := range checks {
		if c.NodePort <= 0 || c.NodePort > 65535 {
			continue
		}
		n := types.NamespacedName{Namespace: c.Name.Namespace, Name: c.Name.Name}
		w := wanted[n]
		w.port = c.NodePort
		w.endpoints.IPv4 = max(w.endpoints.IPv4, c.LocalEndpoints.IPv4)
		w.endpoints.IPv6 = max(w.endpoints.IPv6, c.LocalEndpoints.IPv6)
		wanted[n] = w
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for n, svc := range s.services {
		if w, ok := wanted[n]; !ok || w.port != svc.port {
			klog.V(2).InfoS("Closing healthcheck", "service", n, "port", svc.port)
			svc.close()
			delete(s.services, n)
		}
	}
	for n, w := range wanted {
		if svc := s.services[n]; svc != nil {
			svc.endpoints = w.endpoints
			continue
		}
		klog.V(2).InfoS("Opening healthcheck", "service", n, "port", w.port)
		svc := &serviceHealth{port: w.port, endpoints: w.endpoints}
		if err := s.serve(n, svc); err != nil {
			msg := fmt.Sprintf("node %s failed to start healthcheck %q on port %d: %v", s.nodeName, n.String(), w.port, err)
			klog.ErrorS(err, "Failed to start healthcheck", "node", s.nodeName, "service", n, "port", w.port)
			if s.recorder != nil {
				s.recorder.Eventf(&v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: n.Namespace, Name: n.Name},
					nil, v1.EventTypeWarning, "FailedToStartServiceHealthcheck", "Listen", "%s", msg)
			}
			continue // tried again on the next sync
		}
		s.services[n] = svc
	}
}

// Ports lists the open health check ports by Service.
func (s *ServiceHealthServers) Ports() map[types.NamespacedName]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[types.NamespacedName]int, len(s.services))
	for n, svc := range s.services {
		out[n] = svc.port
	}
	return out
}

// Close closes every server.
func (s *ServiceHealthServers) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, svc := range s.services {
		svc.close()
		delete(s.services, n)
	}
}

func (s *ServiceHealthServers) serve(n types.NamespacedName, svc *serviceHealth) error {
	type endpoint struct {
		family           v1.IPFamily
		network, address string
	}
	var eps []endpoint
	port := strconv.Itoa(svc.port)
	if s.addresses == nil {
		// As kube-proxy: 0.0.0.0 on tcp4 and [::] on tcp6 (IPV6_V6ONLY),
		// so that each family answers its own count.
		for _, f := range s.families {
			if f == v1.IPv6Protocol {
				eps = append(eps, endpoint{f, "tcp6", "[::]:" + port})
			} else {
				eps = append(eps, endpoint{f, "tcp4", "0.0.0.0:" + port})
			}
		}
	} else {
		for _, a := range s.addresses() {
			f, network := v1.IPv4Protocol, "tcp4"
			if a.Is6() {
				f, network = v1.IPv6Protocol, "tcp6"
			}
			if slices.Contains(s.families, f) {
				eps = append(eps, endpoint{f, network, net.JoinHostPort(a.String(), port)})
			}
		}
	}
	if len(eps) == 0 {
		return errors.New("no node port address to listen on")
	}
	for _, ep := range eps {
		handler := serviceHealthHandler{name: n, family: ep.family, s: s}
		l, err := s.listen(ep.network, ep.address)
		if err != nil {
			svc.close()
			return err
		}
		srv := &http.Server{Handler: handler}
		svc.servers = append(svc.servers, srv)
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "Healthcheck closed", "service", n)
			}
		}()
	}
	return nil
}

func (svc *serviceHealth) close() {
	for _, srv := range svc.servers {
		if err := srv.Close(); err != nil {
			klog.ErrorS(err, "Closing health check server", "port", svc.port)
		}
	}
	svc.servers = nil
}

type serviceHealthHandler struct {
	name   types.NamespacedName
	family v1.IPFamily
	s      *ServiceHealthServers
}

// ServeHTTP answers as kube-proxy's hcHandler, byte for byte.
func (h serviceHealthHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.s.mu.RLock()
	svc, ok := h.s.services[h.name]
	count := 0
	if ok {
		count = svc.endpoints.Of(h.family)
	}
	h.s.mu.RUnlock()
	if !ok {
		klog.ErrorS(nil, "Received request for closed healthcheck", "service", h.name)
		return
	}
	healthy := h.s.healthy == nil || h.s.healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count != 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		h.name.Namespace, h.name.Name, count, healthy)
}
