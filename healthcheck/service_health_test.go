package healthcheck

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/proxier"
)

type recordedEvent struct{ eventType, reason, note string }

type fakeRecorder struct {
	mu     sync.Mutex
	events []recordedEvent
}

func (r *fakeRecorder) Eventf(_ runtime.Object, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, recordedEvent{eventtype, reason, fmt.Sprintf(note, args...)})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func check(name, port string, local int) proxier.ServiceHealth {
	ns, n, _ := strings.Cut(name, "/")
	p := 0
	fmt.Sscan(port, &p)
	return proxier.ServiceHealth{Name: proxier.ServicePortName{Namespace: ns, Name: n, Port: "http"}, NodePort: p, LocalEndpoints: proxier.FamilyCount{IPv4: local}}
}

func healthCheck(port int) (int, string, string, error) {
	return healthCheckAt("127.0.0.1", port)
}

func healthCheckAt(host string, port int) (int, string, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s/", net.JoinHostPort(host, fmt.Sprint(port))))
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Load-Balancing-Endpoint-Weight"), nil
}

// Health check node ports open and close with their Services, and answer
// as kube-proxy's.
func TestServiceHealthServers(t *testing.T) {
	loopback := func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} }
	var unhealthy atomic.Bool
	rec := &fakeRecorder{}
	s := NewServiceHealthServers("node-a", rec, loopback, []v1.IPFamily{v1.IPv4Protocol}, func() bool { return !unhealthy.Load() })
	defer s.Close()
	p1, p2 := freePort(t), freePort(t)

	// Two ports of one Service are one health check; its count is the
	// largest of its ports'.
	s.Sync([]proxier.ServiceHealth{check("ns/web", fmt.Sprint(p1), 2), check("ns/web", fmt.Sprint(p1), 1), check("ns/empty", fmt.Sprint(p2), 0)})
	code, body, weight, err := healthCheck(p1)
	want := "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
	if err != nil || code != 200 || body != want || weight != "2" {
		t.Errorf("ns/web: %v %d %q weight %q; want 200 %q", err, code, body, weight, want)
	}
	if code, body, _, err = healthCheck(p2); err != nil || code != 503 || !strings.Contains(body, `"localEndpoints": 0`) {
		t.Errorf("ns/empty: %v %d %q, want 503", err, code, body)
	}

	// An unhealthy proxy makes every health check fail.
	unhealthy.Store(true)
	if code, body, _, _ = healthCheck(p1); code != 503 || !strings.Contains(body, `"serviceProxyHealthy": false`) {
		t.Errorf("unhealthy proxy: %d %q", code, body)
	}
	unhealthy.Store(false)

	// Endpoints come and go without reopening the port.
	s.Sync([]proxier.ServiceHealth{check("ns/web", fmt.Sprint(p1), 0), check("ns/empty", fmt.Sprint(p2), 3)})
	if code, _, _, _ = healthCheck(p1); code != 503 {
		t.Errorf("ns/web without local endpoints: %d", code)
	}
	if code, _, weight, _ = healthCheck(p2); code != 200 || weight != "3" {
		t.Errorf("ns/empty with 3: %d weight %s", code, weight)
	}

	// A Service gone closes its port.
	s.Sync([]proxier.ServiceHealth{check("ns/empty", fmt.Sprint(p2), 3)})
	if _, _, _, err = healthCheck(p1); err == nil {
		t.Errorf("ns/web's port %d still answers after the Service left", p1)
	}
	if got := s.Ports(); len(got) != 1 || got[types.NamespacedName{Namespace: "ns", Name: "empty"}] != p2 {
		t.Errorf("open ports %v", got)
	}

	// A port that cannot be opened is reported as an event on the
	// Service, and tried again on the next sync.
	l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", p1))
	if err != nil {
		t.Fatal(err)
	}
	s.Sync([]proxier.ServiceHealth{check("ns/web", fmt.Sprint(p1), 1), check("ns/empty", fmt.Sprint(p2), 3)})
	if len(rec.events) != 1 || rec.events[0].reason != "FailedToStartServiceHealthcheck" || !strings.Contains(rec.events[0].note, "node node-a failed to start healthcheck \"ns/web\"") {
		t.Errorf("events %+v", rec.events)
	}
	l.Close()
	s.Sync([]proxier.ServiceHealth{check("ns/web", fmt.Sprint(p1), 1), check("ns/empty", fmt.Sprint(p2), 3)})
	if code, _, _, err = healthCheck(p1); err != nil || code != 200 {
		t.Errorf("retried port: %v %d", err, code)
	}
}

