package app

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
	"k8s.io/utils/ptr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Kind and API version of the configuration file. kube-proxy 1.36 serves
// v1alpha1 only (v1alpha2 exists upstream after 1.36, not in k8s.io/kube-proxy
// v0.36).
const (
	configKind = "KubeProxyConfiguration"
)

var configAPIVersion = v1alpha1.SchemeGroupVersion.String()

// SetDefaults fills in what kube-proxy 1.36 defaults in a v1alpha1
// KubeProxyConfiguration (k8s.io/kubernetes pkg/proxy/apis/config/v1alpha1
// defaults.go), field by field. Note that it leaves ipvs.minSyncPeriod,
// the IPVS timeouts, the conntrack UDP timeouts and ipvs.scheduler alone:
// kube-proxy does not default them (0 and "" mean "immediately", "as the
// kernel has it" and rr).
func SetDefaults(obj *v1alpha1.KubeProxyConfiguration) {
	if obj.BindAddress == "" {
		obj.BindAddress = "0.0.0.0"
	}
	healthzHost, metricsHost := defaultAddresses(obj.BindAddress)
	if obj.HealthzBindAddress == "" {
		obj.HealthzBindAddress = net.JoinHostPort(healthzHost, strconv.Itoa(ProxyHealthzPort))
	} else {
		obj.HealthzBindAddress = appendPortIfNeeded(obj.HealthzBindAddress, ProxyHealthzPort)
	}
	if obj.MetricsBindAddress == "" {
		obj.MetricsBindAddress = net.JoinHostPort(metricsHost, strconv.Itoa(ProxyStatusPort))
	} else {
		obj.MetricsBindAddress = appendPortIfNeeded(obj.MetricsBindAddress, ProxyStatusPort)
	}
	if obj.OOMScoreAdj == nil {
		obj.OOMScoreAdj = ptr.To[int32](kubeProxyOOMScoreAdj)
	}
	if obj.IPTables.SyncPeriod.Duration == 0 {
		obj.IPTables.SyncPeriod = metav1.Duration{Duration: 30 * time.Second}
	}
	if obj.IPTables.MinSyncPeriod.Duration == 0 {
		obj.IPTables.MinSyncPeriod = metav1.Duration{Duration: time.Second}
	}
	if obj.IPTables.LocalhostNodePorts == nil {
		obj.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	if obj.IPVS.SyncPeriod.Duration == 0 {
		obj.IPVS.SyncPeriod = metav1.Duration{Duration: 30 * time.Second}
	}
	if obj.NFTables.SyncPeriod.Duration == 0 {
		obj.NFTables.SyncPeriod = metav1.Duration{Duration: 30 * time.Second}
	}
	if obj.NFTables.MinSyncPeriod.Duration == 0 {
		obj.NFTables.MinSyncPeriod = metav1.Duration{Duration: time.Second}
	}
	if obj.Conntrack.MaxPerCore == nil {
		obj.Conntrack.MaxPerCore = ptr.To[int32](32 * 1024)
	}
	if obj.Conntrack.Min == nil {
		obj.Conntrack.Min = ptr.To[int32](128 * 1024)
	}
	if obj.IPTables.MasqueradeBit == nil {
		obj.IPTables.MasqueradeBit = ptr.To[int32](14)
	}
	if obj.NFTables.MasqueradeBit == nil {
		obj.NFTables.MasqueradeBit = ptr.To[int32](14)
	}
	if obj.Conntrack.TCPEstablishedTimeout == nil {
		obj.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: 24 * time.Hour}
	}
	if obj.Conntrack.TCPCloseWaitTimeout == nil {
		// kubernetes#32551: one hour matches typical server timeouts.
		obj.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: time.Hour}
	}
	if obj.ConfigSyncPeriod.Duration == 0 {
		obj.ConfigSyncPeriod.Duration = 15 * time.Minute
	}
	if obj.ClientConnection.ContentType == "" {
		obj.ClientConnection.ContentType = "application/vnd.kubernetes.protobuf"
	}
	if obj.ClientConnection.QPS == 0 {
		obj.ClientConnection.QPS = 5
	}
	if obj.ClientConnection.Burst == 0 {
		obj.ClientConnection.Burst = 10
	}
	if obj.FeatureGates == nil {
		obj.FeatureGates = map[string]bool{}
	}
	logsapi.SetRecommendedLoggingConfiguration(&obj.Logging)
}

