package config

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// parse parses args into fresh options and completes them.
func parse(t *testing.T, args ...string) (*Options, *Config, error) {
	t.Helper()
	o := NewOptions()
	fs := o.NewFlagSet()
	fs.SetOutput(&strings.Builder{})
	if err := fs.Parse(args); err != nil {
		return o, nil, err
	}
	cfg, err := o.Complete()
	return o, cfg, err
}

func mustParse(t *testing.T, args ...string) *Config {
	t.Helper()
	_, cfg, err := parse(t, args...)
	if err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return cfg
}

// kubeProxyFlagDefaults are kube-proxy 1.36.3's flags and their default
// values as pflag records them (`kube-proxy --help` shows the non-zero
// ones; TestFlagsMatchKubeProxyBinary compares with the binary itself
// when it is built).
var kubeProxyFlagDefaults = map[string]string{
	"bind-address":                      "0.0.0.0",
	"bind-address-hard-fail":            "false",
	"boot-id-file":                      "/proc/sys/kernel/random/boot_id",
	"cleanup":                           "false",
	"cluster-cidr":                      "",
	"config":                            "",
	"config-sync-period":                "15m0s",
	"conntrack-max-per-core":            "32768",
	"conntrack-min":                     "131072",
	"conntrack-tcp-be-liberal":          "false",
	"conntrack-tcp-timeout-close-wait":  "1h0m0s",
	"conntrack-tcp-timeout-established": "24h0m0s",
	"conntrack-udp-timeout":             "0s",
	"conntrack-udp-timeout-stream":      "0s",
	"detect-local-mode":                 "",
	"feature-gates":                     "",
	"healthz-bind-address":              "0.0.0.0:10256",
	"healthz-port":                      "10256",
	"help":                              "false",
	"hostname-override":                 "",
	"init-only":                         "false",
	"iptables-localhost-nodeports":      "true",
	"iptables-masquerade-bit":           "14",
	"iptables-min-sync-period":          "1s",
	"iptables-sync-period":              "30s",
	"ipvs-exclude-cidrs":                "[]",
	"ipvs-min-sync-period":              "1s",
	"ipvs-scheduler":                    "",
	"ipvs-strict-arp":                   "false",
	"ipvs-sync-period":                  "30s",
	"ipvs-tcp-timeout":                  "0s",
	"ipvs-tcpfin-timeout":               "0s",
	"ipvs-udp-timeout":                  "0s",
	"kube-api-burst":                    "10",
	"kube-api-content-type":             "application/vnd.kubernetes.protobuf",
	"kube-api-qps":                      "5",
	"kubeconfig":                        "",
	"log-flush-frequency":               "5s",
	"log-json-info-buffer-size":         "0",
	"log-json-split-stream":             "false",
	"log-text-info-buffer-size":         "0",
	"log-text-split-stream":             "false",
	"logging-format":                    "text",
	"machine-id-file":                   "/etc/machine-id,/var/lib/dbus/machine-id",
	"masquerade-all":                    "false",
	"master":                            "",
	"metrics-bind-address":              "127.0.0.1:10249",
	"metrics-port":                      "10249",
	"nodeport-addresses":                "[]",
	"oom-score-adj":                     "-999",
	"pod-bridge-interface":              "",
	"pod-interface-name-prefix":         "",
	"profiling":                         "false",
	"proxy-mode":                        "",
	"show-hidden-metrics-for-version":   "",
	"v":                                 "0",
	"version":                           "false",
	"vmodule":                           "",
	"write-config-to":                   "",
}

func TestFlagDefaultsAreKubeProxys(t *testing.T) {
	fs := NewOptions().NewFlagSet()
	for name, want := range kubeProxyFlagDefaults {
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("kube-proxy flag --%s is missing", name)
			continue
		}
		if f.DefValue != want {
			t.Errorf("--%s defaults to %q, kube-proxy's to %q", name, f.DefValue, want)
		}
	}
	own := map[string]string{"companion": "nft", "ipvs-graceful-termination-period": "0s", "conntrack-cleaner": "true", "takeover-kube-proxy": "true",
		"ipvs-service-metrics": "false", "ipvs-service-metrics-real-servers": "false",
		"explain-socket": "/run/nftvs-explain.sock"}
	for name, want := range own {
		if f := fs.Lookup(name); f == nil || f.DefValue != want {
			t.Errorf("--%s: got %v, want default %q", name, f, want)
		}
	}
}

