package ipvs

import (
	"slices"
	"strings"
	"testing"
)

func TestParseSchedulerFlags(t *testing.T) {
	for _, tc := range []struct {
		sched, list string
		want        Flags
		err         string
	}{
		{"sh", "sh-port", FlagSched2, ""},
		{"sh", " sh-fallback , sh-port ", FlagSched1 | FlagSched2, ""},
		{"mh", "mh-port", FlagMHPort, ""},
		{"mh", "none", 0, ""},
		{"mh", "", 0, ""},
		{"sh", "mh-port", 0, "for scheduler mh, not sh"},
		{"rr", "sh-port", 0, "not rr"},
		{"sh", "flag-2", 0, "not an IPVS scheduler flag"},
	} {
		got, err := ParseSchedulerFlags(tc.sched, tc.list)
		if tc.err == "" && (err != nil || got != tc.want) || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseSchedulerFlags(%q, %q) = %v, %v; want %v, %q", tc.sched, tc.list, got, err, tc.want, tc.err)
		}
	}
	if got := SchedulerFlagsString("sh", FlagSched1|FlagSched2|FlagPersistent); got != "sh-fallback,sh-port" {
		t.Errorf("SchedulerFlagsString = %q", got)
	}
	if got := SchedulerFlagsString("rr", FlagSched3); got != "flag-3" {
		t.Errorf("SchedulerFlagsString = %q", got)
	}
}

func TestProbeSchedulers(t *testing.T) {
	f := NewFake()
	f.MissingSchedulers = map[string]bool{"twos": true, "ovf": true}
	got, err := ProbeSchedulers(f, KernelSchedulers)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(got, "twos") || slices.Contains(got, "ovf") || !slices.Contains(got, "mh") || len(got) != len(KernelSchedulers)-2 {
		t.Errorf("offered %v", got)
	}
	if s := f.String(); s != "" {
		t.Errorf("probes left virtual servers:\n%s", s)
	}
}
