package config

import (
	"github.com/nftvs/nftvs/explain"
	"strings"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/nftvs/nftvs/proxier"
)

// Ports kube-proxy serves on by default (k8s.io/kubernetes/pkg/cluster/ports).
const (
	ProxyHealthzPort = 10256
	ProxyStatusPort  = 10249
)

// kubeProxyOOMScoreAdj is kube-proxy's default --oom-score-adj
// (k8s.io/kubernetes/pkg/kubelet/qos.KubeProxyOOMScoreAdj).
const kubeProxyOOMScoreAdj = -999

// Companion is the only companion nftvs implements: one nftables table in
// place of kube-proxy's iptables and ipset.
const Companion = "nft"

// DefaultGracefulTerminationPeriod 0 keeps a draining real server
// (weight 0) until its last connection ends, as kube-proxy does; a
// positive period bounds the drain.
const DefaultGracefulTerminationPeriod = 0

// Options are the command line: kube-proxy's flags, bound to a
// KubeProxyConfiguration as kube-proxy binds them, and nftvs's own.
type Options struct {
	ConfigFile    string
	WriteConfigTo string
	Cleanup       bool
	InitOnly      bool
	Master        string
	// HostnameOverride overrides the file's hostnameOverride, as in
	// kube-proxy.
	HostnameOverride string
	// HealthzPort and MetricsPort are the deprecated --healthz-port and
	// --metrics-port: used only without --config.
	HealthzPort, MetricsPort int32
	Version                  string
	Help                     bool

	// nftvs's own.
	Companion                 string
	GracefulTerminationPeriod time.Duration
	ConntrackCleaner          bool
	TakeoverKubeProxy         bool
	ServiceMetrics            bool
	ServiceMetricsRealServers bool
	ExplainSocket             string
	// MaxVirtualServers and MaxSourceRanges are the per-Service bounds
	// (--max-virtual-servers-per-service,
	// --max-source-range-elements-per-service).
	MaxVirtualServers, MaxSourceRanges int

	// config is what the configuration flags set; a --config file
	// replaces it.
	config *v1alpha1.KubeProxyConfiguration
	fs     *pflag.FlagSet
}

// NewOptions returns the options with kube-proxy's defaults.
func NewOptions() *Options {
	return &Options{
		config:                    flagDefaults(),
		HealthzPort:               ProxyHealthzPort,
		MetricsPort:               ProxyStatusPort,
		Companion:                 Companion,
		GracefulTerminationPeriod: DefaultGracefulTerminationPeriod,
		ConntrackCleaner:          true,
		TakeoverKubeProxy:         true,
		ExplainSocket:             explain.DefaultSocket,
		MaxVirtualServers:         proxier.DefaultMaxVirtualServers,
		MaxSourceRanges:           proxier.DefaultMaxSourceRanges,
	}
}

// flagDefaults is the configuration the flags start from: the defaulted
// v1alpha1 configuration, as kube-proxy's flags take their defaults from
// it. kube-proxy's --ipvs-min-sync-period and --ipvs-sync-period take
// theirs from the mode-independent internal configuration, which is
// defaulted from the iptables section (1s and 30s), while a file's
// ipvs.minSyncPeriod is not defaulted (0: sync on every change).
func flagDefaults() *v1alpha1.KubeProxyConfiguration {
	c := &v1alpha1.KubeProxyConfiguration{}
	SetDefaults(c)
	c.IPVS.MinSyncPeriod = c.IPTables.MinSyncPeriod
	return c
}

// NewFlagSet returns the command's flag set, with every flag registered.
func (o *Options) NewFlagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("nftvs", pflag.ContinueOnError)
	// kube-proxy (through component-base/cli) accepts "_" for "-".
	fs.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-"))
	})
	fs.SortFlags = true
	o.AddFlags(fs)
	return fs
}

// ignoredWithConfig ends the help of flags a --config file replaces.
const ignoredWithConfig = " This parameter is ignored if a config file is specified by --config."

// AddFlags registers kube-proxy 1.36's flags (cmd/kube-proxy/app/options.go,
// same names, types and defaults) and nftvs's own on fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.fs = fs
	o.addGeneralFlags(fs)
	o.addIPTablesAndIPVSFlags(fs)
	o.addLocalTrafficAndConntrackFlags(fs)
	o.addLoggingAndCompatibilityFlags(fs)
	o.addOwnFlags(fs)
}