// The flags' defaults give the configuration kube-proxy would run IPVS
// mode with.
func TestFlagDefaultsConfigure(t *testing.T) {
	cfg := mustParse(t)
	c := cfg.KubeProxy
	checks := []struct {
		name      string
		got, want any
	}{
		{"mode", string(c.Mode), "ipvs"},
		{"detectLocalMode", string(c.DetectLocalMode), "ClusterCIDR"},
		{"ipvs.syncPeriod", c.IPVS.SyncPeriod.Duration, 30 * time.Second},
		{"ipvs.minSyncPeriod", c.IPVS.MinSyncPeriod.Duration, time.Second},
		{"healthzBindAddress", c.HealthzBindAddress, "0.0.0.0:10256"},
		{"metricsBindAddress", c.MetricsBindAddress, "127.0.0.1:10249"},
		{"masqueradeBit", *c.IPTables.MasqueradeBit, int32(14)},
		{"oomScoreAdj", *c.OOMScoreAdj, int32(-999)},
		{"conntrack.maxPerCore", *c.Conntrack.MaxPerCore, int32(32768)},
		{"clientConnection.qps", c.ClientConnection.QPS, float32(5)},
		{"drain timeout (0: until the connections end)", cfg.DrainTimeout, time.Duration(0)},
		{"conntrack cleaner", cfg.ConntrackCleaner, true},
		{"takeover (on by default: a drop-in swap adds no flag)", cfg.TakeoverKubeProxy, true},
		{"companion", cfg.Companion, "nft"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings with no flags: %q", cfg.Warnings)
	}
}

func TestFlagsConfigure(t *testing.T) {
	cfg := mustParse(t,
		"--ipvs-scheduler=mh", "--ipvs-sync-period=1m", "--ipvs-min-sync-period=0",
		"--ipvs-exclude-cidrs=10.1.0.0/16,fd00::/64", "--ipvs-strict-arp",
		"--ipvs-tcp-timeout=900s", "--ipvs-tcpfin-timeout=120s", "--ipvs-udp-timeout=300s",
		"--masquerade-all", "--iptables-masquerade-bit=3",
		"--cluster-cidr=10.244.0.0/16,fd01::/48", "--nodeport-addresses=primary",
		"--hostname-override=Node-A ", "--bind-address=192.168.0.10",
		"--healthz-bind-address=127.0.0.1:20256", "--metrics-bind-address=0.0.0.0",
		"--kubeconfig=/k", "--master=https://api:6443", "--kube-api-qps=50", "--kube-api-burst=100",
		"--kube-api-content-type=application/json", "--config-sync-period=1h",
		"--conntrack-max-per-core=0", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=30s",
		"--oom-score-adj=-500", "--ipvs-graceful-termination-period=2m", "--conntrack-cleaner=false",
		"--takeover-kube-proxy=false",
		"--ipvs_strict_arp=true", // kube-proxy accepts _ for -
		"-v=4",
	)
	c := cfg.KubeProxy
	checks := []struct {
		name      string
		got, want any
	}{
		{"scheduler", c.IPVS.Scheduler, "mh"},
		{"syncPeriod", c.IPVS.SyncPeriod.Duration, time.Minute},
		{"minSyncPeriod", c.IPVS.MinSyncPeriod.Duration, time.Duration(0)},
		{"excludeCIDRs", strings.Join(c.IPVS.ExcludeCIDRs, ","), "10.1.0.0/16,fd00::/64"},
		{"strictARP", c.IPVS.StrictARP, true},
		{"tcpTimeout", c.IPVS.TCPTimeout.Duration, 900 * time.Second},
		{"tcpFinTimeout", c.IPVS.TCPFinTimeout.Duration, 120 * time.Second},
		{"udpTimeout", c.IPVS.UDPTimeout.Duration, 300 * time.Second},
		{"masqueradeAll", c.IPTables.MasqueradeAll, true},
		{"masqueradeBit", *c.IPTables.MasqueradeBit, int32(3)},
		{"clusterCIDR", c.ClusterCIDR, "10.244.0.0/16,fd01::/48"},
		{"nodePortAddresses", strings.Join(c.NodePortAddresses, ","), "primary"},
		{"hostnameOverride", c.HostnameOverride, "node-a"},
		{"bindAddress", c.BindAddress, "192.168.0.10"},
		{"healthzBindAddress", c.HealthzBindAddress, "127.0.0.1:20256"},
		{"metricsBindAddress (port appended)", c.MetricsBindAddress, "0.0.0.0:10249"},
		{"kubeconfig", c.ClientConnection.Kubeconfig, "/k"},
		{"master", cfg.Master, "https://api:6443"},
		{"qps", c.ClientConnection.QPS, float32(50)},
		{"burst", c.ClientConnection.Burst, int32(100)},
		{"contentType", c.ClientConnection.ContentType, "application/json"},
		{"configSyncPeriod", c.ConfigSyncPeriod.Duration, time.Hour},
		{"maxPerCore", *c.Conntrack.MaxPerCore, int32(0)},
		{"tcpBeLiberal", c.Conntrack.TCPBeLiberal, true},
		{"conntrack udpTimeout", c.Conntrack.UDPTimeout.Duration, 30 * time.Second},
		{"oomScoreAdj", *c.OOMScoreAdj, int32(-500)},
		{"drain", cfg.DrainTimeout, 2 * time.Minute},
		{"cleaner", cfg.ConntrackCleaner, false},
		{"takeover", cfg.TakeoverKubeProxy, false},
		{"verbosity", uint32(c.Logging.Verbosity), uint32(4)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	pcfg := resolve(t, cfg, NodeFacts{}).Proxier(Runtime{})
	sync, minSync := pcfg.SyncPeriod, pcfg.MinSyncPeriod
	if sync != time.Minute || minSync != time.Nanosecond {
		t.Errorf("proxier sync periods %v/%v, want 1m and immediate (1ns) for --ipvs-min-sync-period=0", sync, minSync)
	}
}

// The deprecated --healthz-port and --metrics-port behave as in
// kube-proxy: 0 disables the server, a port is appended to an address
// given without one.
func TestDeprecatedPortFlags(t *testing.T) {
	cfg := mustParse(t, "--healthz-port=0", "--metrics-port=0")
	if cfg.KubeProxy.HealthzBindAddress != "" || cfg.KubeProxy.MetricsBindAddress != "" {
		t.Errorf("servers not disabled: %q %q", cfg.KubeProxy.HealthzBindAddress, cfg.KubeProxy.MetricsBindAddress)
	}
	cfg = mustParse(t, "--healthz-bind-address=10.0.0.1", "--healthz-port=1234")
	if got := cfg.KubeProxy.HealthzBindAddress; got != "10.0.0.1:1234" {
		t.Errorf("healthz address %q, want 10.0.0.1:1234", got)
	}
}

func TestCompanionOtherThanNftIsRejected(t *testing.T) {
	for _, c := range []string{"iptables", "ipset", "", "NFT"} {
		_, _, err := parse(t, "--companion="+c)
		if err == nil || !strings.Contains(err.Error(), "--companion: the only companion nftvs implements is \"nft\"") {
			t.Errorf("--companion=%q: error %v, want one naming --companion", c, err)
		}
	}
	mustParse(t, "--companion=nft")
}

func TestProxyModeMustBeIPVS(t *testing.T) {
	for _, m := range []string{"iptables", "nftables", "kernelspace", "IPVS"} {
		_, _, err := parse(t, "--proxy-mode="+m)
		if err == nil || !strings.Contains(err.Error(), `--proxy-mode: nftvs implements IPVS mode only: must be "ipvs" or empty (got "`+m+`")`) {
			t.Errorf("--proxy-mode=%s: error %v", m, err)
		}
	}
	for _, m := range []string{"ipvs", ""} {
		if cfg := mustParse(t, "--proxy-mode="+m); cfg.KubeProxy.Mode != "ipvs" {
			t.Errorf("--proxy-mode=%q: mode %q, want ipvs", m, cfg.KubeProxy.Mode)
		}
	}
}

func TestOtherModeFlagsAreAcceptedWithAWarning(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--iptables-sync-period=10s"}, "flag --iptables-sync-period does not apply"},
		{[]string{"--iptables-min-sync-period=2s"}, "flag --iptables-min-sync-period does not apply"},
		{[]string{"--iptables-localhost-nodeports=false"}, "flag --iptables-localhost-nodeports does not apply"},
		{[]string{"--show-hidden-metrics-for-version=1.35"}, "flag --show-hidden-metrics-for-version does not apply"},
		{[]string{"--boot-id-file=/x"}, "flag --boot-id-file does not apply"},
		{[]string{"--feature-gates=APIServerIdentity=false,ContextualLogging=false"}, "feature gate APIServerIdentity does not change what kube-proxy does"},
	}
	for _, c := range cases {
		cfg := mustParse(t, c.args...)
		if !slices.ContainsFunc(cfg.Warnings, func(w string) bool { return strings.Contains(w, c.want) }) {
			t.Errorf("%q: warnings %q, want %q", c.args, cfg.Warnings, c.want)
		}
		if cfg.KubeProxy.IPVS.SyncPeriod.Duration != 30*time.Second {
			t.Errorf("%q changed ipvs.syncPeriod", c.args)
		}
	}
	// The logging gates work as in kube-proxy: split streams need
	// LoggingAlphaOptions.
	if _, _, err := parse(t, "--log-text-split-stream"); err == nil || !strings.Contains(err.Error(), "--log-text-split-stream: Feature LoggingAlphaOptions is disabled") {
		t.Errorf("--log-text-split-stream without the gate: %v", err)
	}
	mustParse(t, "--feature-gates=LoggingAlphaOptions=true", "--log-text-split-stream")
}

// Bad values are refused with an error that names the flag, before
// anything else happens.
func TestBadFlagsNameTheFlag(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--ipvs-sync-period=0"}, "--ipvs-sync-period: must be greater than 0"},
		{[]string{"--ipvs-min-sync-period=-1s"}, "--ipvs-min-sync-period: must be greater than or equal to 0"},
		{[]string{"--ipvs-min-sync-period=2m"}, "--ipvs-sync-period: must be greater than or equal to ipvs.minSyncPeriod (2m0s)"},
		{[]string{"--ipvs-exclude-cidrs=10.0.0.0/8,nope"}, `--ipvs-exclude-cidrs: must be a valid CIDR (got "nope")`},
		{[]string{"--ipvs-tcp-timeout=-1s"}, "--ipvs-tcp-timeout: must be greater than or equal to 0"},
		{[]string{"--ipvs-scheduler=r r"}, "--ipvs-scheduler: must be the name of an IPVS scheduler"},
		{[]string{"--iptables-masquerade-bit=32"}, "--iptables-masquerade-bit: must be within the range [0, 31]"},
		{[]string{"--oom-score-adj=-1001"}, "--oom-score-adj: must be within the range [-1000, 1000]"},
		{[]string{"--conntrack-min=-1"}, "--conntrack-min: must be greater than or equal to 0"},
		{[]string{"--conntrack-udp-timeout-stream=-1s"}, "--conntrack-udp-timeout-stream: must be greater than or equal to 0"},
		{[]string{"--config-sync-period=0"}, "--config-sync-period: must be greater than 0"},
		{[]string{"--kube-api-burst=-1"}, "--kube-api-burst: must be greater than or equal to 0"},
		{[]string{"--nodeport-addresses=primary,10.0.0.0/8"}, "--nodeport-addresses: can't use both 'primary' and CIDRs"},
		{[]string{"--nodeport-addresses=10.0.0.0/33"}, "--nodeport-addresses: must be a valid CIDR"},
		{[]string{"--cluster-cidr=10.0.0.0/8,10.1.0.0/16"}, "--cluster-cidr: must be a either a single CIDR or dual-stack pair"},
		{[]string{"--cluster-cidr=banana"}, "--cluster-cidr: must be a valid CIDR block"},
		{[]string{"--detect-local-mode=Magic"}, `--detect-local-mode: supported values: "ClusterCIDR"`},
		{[]string{"--detect-local-mode=BridgeInterface"}, "--pod-bridge-interface: must not be empty"},
		{[]string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=abcdefghijklmno"}, "--pod-interface-name-prefix: must be at most 14 bytes long"},
		{[]string{"--ipvs-graceful-termination-period=-1s"}, "--ipvs-graceful-termination-period: must be 0 (until the connections end) or positive"},
		{[]string{"--log-flush-frequency=0"}, "--log-flush-frequency: Must be greater than zero"},
		{[]string{"--hostname-override= "}, "--hostname-override: empty hostname-override is invalid"},
	}
	for _, c := range cases {
		_, _, err := parse(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.args, err, c.want)
		}
	}
	// Unparsable values fail in flag parsing, naming the flag.
	for _, arg := range []string{"--ipvs-sync-period=soon", "--bind-address=300.1.1.1", "--healthz-bind-address=1.2.3.4:http", "--conntrack-min=many", "--feature-gates=A"} {
		_, _, err := parse(t, arg)
		name, _, _ := strings.Cut(arg, "=")
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: error %v, want one naming the flag", arg, err)
		}
	}
}

