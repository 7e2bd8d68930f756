package healthcheck

import (
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/nftvs/nftvs/metrics"
)

// toBeDeletedTaint is set by the cluster autoscaler on a node it is about
// to delete: load balancers should stop sending it traffic.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProxierHealth is the health of one IP family (kube-proxy runs one
// proxier per family; nftvs's one proxier serves both, so both report
// the same).
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// ProxyHealth is the JSON body of /healthz and /livez, as kube-proxy's.
type ProxyHealth struct {
	LastUpdated  time.Time                     `json:"lastUpdated"`
	CurrentTime  time.Time                     `json:"currentTime"`
	NodeEligible *bool                         `json:"nodeEligible,omitempty"`
	Healthy      bool                          `json:"healthy"`
	Status       map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// HealthServer is kube-proxy's ProxyHealthServer
// (pkg/proxy/healthcheck/proxy_health.go): the proxy is healthy unless a
// change has waited longer than the timeout (2 × the sync period) for a
// successful sync. /healthz is also unhealthy when the node is being
// deleted or is tainted ToBeDeletedByClusterAutoscaler, so that load
// balancers drain it; /livez ignores the node.
//
// nftvs serves it from the very start of a run, before the Node is read
// and the proxier built (kube-proxy serves it only after both): a
// liveness probe then sees a proxy that is starting as alive, which it
// is, instead of a refused connection. The Node and the metrics are
// handed over once known (SetNode, SetMetrics); until then /healthz says
// the node is not eligible, as kube-proxy does for a Node it has not seen.
type HealthServer struct {
	timeout time.Duration
	clock   clock.PassiveClock
	node    atomic.Pointer[func() *v1.Node]
	metrics atomic.Pointer[metrics.Metrics]

	mu            sync.RWMutex
	lastUpdated   map[v1.IPFamily]time.Time
	oldestPending map[v1.IPFamily]time.Time
}

// NewHealthServer returns a health server that knows no node and counts
// nothing yet.
func NewHealthServer(timeout time.Duration, c clock.PassiveClock) *HealthServer {
	return &HealthServer{
		timeout:       timeout,
		clock:         c,
		lastUpdated:   map[v1.IPFamily]time.Time{},
		oldestPending: map[v1.IPFamily]time.Time{},
	}
}

// SetNode gives the server this node (node returns nil when unknown).
func (h *HealthServer) SetNode(node func() *v1.Node) { h.node.Store(&node) }

// SetMetrics makes the server count its answers in m
// (kubeproxy_proxy_healthz_total, kubeproxy_proxy_livez_total).
func (h *HealthServer) SetMetrics(m *metrics.Metrics) { h.metrics.Store(m) }

// Updated records a successful sync of family.
func (h *HealthServer) Updated(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.oldestPending, family)
	h.lastUpdated[family] = h.clock.Now()
}

// QueuedUpdate records that a change waits to be synced for family; only
// the oldest waiting change counts.
func (h *HealthServer) QueuedUpdate(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, set := h.oldestPending[family]; !set {
		h.oldestPending[family] = h.clock.Now()
	}
}

// Health is kube-proxy's: healthy while starting (no sync recorded yet),
// when nothing waits, or when what waits has waited less than the timeout.
// Nothing here waits on the proxier, the kernel or the API server, so a
// busy proxy answers as fast as the node lets it run at all.
func (h *HealthServer) Health() ProxyHealth {
	h.mu.RLock()
	defer h.mu.RUnlock()
	health := ProxyHealth{Healthy: true, Status: map[v1.IPFamily]ProxierHealth{}}
	var last time.Time
	for family, t := range h.lastUpdated {
		if t.After(last) {
			last = t
		}
		health.Status[family] = ProxierHealth{LastUpdated: t, Healthy: true}
	}
	now := h.clock.Now()
	health.CurrentTime = now
	for family, t := range h.lastUpdated {
		pending, set := h.oldestPending[family]
		if !set || now.Sub(pending) < h.timeout {
			continue
		}
		health.Healthy = false
		health.Status[family] = ProxierHealth{LastUpdated: t, Healthy: false}
	}
	health.LastUpdated = last
	return health
}

// NodeEligible reports whether load balancers may send traffic to this
// node: it exists, is not being deleted and is not about to be deleted by
// the cluster autoscaler.
func (h *HealthServer) NodeEligible() bool {
	node := h.node.Load()
	if node == nil {
		return false // not read yet
	}
	n := (*node)()
	if n == nil || !n.DeletionTimestamp.IsZero() {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Key == toBeDeletedTaint {
			return false
		}
	}
	return true
}

// Handler serves /healthz and /livez.
func (h *HealthServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		health := h.Health()
		eligible := h.NodeEligible()
		health.NodeEligible = &eligible
		h.respond(w, health, health.Healthy && eligible, "healthz")
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		health := h.Health()
		h.respond(w, health, health.Healthy, "livez")
	})
	return mux
}

func (h *HealthServer) respond(w http.ResponseWriter, health ProxyHealth, healthy bool, endpoint string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	code := http.StatusOK
	if !healthy {
		code = http.StatusServiceUnavailable
	} else {
		// As kube-proxy: older releases reported the last sync loop run
		// here, so a healthy answer says "now".
		health.LastUpdated = h.clock.Now()
	}
	h.metrics.Load().ObserveHealth(endpoint, code)
	w.WriteHeader(code)
	out, _ := json.Marshal(health)
	_, _ = w.Write(out)
}
