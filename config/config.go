package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// Config is the resolved configuration the command runs with.
type Config struct {
	// KubeProxy is the effective, defaulted configuration (served on
	// /configz, written by --write-config-to).
	KubeProxy *v1alpha1.KubeProxyConfiguration
	// File is the --config file, or "" when the flags configure.
	File string

	Master           string
	Cleanup          bool
	InitOnly         bool
	WriteConfigTo    string
	Companion        string
	DrainTimeout     time.Duration
	ConntrackCleaner bool
	// MaxVirtualServers and MaxSourceRanges bound one Service's fan-out.
	MaxVirtualServers, MaxSourceRanges int

	// TakeoverKubeProxy removes kube-proxy's IPVS-mode leftovers before
	// the first sync (--takeover-kube-proxy).
	TakeoverKubeProxy bool

	// ServiceMetrics serves IPVS's counters per Service port
	// (--ipvs-service-metrics), and per endpoint with
	// ServiceMetricsRealServers.
	ServiceMetrics, ServiceMetricsRealServers bool

	// ExplainSocket is where `nftvs explain` reads the proxier's view
	// (--explain-socket; "" is off).
	ExplainSocket string

	// Warnings are things the user should know: flags or fields that do
	// not apply, or that kube-proxy would also ignore.
	Warnings []string

	// FeatureGate is kube-proxy's feature gate, set from FeatureGates.
	FeatureGate featuregate.MutableVersionedFeatureGate

	// Addresses are KubeProxy's addresses and CIDRs, parsed once (by
	// validation).
	Addresses
	// MasqueradeMark is the packet mark of --iptables-masquerade-bit.
	MasqueradeMark uint32
}

// Complete turns the parsed command line (and the --config file) into the
// configuration, validated. Flags set on the command line override the
// file only where kube-proxy lets them (--hostname-override and logging);
// the others are reported in Warnings. Errors name the flag, or the field
// of the file.
func (o *Options) Complete() (*Config, error) {
	fs := o.fs
	if fs == nil {
		return nil, errors.New("internal error: flags not registered")
	}
	out := &Config{
		File:              o.ConfigFile,
		Master:            o.Master,
		Cleanup:           o.Cleanup,
		InitOnly:          o.InitOnly,
		WriteConfigTo:     o.WriteConfigTo,
		Companion:         o.Companion,
		DrainTimeout:      o.GracefulTerminationPeriod,
		ConntrackCleaner:  o.ConntrackCleaner,
		TakeoverKubeProxy: o.TakeoverKubeProxy,
		MaxVirtualServers: o.MaxVirtualServers,
		MaxSourceRanges:   o.MaxSourceRanges,

		ServiceMetrics:            o.ServiceMetrics,
		ServiceMetricsRealServers: o.ServiceMetricsRealServers,
		ExplainSocket:             o.ExplainSocket,
	}
	if o.MaxVirtualServers < 1 || o.MaxSourceRanges < 1 {
		return nil, fmt.Errorf("--max-virtual-servers-per-service (%d) and --max-source-range-elements-per-service (%d) must be at least 1", o.MaxVirtualServers, o.MaxSourceRanges)
	}
	var cfg *v1alpha1.KubeProxyConfiguration
	if o.ConfigFile != "" {
		fileCfg, raw, warnings, err := LoadConfigFile(o.ConfigFile)
		out.Warnings = append(out.Warnings, warnings...)
		if err != nil {
			return out, err
		}
		if err := copyLoggingFlags(fs, &fileCfg.Logging); err != nil {
			return out, err
		}
		cfg = fileCfg
		for _, name := range configFlags {
			if f := fs.Lookup(name); f != nil && f.Changed {
				out.Warnings = append(out.Warnings, fmt.Sprintf("flag --%s is ignored because --config is given (kube-proxy ignores it too): set it in %s", name, o.ConfigFile))
			}
		}
		out.Warnings = append(out.Warnings, otherModeFields(raw)...)
	} else {
		cfg = o.config.DeepCopy()
		cfg.HealthzBindAddress = addressFromDeprecatedFlags(cfg.HealthzBindAddress, o.HealthzPort)
		cfg.MetricsBindAddress = addressFromDeprecatedFlags(cfg.MetricsBindAddress, o.MetricsPort)
		for name, why := range otherModeFlags {
			if f := fs.Lookup(name); f != nil && f.Changed {
				out.Warnings = append(out.Warnings, fmt.Sprintf("flag --%s does not apply: %s", name, why))
			}
		}
	}
	if o.HostnameOverride != "" {
		h := strings.TrimSpace(o.HostnameOverride)
		if h == "" {
			return out, errors.New("--hostname-override: empty hostname-override is invalid")
		}
		cfg.HostnameOverride = strings.ToLower(h)
	}
	if cfg.Mode == "" && o.ConfigFile != "" {
		out.Warnings = append(out.Warnings, "mode is empty (kube-proxy would run iptables mode): nftvs runs IPVS mode with the ipvs section")
	}
	platformDefaults(cfg)
	out.KubeProxy = cfg
	gate, gateWarnings, gateErr := newFeatureGate(cfg.FeatureGates)
	out.FeatureGate = gate
	out.Warnings = append(out.Warnings, gateWarnings...)
	slices.Sort(out.Warnings)

	var errs ConfigFieldErrors
	if gateErr != nil {
		errs = append(errs, ConfigFieldError{Field: "featureGates", Detail: gateErr.Error()})
	} else {
		out.Addresses, errs = validate(cfg, gate)
	}
	errs = append(errs, validateOptions(o)...)
	if len(errs) > 0 {
		return out, errs.render(o.ConfigFile)
	}
	out.MasqueradeMark = 1 << uint(*cfg.IPTables.MasqueradeBit)
	return out, nil
}

