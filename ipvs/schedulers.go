package ipvs

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// KernelSchedulers are the schedulers Linux ships (net/netfilter/ipvs,
// ip_vs_<name>.c), a superset of kube-proxy's Schedulers: fo (weighted
// failover), ovf (weighted overflow) and twos (weighted random twos
// choice) exist since 4.x/5.x kernels. A node may offer fewer (a module
// not built) or others (an out-of-tree module): ProbeSchedulers says which.
var KernelSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}

// SchedulerFlag is one scheduler flag as ipvsadm names it
// (ipvsadm -b sh-port): the kernel has three generic bits
// (IP_VS_SVC_F_SCHED1..3), and each scheduler says what they mean.
type SchedulerFlag struct {
	Name      string
	Scheduler string // the only scheduler the flag means something to
	Flag      Flags
}

// SchedulerFlagNames are the flags that mean something to a scheduler
// in Linux: sh and mh read flag-1 as "fallback" (skip a real server of
// weight 0 or overloaded, rehash to another) and flag-2 as "port" (hash the
// source port too, so clients behind one NAT address spread). No in-tree
// scheduler reads flag-3.
var SchedulerFlagNames = []SchedulerFlag{
	{"sh-fallback", "sh", FlagSched1},
	{"sh-port", "sh", FlagSched2},
	{"mh-fallback", "mh", FlagSched1},
	{"mh-port", "mh", FlagSched2},
}

// ParseSchedulerFlags reads a comma-separated list of flags for
// scheduler ("sh-port,sh-fallback"; spaces around names are ignored, an
// empty list or "none" is no flag). A flag of another scheduler, or one
// that is not a flag at all, is an error naming it.
func ParseSchedulerFlags(scheduler, list string) (Flags, error) {
	var f Flags
	list = strings.TrimSpace(list)
	if list == "" || list == "none" {
		return 0, nil
	}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.IndexFunc(SchedulerFlagNames, func(s SchedulerFlag) bool { return s.Name == name })
		if i < 0 {
			return 0, fmt.Errorf("%q is not an IPVS scheduler flag (known: %s)", name, flagNames())
		}
		if sf := SchedulerFlagNames[i]; sf.Scheduler != scheduler {
			return 0, fmt.Errorf("flag %q is for scheduler %s, not %s", name, sf.Scheduler, scheduler)
		}
		f |= SchedulerFlagNames[i].Flag
	}
	return f, nil
}

func flagNames() string {
	var out []string
	for _, s := range SchedulerFlagNames {
		out = append(out, s.Name)
	}
	return strings.Join(out, ", ")
}

// SchedulerFlagsString spells the scheduler flags of f as ipvsadm does for
// scheduler ("sh-fallback,sh-port"); flags that mean nothing to the
// scheduler are spelled flag-N.
func SchedulerFlagsString(scheduler string, f Flags) string {
	var out []string
	for i, bit := range []Flags{FlagSched1, FlagSched2, FlagSched3} {
		if f&bit == 0 {
			continue
		}
		name := fmt.Sprintf("flag-%d", i+1)
		for _, s := range SchedulerFlagNames {
			if s.Scheduler == scheduler && s.Flag == bit {
				name = s.Name
			}
		}
		out = append(out, name)
	}
	return strings.Join(out, ",")
}

// ProbeSchedulers returns those of candidates that the kernel accepts: a
// virtual server with that scheduler can be created (ProbeScheduler). A
// scheduler whose module cannot be loaded is left out; an error that is
// not about the scheduler (IPVS not answering, probe ports taken) is
// returned.
func ProbeSchedulers(h Interface, candidates []string) ([]string, error) {
	var out []string
	for _, s := range candidates {
		err := ProbeScheduler(h, s)
		var missing *SchedulerMissingError
		switch {
		case err == nil:
			out = append(out, s)
		case errors.As(err, &missing):
		default:
			return out, err
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