func TestServiceHealthListensEverywhereByDefault(t *testing.T) {
	var got []string
	s := NewServiceHealthServers("n", nil, nil, []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, nil)
	s.listen = func(network, address string) (net.Listener, error) {
		got = append(got, network+" "+address)
		return &fakeListener{}, nil
	}
	s.Sync([]proxier.ServiceHealth{check("a/b", "32000", 1)})
	if !slices.Equal(got, []string{"tcp4 0.0.0.0:32000", "tcp6 [::]:32000"}) {
		t.Errorf("dual-stack listens %q, want tcp4 0.0.0.0:32000 and tcp6 [::]:32000 (one socket per family, as kube-proxy)", got)
	}
	s.Close()
	s.listen = func(network, address string) (net.Listener, error) {
		got = append(got, network+" "+address)
		return nil, errors.New("not listening in this test")
	}
	got = nil
	s.families = []v1.IPFamily{v1.IPv4Protocol}
	s.Sync([]proxier.ServiceHealth{check("a/b", "32000", 1)})
	if len(got) != 1 || got[0] != "tcp4 0.0.0.0:32000" {
		t.Errorf("IPv4-only listens %q", got)
	}
}

// fakeListener accepts nothing until closed.
type fakeListener struct{ closed chan struct{} }

func (l *fakeListener) Accept() (net.Conn, error) {
	if l.closed == nil {
		l.closed = make(chan struct{})
	}
	<-l.closed
	return nil, net.ErrClosed
}
func (l *fakeListener) Close() error   { return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{} }

// A dual-stack pod is one local endpoint in each family, as kube-proxy
// counts it (one proxier and health check server per family): the
// health check node port answers 1 over IPv4 and 1 over IPv6, and a
// family with no local endpoint answers 503 there. Before, one server
// answered 2 over both.
func TestServiceHealthCountsEachFamilyOnItsOwn(t *testing.T) {
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		l.Close()
	}
	s := NewServiceHealthServers("n", nil, nil, []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, nil)
	defer s.Close()
	port := freePort(t)
	web := check("ns/web", fmt.Sprint(port), 0)
	web.LocalEndpoints = proxier.FamilyCount{IPv4: 1, IPv6: 1}
	s.Sync([]proxier.ServiceHealth{web})
	for _, host := range []string{"127.0.0.1", "::1"} {
		code, body, weight, err := healthCheckAt(host, port)
		if err != nil || code != 200 || !strings.Contains(body, `"localEndpoints": 1,`) || weight != "1" {
			t.Errorf("over %s: %v %d weight %q %q; want 200 with 1 local endpoint", host, err, code, weight, body)
		}
	}
	web.LocalEndpoints = proxier.FamilyCount{IPv4: 2}
	s.Sync([]proxier.ServiceHealth{web})
	if code, body, _, err := healthCheckAt("::1", port); err != nil || code != 503 || !strings.Contains(body, `"localEndpoints": 0,`) {
		t.Errorf("over IPv6 with IPv4 endpoints only: %v %d %q; want 503 with 0", err, code, body)
	}
	if code, _, weight, err := healthCheckAt("127.0.0.1", port); err != nil || code != 200 || weight != "2" {
		t.Errorf("over IPv4 with 2: %v %d weight %q", err, code, weight)
	}
}