// When the kube-proxy binary of the e2e tools is built (e2e/tools/build.sh),
// its --help must list exactly our kube-proxy flags, with the same types
// and defaults.
func TestFlagsMatchKubeProxyBinary(t *testing.T) {
	bin, out := kubeProxyHelp(t, "the static table still checks the defaults")
	upstream := helpFlags(out)
	if len(upstream) < 50 {
		t.Fatalf("could not read %s --help:\n%s", bin, out)
	}
	ours := helpFlags(NewOptions().NewFlagSet().FlagUsages())
	for name, u := range upstream {
		if o, ok := ours[name]; !ok || o != u {
			t.Errorf("--%s: kube-proxy has %q, nftvs %q", name, u, o)
		}
	}
	for name := range ours {
		if _, ok := upstream[name]; !ok && !slices.Contains([]string{"companion", "conntrack-cleaner", "ipvs-graceful-termination-period", "takeover-kube-proxy",
			"max-virtual-servers-per-service", "max-source-range-elements-per-service",
			"ipvs-service-metrics", "ipvs-service-metrics-real-servers", "explain-socket"}, name) {
			t.Errorf("--%s is not a kube-proxy flag", name)
		}
	}
	// The static table is the same list.
	for name := range upstream {
		if _, ok := kubeProxyFlagDefaults[name]; !ok {
			t.Errorf("kube-proxy flag --%s missing from kubeProxyFlagDefaults", name)
		}
	}
}