// addressFromDeprecatedFlags is kube-proxy's: port 0 disables the
// server, otherwise the port is appended when the address has none.
func addressFromDeprecatedFlags(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	return appendPortIfNeeded(addr, port)
}

// copyLoggingFlags gives logging flags set on the command line priority
// over the file, as kube-proxy's copyLogsFromFlags does (vmodule items of
// the flags come first).
func copyLoggingFlags(from *pflag.FlagSet, to *logsapi.LoggingConfiguration) error {
	var clone pflag.FlagSet
	logsapi.AddFlags(to, &clone)
	vmodule := to.VModule
	to.VModule = nil
	var err error
	clone.VisitAll(func(f *pflag.Flag) {
		src := from.Lookup(f.Name)
		if err != nil || src == nil || !src.Changed {
			return
		}
		if serr := f.Value.Set(src.Value.String()); serr != nil {
			err = fmt.Errorf("--%s: %w", f.Name, serr)
		}
	})
	to.VModule = append(to.VModule, vmodule...)
	return err
}

// otherModeFields lists fields of the file that only other proxy modes
// (or other platforms) use, set in raw (the file before defaulting).
func otherModeFields(raw *v1alpha1.KubeProxyConfiguration) []string {
	var out []string
	warn := func(field, why string) {
		out = append(out, fmt.Sprintf("field %s does not apply: %s", field, why))
	}
	if raw.IPTables.SyncPeriod.Duration != 0 {
		warn("iptables.syncPeriod", "iptables mode only; nftvs uses ipvs.syncPeriod")
	}
	if raw.IPTables.MinSyncPeriod.Duration != 0 {
		warn("iptables.minSyncPeriod", "iptables mode only; nftvs uses ipvs.minSyncPeriod")
	}
	if raw.IPTables.LocalhostNodePorts != nil {
		warn("iptables.localhostNodePorts", "iptables mode only; localhost NodePorts are never allowed in IPVS mode")
	}
	if raw.NFTables.MasqueradeBit != nil || raw.NFTables.MasqueradeAll || raw.NFTables.SyncPeriod.Duration != 0 || raw.NFTables.MinSyncPeriod.Duration != 0 {
		warn("nftables", "nftables mode only; IPVS mode uses iptables.masqueradeBit, iptables.masqueradeAll and the ipvs section")
	}
	if raw.Winkernel != (v1alpha1.KubeProxyWinkernelConfiguration{}) || raw.WindowsRunAsService {
		warn("winkernel", "Windows only")
	}
	if raw.PortRange != "" {
		warn("portRange", "it has had no effect since kube-proxy's userspace mode was removed")
	}
	if raw.ShowHiddenMetricsForVersion != "" {
		warn("showHiddenMetricsForVersion", "nftvs hides no metrics")
	}
	return out
}