// platformDefaults is kube-proxy's platformApplyDefaults for nftvs: an
// empty mode is ipvs (kube-proxy's would be iptables), an empty
// detectLocalMode is ClusterCIDR.
func platformDefaults(c *v1alpha1.KubeProxyConfiguration) {
	if c.Mode == "" {
		c.Mode = "ipvs"
	}
	if c.DetectLocalMode == "" {
		c.DetectLocalMode = "ClusterCIDR"
	}
}

// defaultAddresses are the default health and metrics hosts for a bind
// address: IPv4 ones unless the bind address is IPv6.
func defaultAddresses(bindAddress string) (healthz, metrics string) {
	if ip := netutils.ParseIPSloppy(bindAddress); ip != nil && ip.To4() == nil {
		return "::", "::1"
	}
	return "0.0.0.0", "127.0.0.1"
}

// appendPortIfNeeded is kube-proxy's proxyutil.AppendPortIfNeeded.
func appendPortIfNeeded(addr string, port int32) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if netutils.ParseIPSloppy(addr) == nil {
		return addr // validation reports it
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}

// LoadConfigFile reads, decodes and defaults a KubeProxyConfiguration.
// Like kube-proxy, unknown or duplicate fields are not fatal for v1alpha1:
// the file is then decoded leniently and the problem is returned as a
// warning. raw is the file as decoded, before defaulting.
func LoadConfigFile(path string) (cfg, raw *v1alpha1.KubeProxyConfiguration, warnings []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read config file: %w", err)
	}
	raw, warnings, err = decodeConfig(data)
	if err != nil {
		return nil, nil, warnings, fmt.Errorf("config file %s: %w", path, err)
	}
	cfg = raw.DeepCopy()
	SetDefaults(cfg)
	return cfg, raw, warnings, nil
}

func decodeConfig(data []byte) (*v1alpha1.KubeProxyConfiguration, []string, error) {
	var warnings []string
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		lenient, lerr := yaml.YAMLToJSON(data)
		if lerr != nil {
			return nil, nil, fmt.Errorf("not valid YAML or JSON: %w", lerr)
		}
		warnings = append(warnings, fmt.Sprintf("using lenient decoding as strict decoding failed: %v", err))
		js = lenient
	}
	var tm metav1.TypeMeta
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return nil, warnings, fmt.Errorf("decode apiVersion and kind: %w", err)
	}
	switch {
	case tm.Kind != configKind:
		return nil, warnings, fmt.Errorf("kind is %q, want %s", tm.Kind, configKind)
	case tm.APIVersion == configAPIVersion:
	case strings.HasPrefix(tm.APIVersion, v1alpha1.GroupName+"/"):
		return nil, warnings, fmt.Errorf("apiVersion %s is not served by kube-proxy 1.36 (nor by nftvs): use %s", tm.APIVersion, configAPIVersion)
	default:
		return nil, warnings, fmt.Errorf("apiVersion is %q, want %s", tm.APIVersion, configAPIVersion)
	}
	cfg := &v1alpha1.KubeProxyConfiguration{}
	strictErrs, err := sigsjson.UnmarshalStrict(js, cfg, sigsjson.DisallowUnknownFields)
	if err != nil {
		return nil, warnings, fmt.Errorf("decode: %w", err)
	}
	if len(strictErrs) > 0 {
		warnings = append(warnings, fmt.Sprintf("using lenient decoding as strict decoding failed: %v", errors.Join(strictErrs...)))
	}
	return cfg, warnings, nil
}

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

	// featureGate is kube-proxy's feature gate, set from FeatureGates.
	featureGate featuregate.MutableVersionedFeatureGate
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
	out.featureGate = gate
	out.Warnings = append(out.Warnings, gateWarnings...)
	slices.Sort(out.Warnings)

	var errs ConfigFieldErrors
	if gateErr != nil {
		errs = append(errs, ConfigFieldError{Field: "featureGates", Detail: gateErr.Error()})
	} else {
		errs = Validate(cfg, gate)
	}
	errs = append(errs, validateOptions(o)...)
	if len(errs) > 0 {
		return out, errs.render(o.ConfigFile)
	}
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