// addGeneralFlags registers the configuration file, API client, node and
// server flags.
func (o *Options) addGeneralFlags(fs *pflag.FlagSet) {
	c := o.config
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "The path to the configuration file (a KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1, mode ipvs).")
	fs.StringVar(&o.WriteConfigTo, "write-config-to", o.WriteConfigTo, "If set, write the default configuration values to this file and exit.")
	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "If true, remove what nftvs programmed (its nftables table, kube-ipvs0, and every IPVS virtual server outside --ipvs-exclude-cidrs) and exit.")
	fs.Var(mapStringBool{&c.FeatureGates, new(bool)}, "feature-gates", "A set of key=value pairs that describe feature gates of kube-proxy 1.36, validated as kube-proxy validates them. The logging and client-go gates apply; AllowServiceExternalIPs=false, ComponentFlagz=true, ComponentStatusz=true and NativeHistograms=true are not implemented; gates kube-proxy does not read are accepted with a warning."+ignoredWithConfig)

	fs.StringVar(&c.ClientConnection.Kubeconfig, "kubeconfig", c.ClientConnection.Kubeconfig, "Path to kubeconfig file with authorization information (the master location can be overridden by the master flag).")
	fs.StringVar(&o.Master, "master", o.Master, "The address of the Kubernetes API server (overrides any value in kubeconfig)")
	fs.StringVar(&c.ClientConnection.ContentType, "kube-api-content-type", c.ClientConnection.ContentType, "Content type of requests sent to apiserver.")
	fs.Int32Var(&c.ClientConnection.Burst, "kube-api-burst", c.ClientConnection.Burst, "Burst to use while talking with kubernetes apiserver")
	fs.Float32Var(&c.ClientConnection.QPS, "kube-api-qps", c.ClientConnection.QPS, "QPS to use while talking with kubernetes apiserver")

	fs.StringVar(&o.HostnameOverride, "hostname-override", o.HostnameOverride, "If non-empty, will be used as the name of the Node that nftvs is running on. If unset, the node name is assumed to be the same as the node's hostname.")
	fs.Var(ipVar{&c.BindAddress}, "bind-address", "Overrides nftvs's idea of what its node's primary IP is. Note that the name is a historical artifact, and nftvs does not actually bind any sockets to this IP."+ignoredWithConfig)
	fs.Var(ipPortVar{&c.HealthzBindAddress}, "healthz-bind-address", "The IP address and port for the health check server to serve on, defaulting to \"0.0.0.0:10256\"."+ignoredWithConfig)
	fs.Var(ipPortVar{&c.MetricsBindAddress}, "metrics-bind-address", "The IP address and port for the metrics server to serve on, defaulting to \"127.0.0.1:10249\". (Set to \"0.0.0.0:10249\" / \"[::]:10249\" to bind on all interfaces.)"+ignoredWithConfig)
	fs.BoolVar(&c.BindAddressHardFail, "bind-address-hard-fail", c.BindAddressHardFail, "If true nftvs will treat failure to bind to a port as fatal and exit")
	fs.BoolVar(&c.EnableProfiling, "profiling", c.EnableProfiling, "If true enables profiling via web interface on /debug/pprof handler of the metrics server."+ignoredWithConfig)
	fs.StringVar(&c.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", c.ShowHiddenMetricsForVersion, "Accepted for compatibility; nftvs hides no metrics."+ignoredWithConfig)
	fs.BoolVar(&o.InitOnly, "init-only", o.InitOnly, "If true, perform any initialization steps that must be done with full root privileges (sysctls, IPVS timeouts), and then exit.")
	fs.Var(stringValue[v1alpha1.ProxyMode]{&c.Mode, "ProxyMode"}, "proxy-mode", "Which proxy mode to use: nftvs implements 'ipvs' only (empty means ipvs)."+ignoredWithConfig)
}