var helpLine = regexp.MustCompile(`^\s+(?:-\w, )?--([\w-]+)(?: (\S+))?\s+(.*)$`)
var helpDefault = regexp.MustCompile(`\(default (.*?)\)\s*$`)

// helpFlags reads "--name type ... (default x)" lines: name → "type default".
func helpFlags(help string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(help, "\n") {
		m := helpLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		typ := m[2]
		if typ == "" {
			typ = "bool"
		}
		def := ""
		if d := helpDefault.FindStringSubmatch(m[3]); d != nil {
			def = d[1]
		}
		out[m[1]] = typ + " " + def
	}
	return out
}

// kubeProxyHelp is the --help of the kube-proxy binary e2e/tools/build.sh
// builds into the cache; the test is skipped (saying why, and what still
// checks) when it is not built.
func kubeProxyHelp(t *testing.T, stillChecked string) (bin, help string) {
	t.Helper()
	cache := os.Getenv("NFTVS_CACHE")
	if cache == "" {
		cache = "/var/cache/nftvs"
	}
	bins, _ := filepath.Glob(filepath.Join(cache, "bin", "v1.36.*", "kube-proxy"))
	if len(bins) == 0 {
		t.Skip("no kube-proxy 1.36 binary in " + cache + "/bin (e2e/tools/build.sh builds it); " + stillChecked)
	}
	out, _ := exec.Command(bins[0], "--help").CombinedOutput()
	return bins[0], string(out)
}
