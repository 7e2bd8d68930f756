package proxier

import (
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/nftvs/nftvs/ipvs"
)

// Per-Service IPVS scheduling: annotations on a Service choose the
// scheduler and scheduler flags of all of its virtual servers, overriding
// --ipvs-scheduler. Upstream kube-proxy never offered it
// (kubernetes#58329, #75502, #77006, #94350, #118784, #121591);
// kube-router does, and its annotations are read too, so a cluster moving
// from kube-router keeps its Services' scheduling.
const (
	// AnnotationScheduler names the IPVS scheduler (rr, wrr, lc, wlc, lblc,
	// lblcr, dh, sh, sed, nq, fo, ovf, mh, twos: any the node's kernel
	// offers).
	AnnotationScheduler = "ipvs.nftvs.io/scheduler"
	// AnnotationSchedulerFlags lists scheduler flags, comma-separated, as
	// ipvsadm names them: sh-fallback, sh-port (sh), mh-fallback, mh-port
	// (mh); "" or "none" is no flag. Without it a Service gets the flags
	// --ipvs-scheduler would give its scheduler (mh: mh-port).
	AnnotationSchedulerFlags = "ipvs.nftvs.io/scheduler-flags"
	// KubeRouterScheduler is kube-router's scheduler annotation, read when
	// the Service has neither of nftvs's.
	KubeRouterScheduler = "kube-router.io/service.scheduler"
	// KubeRouterSchedulerFlags is kube-router's flags annotation
	// ("flag-1,flag-2,flag-3", the kernel's generic bits), which
	// kube-router applies only with mh.
	KubeRouterSchedulerFlags = "kube-router.io/service.schedflags"

	// ReasonInvalidScheduler is the Warning Event's reason for a
	// scheduling annotation that cannot be honoured.
	ReasonInvalidScheduler = "InvalidScheduler"
)

// scheduling is the scheduler and flags of a Service's virtual servers.
type scheduling struct {
	scheduler string
	flags     ipvs.Flags
}

// nodeScheduling is --ipvs-scheduler with the flags it implies.
func nodeScheduling(cfg *PlanConfig) scheduling {
	s := cfg.Scheduler
	if s == "" {
		s = "rr"
	}
	return scheduling{s, ipvs.SchedulerFlags(s)}
}

// serviceScheduling reads the Service's scheduling annotations. A value
// that cannot be honoured (an unknown scheduler, one the node's kernel
// lacks, a flag that does not fit) is reported through bad, and the
// Service keeps the node's scheduling: a typo in an annotation must not
// change how the Service balances, nor take it down.
func serviceScheduling(svc *v1.Service, cfg *PlanConfig, bad badField) scheduling {
	node := nodeScheduling(cfg)
	ann := svc.Annotations
	sched, hasSched := ann[AnnotationScheduler]
	flags, hasFlags := ann[AnnotationSchedulerFlags]
	if hasSched || hasFlags {
		s, err := nftvsScheduling(sched, hasSched, flags, hasFlags, node, cfg)
		if err != nil {
			bad(ReasonInvalidScheduler, "%s: the Service keeps the node's scheduler %s", err, describe(node))
			return node
		}
		return s
	}
	sched, hasSched = ann[KubeRouterScheduler]
	if !hasSched {
		return node
	}
	s, ignored, err := kubeRouterScheduling(sched, ann, cfg)
	if err != nil {
		bad(ReasonInvalidScheduler, "%s: the Service keeps the node's scheduler %s", err, describe(node))
		return node
	}
	if ignored != "" {
		bad(ReasonInvalidScheduler, "%s", ignored)
	}
	return s
}

func nftvsScheduling(sched string, hasSched bool, flags string, hasFlags bool, node scheduling, cfg *PlanConfig) (scheduling, error) {
	s := node
	if hasSched {
		name := strings.ToLower(strings.TrimSpace(sched))
		if err := offered(name, cfg); err != nil {
			return node, fmt.Errorf("annotation %s: %w", AnnotationScheduler, err)
		}
		s = scheduling{name, ipvs.SchedulerFlags(name)}
	}
	if hasFlags {
		f, err := ipvs.ParseSchedulerFlags(s.scheduler, flags)
		if err != nil {
			return node, fmt.Errorf("annotation %s=%q: %w", AnnotationSchedulerFlags, flags, err)
		}
		s.flags = f
	}
	return s, nil
}

// kubeRouterScheduling reads kube-router's annotations as kube-router
// does, except that any scheduler the kernel offers is taken (kube-router
// knows rr, lc, dh, sh and mh) and an unknown one is reported rather than
// silently replaced by rr. The flags apply only to mh, as in kube-router;
// with another scheduler they are ignored, and ignored says so.
func kubeRouterScheduling(sched string, ann map[string]string, cfg *PlanConfig) (s scheduling, ignored string, err error) {
	name := strings.ToLower(strings.TrimSpace(sched))
	if err := offered(name, cfg); err != nil {
		return s, "", fmt.Errorf("annotation %s: %w", KubeRouterScheduler, err)
	}
	s.scheduler = name
	list, ok := ann[KubeRouterSchedulerFlags]
	if !ok {
		return s, "", nil
	}
	if name != "mh" {
		return s, fmt.Sprintf("annotation %s=%q ignored: kube-router applies it only with scheduler mh, and this Service's is %s", KubeRouterSchedulerFlags, list, name), nil
	}
	for _, f := range strings.Split(list, ",") {
		switch strings.TrimSpace(f) {
		case "flag-1":
			s.flags |= ipvs.FlagSched1
		case "flag-2":
			s.flags |= ipvs.FlagSched2
		case "flag-3":
			s.flags |= ipvs.FlagSched3
		case "":
		default:
			return scheduling{}, "", fmt.Errorf("annotation %s=%q: %q is not one of flag-1, flag-2, flag-3", KubeRouterSchedulerFlags, list, strings.TrimSpace(f))
		}
	}
	return s, "", nil
}

// offered says why the node cannot use scheduler name, if it cannot.
func offered(name string, cfg *PlanConfig) error {
	avail := cfg.Schedulers
	if avail == nil {
		avail = ipvs.KernelSchedulers
	}
	switch {
	case name == "":
		return fmt.Errorf("empty scheduler name (this node's kernel offers %s)", strings.Join(avail, ", "))
	case slices.Contains(avail, name):
		return nil
	case slices.Contains(ipvs.KernelSchedulers, name):
		return fmt.Errorf("IPVS scheduler %q is not available in this node's kernel (module ip_vs_%s missing; it offers %s)", name, name, strings.Join(avail, ", "))
	}
	return fmt.Errorf("unknown IPVS scheduler %q (this node's kernel offers %s)", name, strings.Join(avail, ", "))
}

func describe(s scheduling) string {
	if f := ipvs.SchedulerFlagsString(s.scheduler, s.flags); f != "" {
		return s.scheduler + " (" + f + ")"
	}
	return s.scheduler
}