// addIPTablesAndIPVSFlags registers the iptables (masquerade) and IPVS
// flags.
func (o *Options) addIPTablesAndIPVSFlags(fs *pflag.FlagSet) {
	c := o.config
	fs.Int32Var(c.IPTables.MasqueradeBit, "iptables-masquerade-bit", *c.IPTables.MasqueradeBit, "The bit of the fwmark space to mark packets requiring SNAT with. Must be within the range [0, 31].")
	fs.BoolVar(&c.IPTables.MasqueradeAll, "masquerade-all", c.IPTables.MasqueradeAll, "SNAT all traffic sent via Service cluster IPs. This may be required with some CNI plugins.")
	fs.BoolVar(c.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", *c.IPTables.LocalhostNodePorts, "Applies only to kube-proxy's iptables mode: accepted and ignored (localhost NodePorts are never allowed in IPVS mode).")
	fs.DurationVar(&c.IPTables.SyncPeriod.Duration, "iptables-sync-period", c.IPTables.SyncPeriod.Duration, "Applies only to kube-proxy's iptables mode: accepted and ignored (see --ipvs-sync-period).")
	fs.DurationVar(&c.IPTables.MinSyncPeriod.Duration, "iptables-min-sync-period", c.IPTables.MinSyncPeriod.Duration, "Applies only to kube-proxy's iptables mode: accepted and ignored (see --ipvs-min-sync-period).")

	fs.DurationVar(&c.IPVS.SyncPeriod.Duration, "ipvs-sync-period", c.IPVS.SyncPeriod.Duration, "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0.")
	fs.DurationVar(&c.IPVS.MinSyncPeriod.Duration, "ipvs-min-sync-period", c.IPVS.MinSyncPeriod.Duration, "The minimum period between IPVS rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate IPVS resync.")
	fs.StringVar(&c.IPVS.Scheduler, "ipvs-scheduler", c.IPVS.Scheduler, "The ipvs scheduler type (rr if empty).")
	fs.StringSliceVar(&c.IPVS.ExcludeCIDRs, "ipvs-exclude-cidrs", c.IPVS.ExcludeCIDRs, "A comma-separated list of CIDRs which the ipvs proxier should not touch when cleaning up IPVS rules.")
	fs.BoolVar(&c.IPVS.StrictARP, "ipvs-strict-arp", c.IPVS.StrictARP, "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2")
	fs.DurationVar(&c.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", c.IPVS.TCPTimeout.Duration, "The timeout for idle IPVS TCP connections, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&c.IPVS.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", c.IPVS.TCPFinTimeout.Duration, "The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&c.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", c.IPVS.UDPTimeout.Duration, "The timeout for IPVS UDP packets, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
}

// addLocalTrafficAndConntrackFlags registers local traffic detection,
// node port addresses, OOM score, conntrack and the deprecated port
// flags.
func (o *Options) addLocalTrafficAndConntrackFlags(fs *pflag.FlagSet) {
	c := o.config
	fs.Var(stringValue[v1alpha1.LocalMode]{&c.DetectLocalMode, "LocalMode"}, "detect-local-mode", "Mode to use to detect local traffic: ClusterCIDR (default), NodeCIDR, BridgeInterface or InterfaceNamePrefix."+ignoredWithConfig)
	fs.StringVar(&c.DetectLocal.BridgeInterface, "pod-bridge-interface", c.DetectLocal.BridgeInterface, "A bridge interface name. When --detect-local-mode is set to BridgeInterface, nftvs will consider traffic to be local if it originates from this bridge.")
	fs.StringVar(&c.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", c.DetectLocal.InterfaceNamePrefix, "An interface name prefix. When --detect-local-mode is set to InterfaceNamePrefix, nftvs will consider traffic to be local if it originates from any interface whose name begins with this prefix.")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", c.ClusterCIDR, "The CIDR range of the pods in the cluster. (For dual-stack clusters, this can be a comma-separated dual-stack pair of CIDR ranges.). When --detect-local-mode is set to ClusterCIDR, nftvs will consider traffic to be local if its source IP is in this range. (Otherwise it is not used.)"+ignoredWithConfig)
	fs.StringSliceVar(&c.NodePortAddresses, "nodeport-addresses", c.NodePortAddresses, "A list of CIDR ranges that contain valid node IPs, or alternatively, the single string 'primary'. If set to a list of CIDRs, connections to NodePort services will only be accepted on node IPs in one of the indicated ranges. If set to 'primary', NodePort services will only be accepted on the node's primary IP(s) according to the Node object. If unset, NodePort connections will be accepted on all local IPs."+ignoredWithConfig)

	fs.Int32Var(c.OOMScoreAdj, "oom-score-adj", *c.OOMScoreAdj, "The oom-score-adj value for the nftvs process. Values must be within the range [-1000, 1000]."+ignoredWithConfig)
	fs.Int32Var(c.Conntrack.MaxPerCore, "conntrack-max-per-core", *c.Conntrack.MaxPerCore, "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(c.Conntrack.Min, "conntrack-min", *c.Conntrack.Min, "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	fs.DurationVar(&c.Conntrack.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", c.Conntrack.TCPEstablishedTimeout.Duration, "Idle timeout for established TCP connections (0 to leave as-is)")
	fs.DurationVar(&c.Conntrack.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", c.Conntrack.TCPCloseWaitTimeout.Duration, "NAT timeout for TCP connections in the CLOSE_WAIT state")
	fs.BoolVar(&c.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", c.Conntrack.TCPBeLiberal, "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1 (forwarded packets of conntrack state invalid are then not dropped)")
	fs.DurationVar(&c.Conntrack.UDPTimeout.Duration, "conntrack-udp-timeout", c.Conntrack.UDPTimeout.Duration, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")
	fs.DurationVar(&c.Conntrack.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", c.Conntrack.UDPStreamTimeout.Duration, "Idle timeout for ASSURED UDP connections (0 to leave as-is)")
	fs.DurationVar(&c.ConfigSyncPeriod.Duration, "config-sync-period", c.ConfigSyncPeriod.Duration, "How often configuration from the apiserver is refreshed.  Must be greater than 0.")

	fs.Int32Var(&o.HealthzPort, "healthz-port", o.HealthzPort, "The port to bind the health check server. Use 0 to disable.")
	_ = fs.MarkDeprecated("healthz-port", "This flag is deprecated and will be removed in a future release. Please use --healthz-bind-address instead.")
	fs.Int32Var(&o.MetricsPort, "metrics-port", o.MetricsPort, "The port to bind the metrics server. Use 0 to disable.")
	_ = fs.MarkDeprecated("metrics-port", "This flag is deprecated and will be removed in a future release. Please use --metrics-bind-address instead.")
}

// addLoggingAndCompatibilityFlags registers component-base's logging and
// version flags, and the flags kube-proxy gets from cAdvisor.
func (o *Options) addLoggingAndCompatibilityFlags(fs *pflag.FlagSet) {
	c := o.config
	// Logging, as kube-proxy (component-base logs API): -v, --vmodule,
	// --logging-format (text, json), --log-flush-frequency, --log-text-*,
	// --log-json-*.
	logsapi.AddFlags(&c.Logging, fs)

	o.Version = "false"
	fs.Var(versionValue{&o.Version}, "version", "--version, --version=raw prints version information and quits")
	fs.Lookup("version").NoOptDefVal = "true"
	fs.BoolVarP(&o.Help, "help", "h", false, "help for nftvs")
	// kube-proxy gets these from cAdvisor through the Go flag set.
	fs.String("boot-id-file", "/proc/sys/kernel/random/boot_id", "Accepted for compatibility; not used by nftvs.")
	fs.String("machine-id-file", "/etc/machine-id,/var/lib/dbus/machine-id", "Accepted for compatibility; not used by nftvs.")
}

// addOwnFlags registers nftvs's own flags.
func (o *Options) addOwnFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Companion, "companion", o.Companion, "What replaces kube-proxy's iptables and ipset companions of IPVS: only \"nft\" (one nftables table, programmed over netlink).")
	fs.DurationVar(&o.GracefulTerminationPeriod, "ipvs-graceful-termination-period", o.GracefulTerminationPeriod, "The longest time a real server of a not-ready or terminating endpoint is kept at weight 0 for its connections before it is removed. 0 (the default) keeps it until it has no connection left, as kube-proxy does.")
	fs.BoolVar(&o.TakeoverKubeProxy, "takeover-kube-proxy", o.TakeoverKubeProxy, "At start, before the first sync, remove what kube-proxy's IPVS mode left in iptables-nft (its KUBE-* chains and the jumps to them) and its ipsets, and nothing else, so that nftvs takes over a node from kube-proxy without dropping connections: the IPVS virtual servers and kube-ipvs0 are adopted in place. Safe to repeat. With false, they are left in place, and a Warning Event on the Node and a log line name them.")
	fs.BoolVar(&o.ServiceMetrics, "ipvs-service-metrics", o.ServiceMetrics, "Serve IPVS's traffic counters per Service port on the metrics endpoint (nftvs_service_*: active and inactive connections, connections, packets and bytes in and out), labelled namespace, service and port. Off by default: 7 series per Service port.")
	fs.BoolVar(&o.ServiceMetricsRealServers, "ipvs-service-metrics-real-servers", o.ServiceMetricsRealServers, "With --ipvs-service-metrics, also serve each endpoint's active and inactive connections (nftvs_service_real_server_*, label real_server): 2 series per endpoint of every Service port.")
	fs.StringVar(&o.ExplainSocket, "explain-socket", o.ExplainSocket, "The unix socket (mode 0600) where nftvs serves its view of each Service to `nftvs explain`, run in the same pod. Empty: not served.")
	fs.IntVar(&o.MaxVirtualServers, "max-virtual-servers-per-service", o.MaxVirtualServers, "The most IPVS virtual servers one Service may ask every node for (ports × (ClusterIPs, external IPs, load-balancer IPs and node port addresses)). A Service asking for more is not programmed at all, with a ServiceTooLarge Warning Event; every other Service keeps syncing.")
	fs.IntVar(&o.MaxSourceRanges, "max-source-range-elements-per-service", o.MaxSourceRanges, "The most loadBalancerSourceRanges elements one Service may ask every node for (load-balancer IPs × ports × ranges). A Service asking for more is not programmed at all, with a ServiceTooLarge Warning Event.")
	fs.BoolVar(&o.ConntrackCleaner, "conntrack-cleaner", o.ConntrackCleaner, "Delete the conntrack entries (TCP, UDP and SCTP) of flows to endpoints that are gone after each sync, so clients reusing source ports do not reach a removed pod (kubernetes#81775).")
}

// configFlags are the flags bound to the KubeProxyConfiguration: with
// --config, kube-proxy replaces everything they set by the file (and so
// does nftvs), except the logging flags, which override the file.
var configFlags = []string{
	"feature-gates", "kubeconfig", "kube-api-content-type", "kube-api-burst", "kube-api-qps",
	"bind-address", "healthz-bind-address", "metrics-bind-address", "bind-address-hard-fail",
	"profiling", "show-hidden-metrics-for-version", "proxy-mode",
	"iptables-masquerade-bit", "masquerade-all", "iptables-localhost-nodeports",
	"iptables-sync-period", "iptables-min-sync-period",
	"ipvs-sync-period", "ipvs-min-sync-period", "ipvs-scheduler", "ipvs-exclude-cidrs",
	"ipvs-strict-arp", "ipvs-tcp-timeout", "ipvs-tcpfin-timeout", "ipvs-udp-timeout",
	"detect-local-mode", "pod-bridge-interface", "pod-interface-name-prefix", "cluster-cidr",
	"nodeport-addresses", "oom-score-adj",
	"conntrack-max-per-core", "conntrack-min", "conntrack-tcp-timeout-established",
	"conntrack-tcp-timeout-close-wait", "conntrack-tcp-be-liberal", "conntrack-udp-timeout",
	"conntrack-udp-timeout-stream", "config-sync-period",
	// Deprecated; used to build the bind addresses only without --config.
	"healthz-port", "metrics-port",
}

// otherModeFlags are kube-proxy flags that do nothing in IPVS mode: they
// are accepted, so that a DaemonSet's arguments keep working, and logged.
var otherModeFlags = map[string]string{
	"iptables-sync-period":            "applies to kube-proxy's iptables mode only; nftvs uses --ipvs-sync-period",
	"iptables-min-sync-period":        "applies to kube-proxy's iptables mode only; nftvs uses --ipvs-min-sync-period",
	"iptables-localhost-nodeports":    "applies to kube-proxy's iptables mode only; localhost NodePorts are never allowed in IPVS mode",
	"show-hidden-metrics-for-version": "nftvs hides no metrics",
	"boot-id-file":                    "nftvs does not use it",
	"machine-id-file":                 "nftvs does not use it",
}
