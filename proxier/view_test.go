package proxier

import (
	"net/netip"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/ipvs"
)

// TestViewFollowsSyncs: the published view names each virtual server's
// Service port as applied, keeps a Service's problems, and forgets a
// deleted Service; a frontend handed over belongs to its new owner.
func TestViewFollowsSyncs(t *testing.T) {
	f := newFakeNode(t)
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	svc := makeService("ns", "web", nodePort(30080), annotated(AnnotationScheduler, "fastest"))
	f.addService(svc, httpSlice(svc, ready("10.244.1.5", thisNode)))
	f.sync(t, false)
	cip := ipvs.VSKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: ipvs.TCP, Port: 80}
	np := ipvs.VSKey{Address: netip.MustParseAddr("192.168.0.10"), Protocol: ipvs.TCP, Port: 30080}
	for _, k := range []ipvs.VSKey{cip, np} {
		if n, ok := f.p.VirtualServerOwner(k); !ok || n.String() != "ns/web:http" {
			t.Errorf("owner of %s: %v %v", k, n, ok)
		}
	}
	plans, problems, ok := f.p.AppliedService(web)
	if !ok || len(plans) != 1 || len(problems) != 1 || problems[0].Reason != ReasonInvalidScheduler || !strings.Contains(problems[0].Message, "fastest") {
		t.Errorf("AppliedService: %d plans, problems %q, ok %v", len(plans), problems, ok)
	}

	// Another Service takes over an external IP when the first lets it go.
	a := makeService("ns", "a", clusterIPs("10.96.0.20"), externalIPs("203.0.113.9"), created(1))
	b := makeService("ns", "b", clusterIPs("10.96.0.21"), externalIPs("203.0.113.9"), created(2))
	f.addService(a)
	f.addService(b)
	f.sync(t, false)
	ext := ipvs.VSKey{Address: netip.MustParseAddr("203.0.113.9"), Protocol: ipvs.TCP, Port: 80}
	if n, _ := f.p.VirtualServerOwner(ext); n.Name != "a" {
		t.Errorf("owner of the external IP %v, want ns/a", n)
	}
	f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: "a"}, nil)
	f.sync(t, false)
	if n, _ := f.p.VirtualServerOwner(ext); n.Name != "b" {
		t.Errorf("owner of the external IP after ns/a left: %v, want ns/b", n)
	}

	f.p.OnServiceUpdate(web, nil)
	f.sync(t, false)
	if _, ok := f.p.VirtualServerOwner(cip); ok {
		t.Error("a deleted Service still owns its ClusterIP")
	}
	if _, _, ok := f.p.AppliedService(web); ok {
		t.Error("a deleted Service is still in the view")
	}
}
