package proxier

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// Any namespace user writes Services: these plans must never claim an
// address that would capture other traffic, and a restriction that cannot
// be used must restrict more, never less (issue 15).
func TestPlanHostileFrontends(t *testing.T) {
	one := func(s *v1.Service) []*discovery.EndpointSlice {
		return []*discovery.EndpointSlice{httpSlice(s, ready("10.244.2.5", "node-b"))}
	}
	runPlanCases(t, []planCase{{
		name:   "an externalIP that is the node's address: Service port served, address neither bound nor filtered",
		svc:    makeService("ns", "web", externalIPs("192.168.0.10"), ports(v1.ServicePort{Name: "http", Port: 8080})),
		slices: one,
		want: `
		ns/web:http
		  TCP 10.96.0.10:8080 rr -> [10.244.2.5:8080 w1]
		  TCP 192.168.0.10:8080 rr -> [10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 8080
		  ipvs-addresses 10.96.0.10
		  external-ips 192.168.0.10 . tcp . 8080
		`,
	}, {
		name:   "an externalIP on another local link counts as the node's",
		svc:    makeService("ns", "web", externalIPs("172.17.0.1")),
		slices: one,
		cfg:    func(c *PlanConfig) { c.Node.LocalAddresses = []netip.Addr{netip.MustParseAddr("172.17.0.1")} },
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> [10.244.2.5:8080 w1]
		  TCP 172.17.0.1:80 rr -> [10.244.2.5:8080 w1]
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  external-ips 172.17.0.1 . tcp . 80
		`,
	}, {
		name: "a load-balancer IP that is loopback, link-local, multicast or unspecified is refused",
		svc:  makeService("ns", "lb", loadBalancer(0, "127.0.0.1", "169.254.169.254", "224.0.0.1", "::1", "fe80::1", "192.0.2.10")),
		err:  "127.0.0.1 is a loopback address: not programmed",
		want: `
		ns/lb:http
		  TCP 10.96.0.10:80 rr -> []
		  TCP 192.0.2.10:80 rr -> []
		  addr 10.96.0.10
		  addr 192.0.2.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  load-balancer-ips 192.0.2.10 . tcp . 80
		  ipvs-addresses 192.0.2.10
		`,
	}, {
		name: "an externalIP inside --ipvs-exclude-cidrs is someone else's",
		svc:  makeService("ns", "web", externalIPs("198.51.100.7")),
		cfg:  func(c *PlanConfig) { c.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")} },
		err:  "inside --ipvs-exclude-cidrs",
		want: `
		ns/web:http
		  TCP 10.96.0.10:80 rr -> []
		  addr 10.96.0.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		`,
	}, {
		name: "padded source ranges are trimmed, as kube-proxy does",
		svc:  makeService("ns", "lb", loadBalancer(0, "192.0.2.10"), sourceRanges(" 198.51.100.0/24 ", "010.0.0.0/8")),
		want: `
		ns/lb:http
		  TCP 10.96.0.10:80 rr -> []
		  TCP 192.0.2.10:80 rr -> []
		  addr 10.96.0.10
		  addr 192.0.2.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  load-balancer-ips 192.0.2.10 . tcp . 80
		  ipvs-addresses 192.0.2.10
		  load-balancer-firewall 192.0.2.10 . tcp . 80
		  load-balancer-source-ranges 192.0.2.10 . tcp . 80 . 198.51.100.0/24
		  load-balancer-source-ranges 192.0.2.10 . tcp . 80 . 10.0.0.0/8
		`,
	}, {
		name: "no usable source range: the firewall stays, with nobody allowed",
		svc:  makeService("ns", "lb", loadBalancer(0, "192.0.2.10"), sourceRanges("not-a-cidr")),
		err:  "none usable for 192.0.2.10: it accepts no traffic from outside",
		want: `
		ns/lb:http
		  TCP 10.96.0.10:80 rr -> []
		  TCP 192.0.2.10:80 rr -> []
		  addr 10.96.0.10
		  addr 192.0.2.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  load-balancer-ips 192.0.2.10 . tcp . 80
		  ipvs-addresses 192.0.2.10
		  load-balancer-firewall 192.0.2.10 . tcp . 80
		`,
	}, {
		name: "ranges of the other family only: closed too",
		svc: makeService("ns", "lb", clusterIPs("10.96.0.10", "fd00:96::10"), loadBalancer(0, "192.0.2.10", "2001:db8::10"),
			sourceRanges("198.51.100.0/24")),
		err: "none usable for 2001:db8::10",
		want: `
		ns/lb:http
		  TCP 10.96.0.10:80 rr -> []
		  TCP 192.0.2.10:80 rr -> []
		  TCP [fd00:96::10]:80 rr -> []
		  TCP [2001:db8::10]:80 rr -> []
		  addr 10.96.0.10
		  addr 192.0.2.10
		  addr 2001:db8::10
		  addr fd00:96::10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  load-balancer-ips 192.0.2.10 . tcp . 80
		  ipvs-addresses 192.0.2.10
		  load-balancer-firewall 192.0.2.10 . tcp . 80
		  load-balancer-source-ranges 192.0.2.10 . tcp . 80 . 198.51.100.0/24
		  cluster-ips fd00:96::10 . tcp . 80
		  ipvs-addresses fd00:96::10
		  load-balancer-ips 2001:db8::10 . tcp . 80
		  ipvs-addresses 2001:db8::10
		  load-balancer-firewall 2001:db8::10 . tcp . 80
		`,
	}, {
		name: "a zero-length range allows everyone, as in kube-proxy",
		svc:  makeService("ns", "lb", loadBalancer(0, "192.0.2.10"), sourceRanges("0.0.0.0/0")),
		want: `
		ns/lb:http
		  TCP 10.96.0.10:80 rr -> []
		  TCP 192.0.2.10:80 rr -> []
		  addr 10.96.0.10
		  addr 192.0.2.10
		  cluster-ips 10.96.0.10 . tcp . 80
		  ipvs-addresses 10.96.0.10
		  load-balancer-ips 192.0.2.10 . tcp . 80
		  ipvs-addresses 192.0.2.10
		`,
	}})
}

func TestPlanFieldErrorsCarryAReason(t *testing.T) {
	svc := makeService("ns", "lb", loadBalancer(0, "127.0.0.1"), sourceRanges(" bad "))
	_, err := PlanService(svc, nil, testConfig())
	var reasons []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("%v is not a FieldError", e)
		}
		reasons = append(reasons, fe.Reason)
	}
	if len(reasons) != 2 || reasons[0] != ReasonRefusedAddress || reasons[1] != ReasonInvalidSourceRange {
		t.Errorf("reasons %v", reasons)
	}
}

// TestProxierWarnsOncePerProblem: a Service's unusable fields are reported
// when they appear or change, not again by every full sync; the rest of
// the node's Services are programmed.
func TestProxierWarnsOncePerProblem(t *testing.T) {
	f, warned := newWarnedNode(t, false)
	good := makeService("ns", "good", clusterIPs("10.96.0.11"))
	f.addService(good)
	f.addService(makeService("ns", "lb", loadBalancer(0, "127.0.0.1", "192.0.2.10")))
	f.sync(t, false)
	f.sync(t, true)
	if len(*warned) != 1 || (*warned)[0] != "ns/lb RefusedAddress" {
		t.Fatalf("warnings %v, want one RefusedAddress for ns/lb", *warned)
	}
	if got := f.ipvsText(); !strings.Contains(got, "10.96.0.11:80") || !strings.Contains(got, "192.0.2.10:80") || strings.Contains(got, "127.0.0.1") {
		t.Errorf("IPVS:\n%s", got)
	}
	f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: "lb"}, makeService("ns", "lb", loadBalancer(0, "127.0.0.2")))
	f.sync(t, false)
	if len(*warned) != 2 {
		t.Errorf("a changed problem was not reported again: %v", *warned)
	}
}

// TestProxierNeverBindsNodeAddresses: an externalIP that is one of the
// node's addresses is served on its Service port but neither bound to
// kube-ipvs0 nor put in the set whose other ports are rejected.
func TestProxierNeverBindsNodeAddresses(t *testing.T) {
	f := newFakeNode(t)
	svc := makeService("ns", "web", externalIPs("192.168.0.10"), ports(v1.ServicePort{Name: "http", Port: 8080}))
	f.addService(svc, httpSlice(svc, ready("10.244.2.5", "node-b")))
	f.sync(t, false)
	if as := f.addresses(t); len(as) != 1 || as[0] != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("kube-ipvs0 holds %v, want the ClusterIP only", as)
	}
	if dump := f.nft.Dump(); strings.Contains(dump, "192.168.0.10 comment \"ns/") {
		t.Errorf("the node's address is in ipvs-addresses:\n%s", dump)
	}
	if got := f.ipvsText(); !strings.Contains(got, "192.168.0.10:8080") {
		t.Errorf("the Service port on the node's address is not served:\n%s", got)
	}
}

func created(sec int64) func(*v1.Service) {
	return func(s *v1.Service) { s.CreationTimestamp = metav1.Unix(1_700_000_000+sec, 0) }
}

// TestProxierConflictingFrontends: two Services asking for one frontend
// leave it to one owner, picked the same way everywhere; the other is
// warned; every sync stays healthy; the frontend is handed over when the
// owner goes away, without being deleted in between.
func TestProxierConflictingFrontends(t *testing.T) {
	f, warned := newWarnedNode(t, true)

	older := makeService("ns", "older", clusterIPs("10.96.0.11"), externalIPs("198.51.100.7"), created(0))
	newer := makeService("ns", "newer", clusterIPs("10.96.0.12"), externalIPs("198.51.100.7"), created(60),
		func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"} })
	f.addService(newer, httpSlice(newer, ready("10.244.2.12", "node-b")))
	f.addService(older, httpSlice(older, ready("10.244.2.11", "node-b")))
	f.sync(t, false)
	got := f.ipvsText()
	if !strings.Contains(got, "TCP  198.51.100.7:80 rr\n  "+w1("10.244.2.11:8080")) {
		t.Errorf("the older Service does not own 198.51.100.7:80:\n%s", got)
	}
	if len(*warned) != 1 || !strings.HasPrefix((*warned)[0], "ns/newer FrontendConflict") || !strings.Contains((*warned)[0], "Service older's") {
		t.Errorf("warnings %q", *warned)
	}
	for _, l := range strings.Split(f.nft.Dump(), "\n") {
		if strings.Contains(l, "198.51.100.7 . tcp . 80") && strings.Contains(l, "ns/newer") {
			t.Errorf("the newer Service owns an element of the frontend it lost: %s", l)
		}
	}

	// The owner goes away: the frontend is handed over in the same sync.
	f.ipvs.Reset()
	f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: "older"}, nil)
	f.sync(t, false)
	got = f.ipvsText()
	if !strings.Contains(got, "TCP  198.51.100.7:80 rr\n  "+w1("10.244.2.12:8080")) {
		t.Errorf("198.51.100.7:80 was not handed over to ns/newer:\n%s", got)
	}
	if d := f.ipvs.Writes().DeleteVirtualServer; d != 1 {
		t.Errorf("%d virtual servers deleted, want 1 (the older Service's ClusterIP; the shared frontend is updated in place)", d)
	}
}

// TestProxierClusterIPsComeFirst: a load-balancer IP or external IP naming
// another Service's ClusterIP and port never takes it over, however old.
func TestProxierClusterIPsComeFirst(t *testing.T) {
	f := newFakeNode(t)
	victim := makeService("ns", "victim", clusterIPs("10.96.0.11"), created(3600))
	thief := makeService("evil", "thief", clusterIPs("10.96.0.12"), externalIPs("10.96.0.11"), created(0))
	f.addService(victim, httpSlice(victim, ready("10.244.2.11", "node-b")))
	f.addService(thief, httpSlice(thief, ready("10.244.2.66", "node-b")))
	f.sync(t, false)
	if got := f.ipvsText(); !strings.Contains(got, "TCP  10.96.0.11:80 rr\n  "+w1("10.244.2.11:8080")+"\n") {
		t.Errorf("the ClusterIP was taken over:\n%s", got)
	}
}

// TestProxierLoadBalancerBeforeExternalIP: an externalIP that any user
// wrote first never squats on a load-balancer IP a controller gave
// another Service later (issue 26); the loser's Event names no Service of
// another namespace.
func TestProxierLoadBalancerBeforeExternalIP(t *testing.T) {
	f, warned := newWarnedNode(t, true)
	squatter := makeService("evil", "squatter", clusterIPs("10.96.0.12"), externalIPs("203.0.113.9"), created(0))
	lb := makeService("shop", "lb", clusterIPs("10.96.0.11"), loadBalancer(0, "203.0.113.9"), created(3600),
		sourceRanges("192.0.2.0/24"))
	f.addService(squatter, httpSlice(squatter, ready("10.244.2.66", "node-b")))
	f.sync(t, false)
	f.addService(lb, httpSlice(lb, ready("10.244.2.11", "node-b")))
	f.sync(t, false)
	if got := f.ipvsText(); !strings.Contains(got, "TCP  203.0.113.9:80 rr\n  "+w1("10.244.2.11:8080")+"\n") {
		t.Errorf("the load balancer's IP is not the load balancer's:\n%s", got)
	}
	dump := f.nft.Dump()
	if !strings.Contains(dump, "203.0.113.9 . tcp . 80 comment \"shop/lb:http/tcp\"") {
		t.Errorf("the load balancer's firewall is not programmed:\n%s", dump)
	}
	if len(*warned) != 1 || !strings.HasPrefix((*warned)[0], "evil/squatter FrontendConflict") {
		t.Fatalf("warnings %q, want one FrontendConflict for evil/squatter", *warned)
	}
	if w := (*warned)[0]; strings.Contains(w, "shop") || strings.Contains(w, "lb:") || !strings.Contains(w, "another namespace") {
		t.Errorf("the Event tells another namespace's Service: %q", w)
	}
}

// TestProxierIsolatesRefusedVirtualServers: a virtual server the kernel
// refuses (EINVAL) is reported for its Service and retried by the next
// full sync, while the sync succeeds and every other Service is
// programmed; IPVS failing the node (ENOMEM) still fails the sync.
func TestProxierIsolatesRefusedVirtualServers(t *testing.T) {
	f, warned := newWarnedNode(t, false)
	bad := netip.MustParseAddr("10.96.0.66")
	refuse := syscall.EINVAL
	f.kern.Inject = func(op ipvs.Op, key ipvs.VSKey, _ *ipvs.RealServer) error {
		if op == ipvs.OpAddVirtualServer && key.Address == bad {
			return fmt.Errorf("add virtual server %s: %w", key, refuse)
		}
		return nil
	}
	f.addService(makeService("ns", "bad", clusterIPs("10.96.0.66")))
	f.addService(makeService("ns", "good", clusterIPs("10.96.0.11")))
	res := f.sync(t, false)
	if len(res.Refused) != 1 || res.Refused[0].Service.Name != "bad" {
		t.Errorf("refused %v, want ns/bad's virtual server", res.Refused)
	}
	if got := f.ipvsText(); !strings.Contains(got, "10.96.0.11:80") {
		t.Errorf("the good Service is not programmed:\n%s", got)
	}
	if len(*warned) != 1 || (*warned)[0] != "ns/bad FailedToProgram" {
		t.Errorf("warnings %v", *warned)
	}
	f.sync(t, true)
	if len(*warned) != 1 {
		t.Errorf("the same refusal was reported again: %v", *warned)
	}
	f.kern.Inject = nil
	f.sync(t, true)
	if got := f.ipvsText(); !strings.Contains(got, "10.96.0.66:80") {
		t.Errorf("the next full sync did not retry the refused virtual server:\n%s", got)
	}

	refuse = syscall.ENOMEM
	f.kern.Inject = func(op ipvs.Op, key ipvs.VSKey, _ *ipvs.RealServer) error {
		if op == ipvs.OpAddVirtualServer {
			return fmt.Errorf("add virtual server %s: %w", key, refuse)
		}
		return nil
	}
	f.addService(makeService("ns", "third", clusterIPs("10.96.0.12")))
	if _, err := f.p.Sync(false); err == nil {
		t.Error("IPVS out of memory did not fail the sync")
	}
}

// TestProxierIsolatesRefusedElements: when the kernel refuses one Service
// port's nft elements, the table applies everyone else's, the sync
// succeeds and the Service is reported.
func TestProxierIsolatesRefusedElements(t *testing.T) {
	f := newFakeNode(t)
	bad := netip.MustParseAddr("10.96.0.66")
	f.nft.Refuse = func(e nft.Element) error {
		if e.Addr == bad {
			return syscall.EINVAL
		}
		return nil
	}
	f.addService(makeService("ns", "bad", clusterIPs("10.96.0.66")))
	f.addService(makeService("ns", "good", clusterIPs("10.96.0.11")))
	res := f.sync(t, false)
	if len(res.Refused) == 0 || res.Refused[0].Service.Name != "bad" {
		t.Errorf("refused %v, want ns/bad's elements", res.Refused)
	}
	if dump := f.nft.Dump(); !strings.Contains(dump, `10.96.0.11 . tcp . 80 comment "ns/good:http/tcp"`) {
		t.Errorf("the good Service's elements are not programmed:\n%s", dump)
	}
}

// TestPlanFWMarkCarriesTheConfiguredMasqueradeBit: with
// --iptables-masquerade-bit 3 the fwmark carries 0x8, not kube-proxy's
// default 0x4000 (the table's rules masquerade by that bit).
func TestPlanFWMarkCarriesTheConfiguredMasqueradeBit(t *testing.T) {
	cfg := testConfig()
	cfg.MasqueradeMark = 1 << 3
	plans, err := PlanService(makeService("ns", "web", nodePort(30080), etpLocal(0)), nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := dump(plans); !strings.Contains(got, "node-port-fwmarks tcp . 30080 : 0x75801008") {
		t.Errorf("plan:\n%s", got)
	}
}

// newWarnedNode is a fake node whose proxier's warnings are collected as
// "namespace/name Reason" (with ": message" when withMessage).
func newWarnedNode(t *testing.T, withMessage bool) (*fakeNode, *[]string) {
	f := newFakeNode(t)
	var warned []string
	f.p = New(Config{PlanConfig: f.p.cfg.PlanConfig, Clock: f.p.cfg.Clock,
		Warn: func(n types.NamespacedName, reason, msg string) {
			w := n.String() + " " + reason
			if withMessage {
				w += ": " + msg
			}
			warned = append(warned, w)
		}}, f.p.k)
	f.p.SetSynced()
	return f, &warned
}

// TestProxierRelabelledSlice: an EndpointSlice that any namespace user
// labelled for a Service leaves it as soon as its label changes or goes,
// not when nftvs restarts (issue 26).
func TestProxierRelabelledSlice(t *testing.T) {
	for _, newLabel := range []string{"other", ""} {
		t.Run(fmt.Sprintf("label %q", newLabel), func(t *testing.T) {
			f := newFakeNode(t)
			victim := makeService("ns", "victim", clusterIPs("10.96.0.11"))
			f.addService(victim, httpSlice(victim, ready("10.244.2.11", "node-b")))
			evil := httpSlice(victim, ready("10.244.2.66", "node-b"))
			evil.Name = "evil"
			f.p.OnEndpointSliceUpdate("ns", "evil", evil, "victim")
			f.sync(t, false)
			if got := f.ipvsText(); !strings.Contains(got, w1("10.244.2.66:8080")) {
				t.Fatalf("the labelled slice was not attached:\n%s", got)
			}
			relabelled := evil.DeepCopy()
			relabelled.Labels[discovery.LabelServiceName] = newLabel
			f.p.OnEndpointSliceUpdate("ns", "evil", relabelled, newLabel)
			f.sync(t, false)
			want := "TCP  10.96.0.11:80 rr\n  " + w1("10.244.2.11:8080") + "\n"
			if got := f.ipvsText(); !strings.Contains(got, want) || strings.Contains(got, "10.244.2.66") {
				t.Errorf("after the relabel, victim is\n%s\nwant only its own endpoint", got)
			}
			f.p.OnEndpointSliceUpdate("ns", "evil", nil, newLabel)
			f.sync(t, true)
			if got := f.ipvsText(); strings.Contains(got, "10.244.2.66") {
				t.Errorf("after the delete, victim is\n%s", got)
			}
		})
	}
}

// TestProxierEventsBounded: a Service with 1,000 refused addresses gets
// one Event per change that sums them up, never one per address; the
// count stays whole in SyncResult.Problems (issue 26).
func TestProxierEventsBounded(t *testing.T) {
	f, warned := newWarnedNode(t, true)
	loopbacks := func(first int) []string {
		var ips []string
		for i := first; i < first+1000; i++ {
			ips = append(ips, fmt.Sprintf("127.1.%d.%d", i/250, 1+i%250))
		}
		return ips
	}
	for change, ips := range [][]string{loopbacks(0), loopbacks(1), loopbacks(2), loopbacks(2)} {
		svc := makeService("ns", "many", clusterIPs("10.96.0.11"), externalIPs(ips...))
		f.addService(svc, httpSlice(svc, ready("10.244.2.11", "node-b")))
		res := f.sync(t, change == 3)
		if got := res.Problems[ReasonRefusedAddress]; got != 1000 {
			t.Errorf("change %d: Problems[RefusedAddress] = %d, want 1000", change, got)
		}
	}
	if len(*warned) != 3 {
		t.Fatalf("%d Events for 3 changes of 1,000 refused addresses (and one full sync), want 3", len(*warned))
	}
	for _, w := range *warned {
		if !strings.HasPrefix(w, "ns/many RefusedAddress: 1000 fields not programmed (RefusedAddress ×1000): ") ||
			!strings.HasSuffix(w, "; and 997 more") || len(w) > 1100 {
			t.Errorf("Event %q", w)
		}
	}
	f.p.OnServiceUpdate(types.NamespacedName{Namespace: "ns", Name: "many"}, nil)
	if res := f.sync(t, false); len(res.Problems) != 0 {
		t.Errorf("Problems after the Service went: %v", res.Problems)
	}
}

// TestProxierPortProtocolRenamed: a port that changes protocol under the
// same name keeps its new elements in the sync that changes it, not only
// after the next full sync (issue 26).
func TestProxierPortProtocolRenamed(t *testing.T) {
	f := newFakeNode(t)
	svc := makeService("ns", "dns", clusterIPs("10.96.0.11"), ports(v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolTCP}))
	f.addService(svc)
	f.sync(t, false)
	svc = makeService("ns", "dns", clusterIPs("10.96.0.11"), ports(v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}))
	f.addService(svc)
	f.sync(t, false)
	dump := f.nft.Dump()
	if !strings.Contains(dump, `10.96.0.11 . udp . 53 comment "ns/dns:dns/udp"`) {
		t.Errorf("the renamed port's element is gone:\n%s", dump)
	}
	if strings.Contains(dump, "10.96.0.11 . tcp . 53") {
		t.Errorf("the old protocol's element stayed:\n%s", dump)
	}
}

// TestProxierAddressChange: an address that comes or goes is served as a
// node port address by the next sync after OnLocalAddressChange, not the
// next full one; the node port rules match exactly those addresses.
func TestProxierAddressChange(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("192.168.0.10")}
	f := newFakeNodeWith(t, func(c *Config) {
		c.HostAddresses = func() ([]netip.Addr, error) { return slices.Clone(addrs), nil }
		c.NodePortAddresses = func(host []netip.Addr) []netip.Addr { return host }
	})
	svc := makeService("ns", "np", clusterIPs("10.96.0.11"), nodePort(30080))
	f.addService(svc, httpSlice(svc, ready("10.244.2.11", "node-b")))
	f.sync(t, true)
	addrs = append(addrs, netip.MustParseAddr("192.168.0.77"))
	f.sync(t, false)
	if got := f.ipvsText(); strings.Contains(got, "192.168.0.77") {
		t.Fatalf("an address was served before it was reported:\n%s", got)
	}
	f.p.OnLocalAddressChange()
	res := f.sync(t, false)
	if got := f.ipvsText(); !strings.Contains(got, "TCP  192.168.0.77:30080 rr\n  "+w1("10.244.2.11:8080")) {
		t.Errorf("the new address's node port is not served:\n%s", got)
	}
	if res.Full {
		t.Error("an address change made a full sync")
	}
	if dump := f.nft.Dump(); !strings.Contains(dump, `192.168.0.77 comment "node"`) {
		t.Errorf("node-port-addresses lacks the new address:\n%s", dump)
	}
	addrs = addrs[:1]
	f.p.OnLocalAddressChange()
	f.sync(t, false)
	if got := f.ipvsText(); strings.Contains(got, "192.168.0.77") {
		t.Errorf("the address that went is still served:\n%s", got)
	}
	if dump := f.nft.Dump(); strings.Contains(dump, "192.168.0.77") {
		t.Errorf("node-port-addresses keeps the address that went:\n%s", dump)
	}
}

// TestProxierRefusesKubernetesEndpoints: no Service may claim the API
// server's address, as the default/kubernetes Service's endpoints give
// it; when they change, every Service is planned again.
func TestProxierRefusesKubernetesEndpoints(t *testing.T) {
	f, warned := newWarnedNode(t, false)
	evil := makeService("evil", "lb", clusterIPs("10.96.0.66"), loadBalancer(0, "192.0.2.1"))
	f.addService(evil, httpSlice(evil, ready("10.244.2.66", "node-b")))
	f.sync(t, false)
	if got := f.ipvsText(); !strings.Contains(got, "192.0.2.1:80") {
		t.Fatalf("the load-balancer IP is not served before it is the API server's:\n%s", got)
	}
	api := makeService("default", "kubernetes", clusterIPs("10.96.0.1"), ports(v1.ServicePort{Name: "https", Port: 443}))
	s := makeSlice(api, "IPv4", "https", 6443, v1.ProtocolTCP, ready("192.0.2.1", ""))
	f.addService(api, s)
	f.sync(t, false)
	if got := f.ipvsText(); strings.Contains(got, "192.0.2.1:80") {
		t.Errorf("a Service holds the API server's address:\n%s", got)
	}
	if as := f.addresses(t); slices.Contains(as, netip.MustParseAddr("192.0.2.1")) {
		t.Errorf("kube-ipvs0 holds the API server's address: %v", as)
	}
	if !slices.Contains(*warned, "evil/lb RefusedAddress") {
		t.Errorf("warnings %v", *warned)
	}
}

// TestProxierTableRefusalIsAKernelRefusal: elements the table refuses
// before the kernel sees them (SetElements: here, fwmarks without the
// table's masquerade bit) go the way of the kernel's refusals: in
// SyncResult.Refused once per sync (which the metric counts), logged and
// warned once per Service, the other Services programmed. Before, they
// were only logged, at every sync, and neither counted nor warned.
func TestProxierTableRefusalIsAKernelRefusal(t *testing.T) {
	f, warned := newWarnedNode(t, false)
	cfg := f.p.cfg
	cfg.MasqueradeMark = 1 << 3 // the table's is 1 << 14
	f.p = New(cfg, f.p.k)
	f.p.SetSynced()
	f.addService(makeService("ns", "local", clusterIPs("10.96.0.66"), nodePort(30080), etpLocal(0)))
	f.addService(makeService("ns", "good", clusterIPs("10.96.0.11")))
	for i, full := range []bool{false, true} {
		res := f.sync(t, full)
		if len(res.Refused) != 1 || res.Refused[0].Service.Name != "local" ||
			!strings.Contains(res.Refused[0].Err.Error(), "nftables refused the elements of ns/local:http/tcp: ") ||
			!strings.Contains(res.Refused[0].Err.Error(), "lacks the masquerade bit") {
			t.Errorf("sync %d: refused %v, want ns/local's fwmark elements once", i, res.Refused)
		}
	}
	if len(*warned) != 1 || (*warned)[0] != "ns/local FailedToProgram" {
		t.Errorf("warnings %v, want one FailedToProgram for ns/local", *warned)
	}
	if dump := f.nft.Dump(); !strings.Contains(dump, `10.96.0.11 . tcp . 80 comment "ns/good:http/tcp"`) {
		t.Errorf("the good Service's elements are not programmed:\n%s", dump)
	}
}
