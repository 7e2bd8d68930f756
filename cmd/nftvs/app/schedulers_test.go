package app

import (
	"slices"
	"testing"

	"github.com/nftvs/nftvs/internal/kmod"
	"github.com/nftvs/nftvs/ipvs"
)

func TestSchedulerCandidates(t *testing.T) {
	idx := &kmod.Index{
		Modules: map[string]kmod.Module{"ip_vs": {}, "ip_vs_ftp": {}, "ip_vs_pe_sip": {}, "ip_vs_rr": {}, "ip_vs_custom": {}, "nf_nat": {}},
		Builtin: map[string]bool{"ip_vs_builtin1": true},
	}
	got := schedulerCandidates(idx)
	for _, want := range append([]string{"custom", "builtin1"}, ipvs.KernelSchedulers...) {
		if !slices.Contains(got, want) {
			t.Errorf("candidates %v lack %s", got, want)
		}
	}
	for _, not := range []string{"", "ftp", "pe_sip", "nf_nat"} {
		if slices.Contains(got, not) {
			t.Errorf("candidates %v hold %q", got, not)
		}
	}
	if got := schedulerCandidates(nil); !slices.Equal(got, func() []string { s := slices.Clone(ipvs.KernelSchedulers); slices.Sort(s); return s }()) {
		t.Errorf("without a module tree: %v", got)
	}
}

func TestOfferedSchedulersNeverNil(t *testing.T) {
	f := ipvs.NewFake()
	f.MissingSchedulers = map[string]bool{}
	for _, s := range ipvs.KernelSchedulers {
		f.MissingSchedulers[s] = true
	}
	delete(f.MissingSchedulers, "wlc")
	got := offeredSchedulers(f, "wlc")
	if !slices.Equal(got, []string{"wlc"}) {
		t.Errorf("offered %v, want [wlc]", got)
	}
}
