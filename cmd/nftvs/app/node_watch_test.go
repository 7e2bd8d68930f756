package app

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/internal/kubeclient/clientset"
	"github.com/nftvs/nftvs/proxier"
)

// The Node is watched once: the proxier is handed the command's informer
// (before, the command and the proxier each listed and watched it), and
// the command's view of it (IPs at start, /healthz) is the same one.
func TestNodeWatchedOnce(t *testing.T) {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.10"}}},
	}
	client := fake.NewClientset(node)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nw, err := watchNode(ctx, clientset.New(client), "node-a", 0, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeNode(t)
	if err := f.p.Watch(ctx, clientset.New(client), proxier.WatchOptions{Node: nw.informer}); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, a := range client.Actions() {
		if a.GetResource().Resource == "nodes" {
			counts[a.GetVerb()]++
		}
	}
	if counts["list"] != 1 || counts["watch"] != 1 {
		t.Errorf("nodes listed %d and watched %d times, want once each", counts["list"], counts["watch"])
	}
	if n := nw.Node(); n == nil || len(config.NodeHostIPs(n)) != 1 {
		t.Errorf("the command's view of the node: %v", n)
	}
}

// A node whose podCIDRs come after nftvs started (IPAM later than the
// DaemonSet) makes it exit, to be restarted with them: both CIDR modes
// program them. Other changes to the node do not.
func TestPodCIDRsChangeRestarts(t *testing.T) {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.10"}}},
	}
	client := fake.NewClientset(node)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	changed := make(chan struct{}, 10)
	nw, err := watchNode(ctx, clientset.New(client), "node-a", 0, false, func() { changed <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	update := func(edit func(*v1.Node), seen func(*v1.Node) bool) {
		t.Helper()
		n := node.DeepCopy()
		edit(n)
		if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		node = n
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if n := nw.Node(); n != nil && seen(n) {
				return
			}
		}
		t.Fatal("the informer did not see the update")
	}
	// The informer's handler runs the updates in order: a wrong call for
	// the label change would come before the podCIDRs' one.
	update(func(n *v1.Node) { n.Labels = map[string]string{"a": "b"} }, func(n *v1.Node) bool { return n.Labels["a"] == "b" })
	update(func(n *v1.Node) { n.Spec.PodCIDRs = []string{"10.244.1.0/24"} }, func(n *v1.Node) bool { return len(n.Spec.PodCIDRs) == 1 })
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("podCIDRs set after the start: no restart")
	}
	time.Sleep(200 * time.Millisecond)
	if len(changed) != 0 {
		t.Fatal("two restarts for one podCIDR change (a label change was taken for one)")
	}
}

// /livez and /healthz answer from the first moment of a run, while nftvs
// still waits for its Node (here an API server that never answers a
// list): a liveness probe on a loaded node sees a starting proxy as
// alive instead of a refused connection (issue 30: on 2 and 5 December a
// restart took minutes to listen again).
func TestHealthServedBeforeTheNode(t *testing.T) {
	block := make(chan struct{})
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // hold every request until the test ends
		case <-block:
		case <-r.Context().Done():
		}
		http.Error(w, "gone", http.StatusServiceUnavailable)
	}))
	defer api.Close()
	defer close(block)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := mustParse(t, "--master", api.URL, "--healthz-bind-address", addr, "--metrics-bind-address", "", "--hostname-override", "node-a")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	var livez, healthz int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if livez = status(t, "http://"+addr+"/livez"); livez != 0 {
			healthz = status(t, "http://"+addr+"/healthz")
			break
		}
	}
	cancel()
	if livez != http.StatusOK || healthz != http.StatusServiceUnavailable {
		t.Errorf("while waiting for the Node: /livez %d, /healthz %d; want 200 and 503 (no Node, not eligible)", livez, healthz)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}
}

// status is the HTTP status of GET url, 0 when nothing answers.
func status(t *testing.T, url string) int {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Everything nftvs asks the API server (the informers' lists and watches,
// Events) goes through one client, rate-limited by clientConnection.qps
// and burst as in kube-proxy: a start-up on a loaded node asks no faster.
func TestClientRateLimited(t *testing.T) {
	cfg := mustParse(t, "--master", "http://127.0.0.1:1", "--kube-api-qps", "7", "--kube-api-burst", "3")
	client, api, err := newClient(*cfg.KubeProxy, cfg.Master)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(api) != "[127.0.0.1]" {
		t.Errorf("the API server's addresses are %v, want the --master host", api)
	}
	rcs := client.RESTClients()
	if len(rcs) != 3 {
		t.Errorf("%d REST clients, want core, discovery and events", len(rcs))
	}
	for name, rc := range rcs {
		rl := rc.GetRateLimiter()
		if rl == nil || rl.QPS() != 7 {
			t.Errorf("%s client: rate limiter %v, want 7 QPS", name, rl)
		}
	}
}
