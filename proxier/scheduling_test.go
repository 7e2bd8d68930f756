package proxier

import (
	"errors"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftvs/nftvs/ipvs"
)

func annotated(kv ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Annotations[kv[i]] = kv[i+1]
		}
	}
}

// TestPlanSchedulingAnnotations: the annotations choose every virtual
// server's scheduler and flags (ClusterIP, node ports, external and LB
// IPs, the ETP=Local fwmark one); a value that cannot be honoured leaves
// the node's scheduling and says why, with reason InvalidScheduler.
func TestPlanSchedulingAnnotations(t *testing.T) {
	const (
		sched = AnnotationScheduler
		flags = AnnotationSchedulerFlags
		kr    = KubeRouterScheduler
		krf   = KubeRouterSchedulerFlags
	)
	for _, tc := range []struct {
		name       string
		node       string   // --ipvs-scheduler ("" = rr)
		offered    []string // the kernel's schedulers (nil = every in-tree one)
		ann        []string
		want       string
		wantFlags  ipvs.Flags
		wantReason string // the FieldError's reason, "" for none
		wantMsg    string // in the FieldError's message
	}{
		{name: "no annotation: the node's", want: "rr"},
		{name: "no annotation, node mh: mh-port as kube-proxy", node: "mh", want: "mh", wantFlags: ipvs.FlagMHPort},
		{name: "sh", ann: []string{sched, "sh"}, want: "sh"},
		{name: "spaces and case", ann: []string{sched, " WLC "}, want: "wlc"},
		{name: "sh with sh-port", ann: []string{sched, "sh", flags, "sh-port"}, want: "sh", wantFlags: ipvs.FlagSched2},
		{name: "sh with both flags", ann: []string{sched, "sh", flags, "sh-fallback, sh-port"}, want: "sh", wantFlags: ipvs.FlagSched1 | ipvs.FlagSched2},
		{name: "mh without flags annotation: mh-port as --ipvs-scheduler=mh", ann: []string{sched, "mh"}, want: "mh", wantFlags: ipvs.FlagMHPort},
		{name: "mh with flags none", ann: []string{sched, "mh", flags, "none"}, want: "mh"},
		{name: "mh with empty flags", ann: []string{sched, "mh", flags, ""}, want: "mh"},
		{name: "mh-fallback", ann: []string{sched, "mh", flags, "mh-fallback"}, want: "mh", wantFlags: ipvs.FlagSched1},
		{name: "flags alone apply to the node's scheduler", node: "sh", ann: []string{flags, "sh-port"}, want: "sh", wantFlags: ipvs.FlagSched2},
		{name: "twos offered by the kernel", ann: []string{sched, "twos"}, want: "twos"},
		{name: "an out-of-tree scheduler the kernel offers", offered: []string{"rr", "xyz"}, ann: []string{sched, "xyz"}, want: "xyz"},

		{name: "unknown scheduler", ann: []string{sched, "fastest"}, want: "rr",
			wantReason: ReasonInvalidScheduler, wantMsg: `unknown IPVS scheduler "fastest"`},
		{name: "unknown scheduler keeps the node's mh and its flag", node: "mh", ann: []string{sched, "fastest"}, want: "mh", wantFlags: ipvs.FlagMHPort,
			wantReason: ReasonInvalidScheduler, wantMsg: "keeps the node's scheduler mh (mh-port)"},
		{name: "module the kernel lacks", offered: []string{"rr", "sh"}, ann: []string{sched, "mh"}, want: "rr",
			wantReason: ReasonInvalidScheduler, wantMsg: "module ip_vs_mh missing"},
		{name: "empty scheduler", ann: []string{sched, ""}, want: "rr", wantReason: ReasonInvalidScheduler, wantMsg: "empty scheduler name"},
		{name: "flag of another scheduler", ann: []string{sched, "sh", flags, "mh-port"}, want: "rr",
			wantReason: ReasonInvalidScheduler, wantMsg: `flag "mh-port" is for scheduler mh, not sh`},
		{name: "flag for rr", ann: []string{sched, "rr", flags, "sh-port"}, want: "rr",
			wantReason: ReasonInvalidScheduler, wantMsg: "not rr"},
		{name: "not a flag", ann: []string{sched, "sh", flags, "sticky"}, want: "rr",
			wantReason: ReasonInvalidScheduler, wantMsg: `"sticky" is not an IPVS scheduler flag`},
		{name: "a bad flag keeps the node's scheduler, not the annotated one", node: "wlc", ann: []string{sched, "sh", flags, "flag-2"}, want: "wlc",
			wantReason: ReasonInvalidScheduler},

		{name: "kube-router sh", ann: []string{kr, "sh"}, want: "sh"},
		{name: "kube-router mh: no flag unless asked, as kube-router", ann: []string{kr, "mh"}, want: "mh"},
		{name: "kube-router mh flags", ann: []string{kr, "mh", krf, "flag-1,flag-2"}, want: "mh", wantFlags: ipvs.FlagSched1 | ipvs.FlagSched2},
		{name: "kube-router flags with sh are ignored, as kube-router does", ann: []string{kr, "sh", krf, "flag-2"}, want: "sh",
			wantReason: ReasonInvalidScheduler, wantMsg: "kube-router applies it only with scheduler mh"},
		{name: "kube-router unknown scheduler", ann: []string{kr, "random"}, want: "rr",
			wantReason: ReasonInvalidScheduler, wantMsg: KubeRouterScheduler},
		{name: "kube-router bad flag", ann: []string{kr, "mh", krf, "port"}, want: "rr",
			wantReason: ReasonInvalidScheduler, wantMsg: "not one of flag-1"},
		{name: "nftvs's annotation wins over kube-router's", ann: []string{sched, "lc", kr, "sh"}, want: "lc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Scheduler, cfg.Schedulers = tc.node, tc.offered
			svc := makeService("ns", "web", nodePort(30080), loadBalancer(30080, "192.0.2.10"), externalIPs("203.0.113.7"), etpLocal(30099), annotated(tc.ann...))
			plans, err := PlanService(svc, nil, cfg)
			if len(plans) != 1 || len(plans[0].VirtualServers) < 5 {
				t.Fatalf("plans: %s", dump(plans))
			}
			for _, vs := range plans[0].VirtualServers {
				if vs.Scheduler != tc.want || vs.Flags != tc.wantFlags {
					t.Errorf("%s: scheduler %s flags %v, want %s flags %v", vs.VSKey, vs.Scheduler, vs.Flags, tc.want, tc.wantFlags)
				}
			}
			var fe *FieldError
			switch {
			case tc.wantReason == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.wantReason != "" && !errors.As(err, &fe):
				t.Errorf("error %v, want a FieldError %s", err, tc.wantReason)
			case tc.wantReason != "":
				if fe.Reason != tc.wantReason || !strings.Contains(fe.Message, tc.wantMsg) || !strings.HasPrefix(fe.Message, "ns/web: ") {
					t.Errorf("FieldError %s %q, want %s containing %q", fe.Reason, fe.Message, tc.wantReason, tc.wantMsg)
				}
			}
		})
	}
}

