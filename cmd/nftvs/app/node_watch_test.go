package app

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

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
	nw, err := watchNode(ctx, client, "node-a", 0, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeNode(t)
	if err := f.p.WatchWith(ctx, client, proxier.WatchOptions{Node: nw.informer}); err != nil {
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
	if n := nw.Node(); n == nil || len(NodeHostIPs(n)) != 1 {
		t.Errorf("the command's view of the node: %v", n)
	}
}
