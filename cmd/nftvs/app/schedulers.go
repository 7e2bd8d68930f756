package app

import (
	"errors"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/internal/kmod"
	"github.com/nftvs/nftvs/ipvs"
)

// notSchedulers are the ip_vs_* modules that are not schedulers:
// application helpers (ftp) and persistence engines (pe_sip).
var notSchedulers = map[string]bool{"ftp": true, "pe_sip": true}

// schedulerCandidates are the schedulers a Service may ask for by
// annotation: every in-tree one, and any other ip_vs_<name> module the
// node's module tree holds (an out-of-tree scheduler).
func schedulerCandidates(idx *kmod.Index) []string {
	out := slices.Clone(ipvs.KernelSchedulers)
	if idx == nil {
		slices.Sort(out)
		return out
	}
	names := make([]string, 0, len(idx.Modules)+len(idx.Builtin))
	for m := range idx.Modules {
		names = append(names, m)
	}
	for m := range idx.Builtin {
		names = append(names, m)
	}
	for _, m := range names {
		if s, ok := strings.CutPrefix(m, "ip_vs_"); ok && !notSchedulers[s] {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// offeredSchedulers loads the module of every scheduler candidate and
// returns those the kernel then accepts (ipvs.ProbeSchedulers): the data
// planning checks a Service's scheduler annotation against. Probed once,
// at start: a module that appears later is seen at the next restart.
// Loading is with finit_module, as loadKernelModules does, because the
// image has no modprobe; a scheduler module is a few KB.
func offeredSchedulers(h ipvs.Interface, nodeScheduler string) []string {
	var idx *kmod.Index
	l, err := kmod.New()
	if err == nil {
		idx, err = l.Index()
	}
	if err != nil {
		klog.InfoS("Module tree not readable: probing the in-tree IPVS schedulers only", "err", err)
	}
	candidates := schedulerCandidates(idx)
	if idx != nil {
		for _, s := range candidates {
			if err := l.Load("ip_vs_" + s); err != nil && !errors.Is(err, kmod.ErrNotFound) {
				klog.V(2).InfoS("Could not load IPVS scheduler module", "module", "ip_vs_"+s, "err", err)
			}
		}
	}
	offered, err := ipvs.ProbeSchedulers(h, candidates)
	if err != nil {
		// Services asking for a scheduler by annotation fall back to the
		// node's, with a Warning saying so.
		klog.ErrorS(err, "Probing IPVS schedulers failed; Service scheduler annotations may be refused", "offered", offered)
	}
	if nodeScheduler == "" {
		nodeScheduler = "rr"
	}
	if !slices.Contains(offered, nodeScheduler) {
		// Probed already by setupKernel; never nil, which planning
		// would read as "not probed".
		offered = append(offered, nodeScheduler)
	}
	klog.InfoS("IPVS schedulers this kernel offers, for Service annotations", "schedulers", offered)
	return offered
}