// TestPlanSchedulingKeepsPersistence: session affinity (persistent, with
// the Service's timeout) goes with every scheduler and its flags.
func TestPlanSchedulingKeepsPersistence(t *testing.T) {
	for _, s := range ipvs.KernelSchedulers {
		svc := makeService("ns", "web", affinity(600), annotated(AnnotationScheduler, s))
		plans, err := PlanService(svc, nil, testConfig())
		if err != nil {
			t.Fatal(err)
		}
		vs := plans[0].VirtualServers[0]
		if vs.Scheduler != s || vs.Flags&ipvs.FlagPersistent == 0 || vs.Timeout != 600 {
			t.Errorf("%s: %s flags %v timeout %d, want persistent with timeout 600", s, vs.Scheduler, vs.Flags, vs.Timeout)
		}
	}
	svc := makeService("ns", "web", affinity(600), annotated(AnnotationScheduler, "sh", AnnotationSchedulerFlags, "sh-port"))
	plans, _ := PlanService(svc, nil, testConfig())
	if vs := plans[0].VirtualServers[0]; vs.Flags != ipvs.FlagPersistent|ipvs.FlagSched2 {
		t.Errorf("sh sh-port with affinity: flags %v", vs.Flags)
	}
}

// TestProxierSchedulingAnnotationEditsInPlace: changing the annotation
// updates each virtual server in place (no delete, no re-add of virtual or
// real servers, so IPVS keeps its connections); a bad value warns once,
// whatever the number of syncs, and leaves IPVS as the node's scheduler
// would have it.
func TestProxierSchedulingAnnotationEditsInPlace(t *testing.T) {
	f, warned := newWarnedNode(t, true)
	name := types.NamespacedName{Namespace: "ns", Name: "web"}
	svc := makeService("ns", "web", nodePort(30080), annotated(AnnotationScheduler, "sh", AnnotationSchedulerFlags, "sh-port"))
	f.addService(svc, httpSlice(svc, ready("10.244.1.5", thisNode), ready("10.244.2.5", "node-b")))
	f.sync(t, false)
	if got := f.ipvsText(); !strings.Contains(got, "TCP  10.96.0.10:80 sh flag-2") || !strings.Contains(got, "TCP  192.168.0.10:30080 sh flag-2") {
		t.Fatalf("IPVS:\n%s", got)
	}

	f.ipvs.Reset()
	f.p.OnServiceUpdate(name, makeService("ns", "web", nodePort(30080), annotated(AnnotationScheduler, "mh", AnnotationSchedulerFlags, "mh-fallback")))
	f.sync(t, false)
	w := f.ipvs.Writes()
	// Two virtual servers: the ClusterIP and the node port on the IPv4
	// node port address (the Service is IPv4 only).
	if w.UpdateVirtualServer != 2 || w.Total() != 2 {
		t.Errorf("annotation change cost %+v, want 2 UpdateVirtualServer and nothing else", w)
	}
	if got := f.ipvsText(); !strings.Contains(got, "TCP  10.96.0.10:80 mh flag-1") {
		t.Errorf("after the edit:\n%s", got)
	}
	if len(*warned) != 0 {
		t.Errorf("warnings for good annotations: %v", *warned)
	}

	// A bad value: the node's rr, one Warning, however many syncs.
	f.ipvs.Reset()
	f.p.OnServiceUpdate(name, makeService("ns", "web", nodePort(30080), annotated(AnnotationScheduler, "fastest")))
	f.sync(t, false)
	f.sync(t, true)
	f.sync(t, true)
	if got := f.ipvsText(); !strings.Contains(got, "TCP  10.96.0.10:80 rr\n") {
		t.Errorf("a bad annotation did not leave the node's scheduler:\n%s", got)
	}
	if len(*warned) != 1 || !strings.HasPrefix((*warned)[0], "ns/web InvalidScheduler: ns/web: annotation ipvs.nftvs.io/scheduler: unknown IPVS scheduler \"fastest\"") {
		t.Errorf("warnings %q, want one InvalidScheduler", *warned)
	}
	if w := f.ipvs.Writes(); w.UpdateVirtualServer != 2 || w.Total() != 2 {
		t.Errorf("falling back cost %+v, want 2 in-place updates", w)
	}
}
