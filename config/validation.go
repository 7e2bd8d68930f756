package config

import (
	"fmt"
	"github.com/nftvs/nftvs/proxier"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// ConfigFieldError is one invalid setting, named by its field in the
// KubeProxyConfiguration file (JSON path, "ipvs.syncPeriod") and, when the
// command line set it, by its flag.
type ConfigFieldError struct {
	Field  string
	Value  any // nil: not shown
	Detail string
}

// flagOfField maps configuration fields to the flags that set them.
var flagOfField = map[string]string{
	"featureGates":                     "feature-gates",
	"clientConnection.burst":           "kube-api-burst",
	"clientConnection.qps":             "kube-api-qps",
	"bindAddress":                      "bind-address",
	"healthzBindAddress":               "healthz-bind-address",
	"metricsBindAddress":               "metrics-bind-address",
	"mode":                             "proxy-mode",
	"iptables.masqueradeBit":           "iptables-masquerade-bit",
	"ipvs.syncPeriod":                  "ipvs-sync-period",
	"ipvs.minSyncPeriod":               "ipvs-min-sync-period",
	"ipvs.scheduler":                   "ipvs-scheduler",
	"ipvs.excludeCIDRs":                "ipvs-exclude-cidrs",
	"ipvs.tcpTimeout":                  "ipvs-tcp-timeout",
	"ipvs.tcpFinTimeout":               "ipvs-tcpfin-timeout",
	"ipvs.udpTimeout":                  "ipvs-udp-timeout",
	"detectLocalMode":                  "detect-local-mode",
	"detectLocal.bridgeInterface":      "pod-bridge-interface",
	"detectLocal.interfaceNamePrefix":  "pod-interface-name-prefix",
	"clusterCIDR":                      "cluster-cidr",
	"nodePortAddresses":                "nodeport-addresses",
	"oomScoreAdj":                      "oom-score-adj",
	"conntrack.maxPerCore":             "conntrack-max-per-core",
	"conntrack.min":                    "conntrack-min",
	"conntrack.tcpEstablishedTimeout":  "conntrack-tcp-timeout-established",
	"conntrack.tcpCloseWaitTimeout":    "conntrack-tcp-timeout-close-wait",
	"conntrack.udpTimeout":             "conntrack-udp-timeout",
	"conntrack.udpStreamTimeout":       "conntrack-udp-timeout-stream",
	"configSyncPeriod":                 "config-sync-period",
	"logging.format":                   "logging-format",
	"logging.flushFrequency":           "log-flush-frequency",
	"logging.verbosity":                "v",
	"logging.vmodule":                  "vmodule",
	"logging.options.text.splitStream": "log-text-split-stream",
	"logging.options.json.splitStream": "log-json-split-stream",
	// nftvs's own: flags only.
	"companion":                     "companion",
	"ipvsGracefulTerminationPeriod": "ipvs-graceful-termination-period",
}

// flagOnly are fields that exist only as flags.
var flagOnly = map[string]bool{"companion": true, "ipvsGracefulTerminationPeriod": true}

// name is how the error names the setting: the flag without a config
// file (or for flag-only settings), the field with one.
func (e ConfigFieldError) name(fromFile bool) string {
	base, _, _ := strings.Cut(e.Field, "[")
	flag, ok := flagOfField[base]
	if ok && (!fromFile || flagOnly[base]) {
		return "--" + flag
	}
	return e.Field
}

// ConfigFieldErrors are every invalid setting found.
type ConfigFieldErrors []ConfigFieldError

func (errs ConfigFieldErrors) render(file string) error {
	lines := make([]string, len(errs))
	for i, e := range errs {
		s := e.name(file != "") + ": " + e.Detail
		if e.Value != nil {
			s += fmt.Sprintf(" (got %q)", fmt.Sprint(e.Value))
		}
		lines[i] = s
	}
	msg := strings.Join(lines, "\n")
	if file != "" {
		return fmt.Errorf("invalid configuration (%s):\n%s", file, msg)
	}
	return fmt.Errorf("invalid configuration:\n%s", msg)
}

// schedulerName is what an IPVS scheduler module name can be (ip_vs_<name>).
var schedulerName = regexp.MustCompile(`^[a-z0-9_]+$`)

// fieldErrors collects ConfigFieldErrors, and the addresses parsed on
// the way: validation parses each of them, and what it parsed is used
// (Complete), not parsed again.
type fieldErrors struct {
	errs   ConfigFieldErrors
	parsed Addresses
}

func (e *fieldErrors) add(field string, value any, detail string) {
	e.errs = append(e.errs, ConfigFieldError{Field: field, Value: value, Detail: detail})
}

// Validate checks a defaulted configuration as kube-proxy 1.36 does in
// IPVS mode (pkg/proxy/apis/config/validation), plus what nftvs cannot
// do: any mode but ipvs, interface names the kernel would refuse.
// logging is the feature gate the logging configuration is checked
// against (nil: the gates' defaults).
func Validate(c *v1alpha1.KubeProxyConfiguration, logging featuregate.FeatureGate) ConfigFieldErrors {
	_, errs := validate(c, logging)
	return errs
}

// validate is Validate, and returns the addresses it parsed.
func validate(c *v1alpha1.KubeProxyConfiguration, logging featuregate.FeatureGate) (Addresses, ConfigFieldErrors) {
	var e fieldErrors
	if c.Mode != "ipvs" && c.Mode != "" {
		e.add("mode", c.Mode, `nftvs implements IPVS mode only: must be "ipvs" or empty`)
	}
	if b := c.IPTables.MasqueradeBit; b != nil && (*b < 0 || *b > 31) {
		e.add("iptables.masqueradeBit", *b, "must be within the range [0, 31]")
	} else if b != nil && uint32(1)<<*b&proxier.FWMarkBits != 0 {
		e.add("iptables.masqueradeBit", *b, fmt.Sprintf("nftvs's IPVS fwmarks use mark bits %#x (node port and protocol): choose a bit outside them, such as kube-proxy's default 14", uint32(proxier.FWMarkBits)))
	}
	validateIPVS(&e, c.IPVS)
	validateLinux(&e, c)
	validateClientAndServers(&e, c)
	validateDetectLocal(&e, c)
	for _, fe := range logsapi.Validate(&c.Logging, logging, nil) {
		e.errs = append(e.errs, ConfigFieldError{Field: "logging." + fe.Field, Detail: fe.Detail})
	}
	return e.parsed, e.errs
}

// validateIPVS checks the ipvs section.
func validateIPVS(e *fieldErrors, c v1alpha1.KubeProxyIPVSConfiguration) {
	if c.SyncPeriod.Duration <= 0 {
		e.add("ipvs.syncPeriod", c.SyncPeriod.Duration, "must be greater than 0")
	}
	if c.MinSyncPeriod.Duration < 0 {
		e.add("ipvs.minSyncPeriod", c.MinSyncPeriod.Duration, "must be greater than or equal to 0")
	}
	if c.SyncPeriod.Duration > 0 && c.MinSyncPeriod.Duration > c.SyncPeriod.Duration {
		e.add("ipvs.syncPeriod", c.SyncPeriod.Duration, fmt.Sprintf("must be greater than or equal to ipvs.minSyncPeriod (%s)", c.MinSyncPeriod.Duration))
	}
	if s := c.Scheduler; s != "" && !schedulerName.MatchString(s) {
		e.add("ipvs.scheduler", s, "must be the name of an IPVS scheduler (rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh)")
	}
	for i, cidr := range c.ExcludeCIDRs {
		p, err := parseCIDR(cidr)
		if err != nil {
			e.add(fmt.Sprintf("ipvs.excludeCIDRs[%d]", i), cidr, "must be a valid CIDR")
			continue
		}
		e.parsed.ExcludeCIDRs = append(e.parsed.ExcludeCIDRs, p)
	}
	for _, t := range []struct {
		field string
		d     time.Duration
	}{{"ipvs.tcpTimeout", c.TCPTimeout.Duration}, {"ipvs.tcpFinTimeout", c.TCPFinTimeout.Duration}, {"ipvs.udpTimeout", c.UDPTimeout.Duration}} {
		if t.d < 0 {
			e.add(t.field, t.d, "must be greater than or equal to 0")
		}
	}
}

// validateLinux checks the conntrack section and the OOM score.
func validateLinux(e *fieldErrors, c *v1alpha1.KubeProxyConfiguration) {
	ct := c.Conntrack
	if ct.MaxPerCore != nil && *ct.MaxPerCore < 0 {
		e.add("conntrack.maxPerCore", *ct.MaxPerCore, "must be greater than or equal to 0")
	}
	if ct.Min != nil && *ct.Min < 0 {
		e.add("conntrack.min", *ct.Min, "must be greater than or equal to 0")
	}
	if ct.TCPEstablishedTimeout != nil && ct.TCPEstablishedTimeout.Duration < 0 {
		e.add("conntrack.tcpEstablishedTimeout", ct.TCPEstablishedTimeout.Duration, "must be greater than or equal to 0")
	}
	if ct.TCPCloseWaitTimeout != nil && ct.TCPCloseWaitTimeout.Duration < 0 {
		e.add("conntrack.tcpCloseWaitTimeout", ct.TCPCloseWaitTimeout.Duration, "must be greater than or equal to 0")
	}
	if ct.UDPTimeout.Duration < 0 {
		e.add("conntrack.udpTimeout", ct.UDPTimeout.Duration, "must be greater than or equal to 0")
	}
	if ct.UDPStreamTimeout.Duration < 0 {
		e.add("conntrack.udpStreamTimeout", ct.UDPStreamTimeout.Duration, "must be greater than or equal to 0")
	}
	if a := c.OOMScoreAdj; a != nil && (*a < -1000 || *a > 1000) {
		e.add("oomScoreAdj", *a, "must be within the range [-1000, 1000]")
	}
}

// validateClientAndServers checks the API client, the node's addresses
// and the servers' addresses.
func validateClientAndServers(e *fieldErrors, c *v1alpha1.KubeProxyConfiguration) {
	if c.ClientConnection.Burst < 0 {
		e.add("clientConnection.burst", c.ClientConnection.Burst, "must be greater than or equal to 0")
	}
	if c.ClientConnection.QPS < 0 || math.IsNaN(float64(c.ClientConnection.QPS)) {
		e.add("clientConnection.qps", c.ClientConnection.QPS, "must be greater than or equal to 0")
	}
	if c.ConfigSyncPeriod.Duration <= 0 {
		e.add("configSyncPeriod", c.ConfigSyncPeriod.Duration, "must be greater than 0")
	}
	if netutils.ParseIPSloppy(c.BindAddress) == nil {
		e.add("bindAddress", c.BindAddress, "not a valid textual representation of an IP address")
	}
	// Empty disables the server (kube-proxy's --healthz-port=0 and
	// --metrics-port=0 do that).
	if c.HealthzBindAddress != "" {
		e.errs = append(e.errs, validateHostPort(c.HealthzBindAddress, "healthzBindAddress")...)
	}
	if c.MetricsBindAddress != "" {
		e.errs = append(e.errs, validateHostPort(c.MetricsBindAddress, "metricsBindAddress")...)
	}
	for i, a := range c.NodePortAddresses {
		if a == "primary" {
			if i != 0 || len(c.NodePortAddresses) != 1 {
				e.add(fmt.Sprintf("nodePortAddresses[%d]", i), a, "can't use both 'primary' and CIDRs")
			}
			e.parsed.NodePortPrimary = true
			break
		}
		p, err := parseCIDR(a)
		if err != nil {
			e.add(fmt.Sprintf("nodePortAddresses[%d]", i), a, "must be a valid CIDR")
			continue
		}
		e.parsed.NodePortCIDRs = append(e.parsed.NodePortCIDRs, p)
	}
	if ip := netutils.ParseIPSloppy(c.BindAddress); ip != nil && !ip.IsUnspecified() {
		e.parsed.BindAddress = addrFromIP(ip)
	}
}

// validateDetectLocal checks local traffic detection.
func validateDetectLocal(e *fieldErrors, c *v1alpha1.KubeProxyConfiguration) {
	// --cluster-cidr also says whether the cluster uses IPv6
	// (UsesIPv6), whatever the mode: what parses is kept.
	for _, s := range strings.Split(c.ClusterCIDR, ",") {
		if p, err := parseCIDR(strings.TrimSpace(s)); err == nil && strings.TrimSpace(s) != "" {
			e.parsed.ClusterCIDRs = append(e.parsed.ClusterCIDRs, p)
		}
	}
	switch c.DetectLocalMode {
	case "ClusterCIDR":
		if c.ClusterCIDR != "" {
			e.errs = append(e.errs, validateDualStackCIDRs(strings.Split(c.ClusterCIDR, ","), "clusterCIDR")...)
		}
	case "NodeCIDR", "":
	case "BridgeInterface":
		e.errs = append(e.errs, validateInterface(c.DetectLocal.BridgeInterface, "detectLocal.bridgeInterface", 15)...)
	case "InterfaceNamePrefix":
		// The nft table matches the prefix as "prefix*": 15 bytes in all.
		e.errs = append(e.errs, validateInterface(c.DetectLocal.InterfaceNamePrefix, "detectLocal.interfaceNamePrefix", 14)...)
	default:
		e.add("detectLocalMode", c.DetectLocalMode, `supported values: "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", ""`)
	}
}

// validateOptions checks nftvs's own flags.
func validateOptions(o *Options) ConfigFieldErrors {
	var errs ConfigFieldErrors
	if o.Companion != Companion {
		errs = append(errs, ConfigFieldError{Field: "companion", Value: o.Companion,
			Detail: `the only companion nftvs implements is "nft" (one nftables table in place of iptables and ipset)`})
	}
	if o.GracefulTerminationPeriod < 0 {
		errs = append(errs, ConfigFieldError{Field: "ipvsGracefulTerminationPeriod", Value: o.GracefulTerminationPeriod,
			Detail: "must be 0 (until the connections end) or positive"})
	}
	return errs
}

func validateHostPort(input, field string) ConfigFieldErrors {
	host, port, err := net.SplitHostPort(input)
	if err != nil {
		return ConfigFieldErrors{{Field: field, Value: input, Detail: "must be IP:port"}}
	}
	var errs ConfigFieldErrors
	if netutils.ParseIPSloppy(host) == nil {
		errs = append(errs, ConfigFieldError{Field: field, Value: host, Detail: "must be a valid IP"})
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		errs = append(errs, ConfigFieldError{Field: field, Value: port, Detail: "must be a valid port"})
	}
	return errs
}

func validateInterface(name, field string, maxLen int) ConfigFieldErrors {
	switch {
	case name == "":
		return ConfigFieldErrors{{Field: field, Detail: "must not be empty"}}
	case len(name) > maxLen:
		return ConfigFieldErrors{{Field: field, Value: name, Detail: fmt.Sprintf("must be at most %d bytes long", maxLen)}}
	}
	return nil
}

func validateDualStackCIDRs(cidrs []string, field string) ConfigFieldErrors {
	pair := "must be a either a single CIDR or dual-stack pair of CIDRs (e.g. [10.100.0.0/16, fde4:8dba:82e1::/48]"
	switch {
	case len(cidrs) > 2:
		return ConfigFieldErrors{{Field: field, Value: strings.Join(cidrs, ","), Detail: pair}}
	}
	var errs ConfigFieldErrors
	for i, s := range cidrs {
		if _, _, err := netutils.ParseCIDRSloppy(strings.TrimSpace(s)); err != nil {
			errs = append(errs, ConfigFieldError{Field: fmt.Sprintf("%s[%d]", field, i), Value: s,
				Detail: "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)"})
		}
	}
	if len(errs) == 0 && len(cidrs) == 2 {
		if dual, err := netutils.IsDualStackCIDRStrings(cidrs); err == nil && !dual {
			errs = append(errs, ConfigFieldError{Field: field, Value: strings.Join(cidrs, ","), Detail: pair})
		}
	}
	return errs
}
