package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

// TestSetDefaults checks every default against kube-proxy 1.36's
// documented ones (pkg/proxy/apis/config/v1alpha1/defaults.go).
func TestSetDefaults(t *testing.T) {
	c := &v1alpha1.KubeProxyConfiguration{}
	SetDefaults(c)
	cases := []struct {
		field     string
		got, want any
	}{
		{"bindAddress", c.BindAddress, "0.0.0.0"},
		{"healthzBindAddress", c.HealthzBindAddress, "0.0.0.0:10256"},
		{"metricsBindAddress", c.MetricsBindAddress, "127.0.0.1:10249"},
		{"oomScoreAdj", *c.OOMScoreAdj, int32(-999)},
		{"iptables.syncPeriod", c.IPTables.SyncPeriod.Duration, 30 * time.Second},
		{"iptables.minSyncPeriod", c.IPTables.MinSyncPeriod.Duration, time.Second},
		{"iptables.localhostNodePorts", *c.IPTables.LocalhostNodePorts, true},
		{"iptables.masqueradeBit", *c.IPTables.MasqueradeBit, int32(14)},
		{"iptables.masqueradeAll", c.IPTables.MasqueradeAll, false},
		{"ipvs.syncPeriod", c.IPVS.SyncPeriod.Duration, 30 * time.Second},
		{"ipvs.minSyncPeriod (not defaulted)", c.IPVS.MinSyncPeriod.Duration, time.Duration(0)},
		{"ipvs.scheduler (not defaulted: rr)", c.IPVS.Scheduler, ""},
		{"ipvs.tcpTimeout", c.IPVS.TCPTimeout.Duration, time.Duration(0)},
		{"ipvs.strictARP", c.IPVS.StrictARP, false},
		{"nftables.syncPeriod", c.NFTables.SyncPeriod.Duration, 30 * time.Second},
		{"nftables.minSyncPeriod", c.NFTables.MinSyncPeriod.Duration, time.Second},
		{"nftables.masqueradeBit", *c.NFTables.MasqueradeBit, int32(14)},
		{"conntrack.maxPerCore", *c.Conntrack.MaxPerCore, int32(32768)},
		{"conntrack.min", *c.Conntrack.Min, int32(131072)},
		{"conntrack.tcpEstablishedTimeout", c.Conntrack.TCPEstablishedTimeout.Duration, 24 * time.Hour},
		{"conntrack.tcpCloseWaitTimeout", c.Conntrack.TCPCloseWaitTimeout.Duration, time.Hour},
		{"conntrack.tcpBeLiberal", c.Conntrack.TCPBeLiberal, false},
		{"conntrack.udpTimeout", c.Conntrack.UDPTimeout.Duration, time.Duration(0)},
		{"conntrack.udpStreamTimeout", c.Conntrack.UDPStreamTimeout.Duration, time.Duration(0)},
		{"configSyncPeriod", c.ConfigSyncPeriod.Duration, 15 * time.Minute},
		{"clientConnection.contentType", c.ClientConnection.ContentType, "application/vnd.kubernetes.protobuf"},
		{"clientConnection.qps", c.ClientConnection.QPS, float32(5)},
		{"clientConnection.burst", c.ClientConnection.Burst, int32(10)},
		{"featureGates", len(c.FeatureGates), 0},
		{"logging.format", c.Logging.Format, "text"},
		{"logging.flushFrequency", c.Logging.FlushFrequency.Duration.Duration, 5 * time.Second},
		{"mode (not defaulted)", string(c.Mode), ""},
		{"detectLocalMode (not defaulted)", string(c.DetectLocalMode), ""},
	}
	for _, tc := range cases {
		if tc.got != tc.want {
			t.Errorf("%s defaults to %v, want %v", tc.field, tc.got, tc.want)
		}
	}
	if c.FeatureGates == nil {
		t.Error("featureGates not defaulted to an empty map")
	}

	// Set values are kept; addresses get their port, and an IPv6 bind
	// address gives IPv6 server addresses.
	addrCases := []struct {
		bind, healthz, metrics         string
		wantBind, wantHealthz, wantMet string
	}{
		{"", "", "", "0.0.0.0", "0.0.0.0:10256", "127.0.0.1:10249"},
		{"::", "", "", "::", "[::]:10256", "[::1]:10249"},
		{"fd00::1", "fd00::1", "", "fd00::1", "[fd00::1]:10256", "[::1]:10249"},
		{"10.0.0.1", "10.0.0.1", "0.0.0.0:9000", "10.0.0.1", "10.0.0.1:10256", "0.0.0.0:9000"},
	}
	for _, tc := range addrCases {
		c := &v1alpha1.KubeProxyConfiguration{BindAddress: tc.bind, HealthzBindAddress: tc.healthz, MetricsBindAddress: tc.metrics}
		SetDefaults(c)
		if c.BindAddress != tc.wantBind || c.HealthzBindAddress != tc.wantHealthz || c.MetricsBindAddress != tc.wantMet {
			t.Errorf("bind %q healthz %q metrics %q: got %q %q %q, want %q %q %q", tc.bind, tc.healthz, tc.metrics,
				c.BindAddress, c.HealthzBindAddress, c.MetricsBindAddress, tc.wantBind, tc.wantHealthz, tc.wantMet)
		}
	}

	// Defaulting keeps what the file set.
	set := &v1alpha1.KubeProxyConfiguration{ConfigSyncPeriod: metav1Duration(time.Minute)}
	set.IPVS.SyncPeriod = metav1Duration(5 * time.Second)
	SetDefaults(set)
	if set.IPVS.SyncPeriod.Duration != 5*time.Second || set.ConfigSyncPeriod.Duration != time.Minute {
		t.Errorf("defaulting changed set values: %v %v", set.IPVS.SyncPeriod, set.ConfigSyncPeriod)
	}
}

func TestLoadConfigFile(t *testing.T) {
	cases := []struct {
		name        string
		content     string
		wantErr     string
		wantWarning string
		check       func(t *testing.T, c *v1alpha1.KubeProxyConfiguration)
	}{{
		name: "kubeadm's IPVS configuration",
		content: header + `bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
  burst: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
detectLocalMode: ""
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: "wrr"
  strictARP: true
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
metricsBindAddress: ""
mode: ipvs
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
`,
		check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
			if c.IPVS.Scheduler != "wrr" || !c.IPVS.StrictARP || c.IPVS.SyncPeriod.Duration != 30*time.Second ||
				c.IPVS.MinSyncPeriod.Duration != 0 || c.ClientConnection.QPS != 5 || c.ClientConnection.Burst != 10 ||
				c.ClientConnection.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || *c.Conntrack.MaxPerCore != 32768 ||
				c.ConfigSyncPeriod.Duration != 15*time.Minute || c.ClusterCIDR != "10.244.0.0/16" || *c.OOMScoreAdj != -999 {
				t.Errorf("decoded and defaulted: %+v", c)
			}
		},
	}, {
		name:    "JSON",
		content: `{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration","mode":"ipvs","ipvs":{"syncPeriod":"10s"}}`,
		check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
			if c.IPVS.SyncPeriod.Duration != 10*time.Second {
				t.Errorf("syncPeriod %v", c.IPVS.SyncPeriod)
			}
		},
	}, {
		name:        "unknown field: lenient, with a warning",
		content:     header + "mode: ipvs\nipvs:\n  scheduler: lc\n  syncPerod: 10s\n",
		wantWarning: `unknown field "ipvs.syncPerod"`,
		check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
			if c.IPVS.Scheduler != "lc" {
				t.Errorf("scheduler %q", c.IPVS.Scheduler)
			}
		},
	}, {
		name:        "wrong case is unknown, as in kube-proxy",
		content:     header + "Mode: ipvs\n",
		wantWarning: `unknown field "Mode"`,
	}, {
		name:        "duplicate field: lenient, with a warning",
		content:     header + "mode: ipvs\nmode: ipvs\n",
		wantWarning: "strict decoding failed",
	}, {
		name:    "v1alpha2 is not served by 1.36",
		content: "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n",
		wantErr: "apiVersion kubeproxy.config.k8s.io/v1alpha2 is not served by kube-proxy 1.36",
	}, {
		name:    "wrong kind",
		content: "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
		wantErr: `kind is "KubeletConfiguration", want KubeProxyConfiguration`,
	}, {
		name:    "no apiVersion",
		content: "kind: KubeProxyConfiguration\n",
		wantErr: `apiVersion is "", want kubeproxy.config.k8s.io/v1alpha1`,
	}, {
		name:    "wrong type",
		content: header + "ipvs:\n  syncPeriod: [1]\n",
		wantErr: "decode",
	}, {
		name:    "not YAML",
		content: "{{{",
		wantErr: "not valid YAML or JSON",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _, warnings, err := LoadConfigFile(writeFile(t, tc.content))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantWarning != "" && !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, tc.wantWarning) }) {
				t.Errorf("warnings %q, want %q", warnings, tc.wantWarning)
			}
			if tc.wantWarning == "" && len(warnings) > 0 {
				t.Errorf("unexpected warnings %q", warnings)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// Validation errors of a file name the field as the file spells it.
func TestConfigFileValidation(t *testing.T) {
	cases := []struct {
		body string
		want string
	}{
		{"mode: iptables\n", `mode: nftvs implements IPVS mode only: must be "ipvs" or empty (got "iptables")`},
		{"mode: nftables\n", `mode: nftvs implements IPVS mode only`},
		{"ipvs:\n  syncPeriod: -1s\n", `ipvs.syncPeriod: must be greater than 0 (got "-1s")`},
		{"ipvs:\n  minSyncPeriod: 1m\n", "ipvs.syncPeriod: must be greater than or equal to ipvs.minSyncPeriod (1m0s)"},
		{"ipvs:\n  minSyncPeriod: -1s\n", "ipvs.minSyncPeriod: must be greater than or equal to 0"},
		{"ipvs:\n  excludeCIDRs: [10.0.0.0/8, x]\n", `ipvs.excludeCIDRs[1]: must be a valid CIDR (got "x")`},
		{"ipvs:\n  udpTimeout: -5s\n", "ipvs.udpTimeout: must be greater than or equal to 0"},
		{"iptables:\n  masqueradeBit: -1\n", "iptables.masqueradeBit: must be within the range [0, 31]"},
		{"conntrack:\n  maxPerCore: -1\n", "conntrack.maxPerCore: must be greater than or equal to 0"},
		{"conntrack:\n  tcpEstablishedTimeout: -1s\n", "conntrack.tcpEstablishedTimeout: must be greater than or equal to 0"},
		{"oomScoreAdj: 1001\n", "oomScoreAdj: must be within the range [-1000, 1000]"},
		{"bindAddress: nowhere\n", "bindAddress: not a valid textual representation of an IP address"},
		{"healthzBindAddress: 1.2.3.4:99999\n", `healthzBindAddress: must be a valid port (got "99999")`},
		{"metricsBindAddress: host:10249\n", `metricsBindAddress: must be a valid IP (got "host")`},
		{"nodePortAddresses: [primary, 10.0.0.0/8]\n", "nodePortAddresses[0]: can't use both 'primary' and CIDRs"},
		{"detectLocalMode: NodeCIDRs\n", "detectLocalMode: supported values"},
		{"detectLocalMode: BridgeInterface\n", "detectLocal.bridgeInterface: must not be empty"},
		{"clusterCIDR: 10.0.0.0/8,fd00::/64,10.1.0.0/16\n", "clusterCIDR: must be a either a single CIDR or dual-stack pair"},
		{"clientConnection:\n  burst: -1\n", "clientConnection.burst: must be greater than or equal to 0"},
		{"logging:\n  flushFrequency: -1s\n", "logging.flushFrequency: Must be greater than zero"},
	}
	for _, tc := range cases {
		path := writeFile(t, header+tc.body)
		_, _, err := parse(t, "--config="+path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: error %v, want %q and the file name", tc.body, err, tc.want)
		}
	}
}

// As in kube-proxy, a --config file replaces the configuration flags
// (each ignored one is reported), except --hostname-override and the
// logging flags, which override the file. nftvs's own flags always apply.
func TestFlagsWithConfigFile(t *testing.T) {
	path := writeFile(t, header+`mode: ipvs
hostnameOverride: from-file
ipvs:
  scheduler: lc
logging:
  verbosity: 2
  vmodule:
  - filePattern: proxier
    verbosity: 5
`)
	cfg := mustParse(t, "--config="+path, "--hostname-override=From-Flag", "--ipvs-scheduler=wrr",
		"--masquerade-all", "-v=6", "--vmodule=watch=3", "--companion=nft", "--conntrack-cleaner=false",
		"--ipvs-graceful-termination-period=10s", "--master=https://x")
	c := cfg.KubeProxy
	if c.HostnameOverride != "from-flag" {
		t.Errorf("hostnameOverride %q, want the flag's, lower-cased", c.HostnameOverride)
	}
	if c.IPVS.Scheduler != "lc" || c.IPTables.MasqueradeAll {
		t.Errorf("scheduler %q masqueradeAll %v: configuration flags must not override the file", c.IPVS.Scheduler, c.IPTables.MasqueradeAll)
	}
	if c.Logging.Verbosity != 6 {
		t.Errorf("verbosity %d, want the flag's 6", c.Logging.Verbosity)
	}
	if len(c.Logging.VModule) != 2 || c.Logging.VModule[0].FilePattern != "watch" || c.Logging.VModule[1].FilePattern != "proxier" {
		t.Errorf("vmodule %+v, want the flag's then the file's", c.Logging.VModule)
	}
	if cfg.ConntrackCleaner || cfg.DrainTimeout != 10*time.Second || cfg.Master != "https://x" {
		t.Errorf("nftvs's own flags and --master must apply with --config: %+v", cfg)
	}
	for _, f := range []string{"--ipvs-scheduler", "--masquerade-all"} {
		if !slices.ContainsFunc(cfg.Warnings, func(w string) bool {
			return strings.Contains(w, "flag "+f+" is ignored because --config is given")
		}) {
			t.Errorf("no warning for %s in %q", f, cfg.Warnings)
		}
	}
}

func TestConfigFileModesAndOtherModeFields(t *testing.T) {
	cfg := mustParse(t, "--config="+writeFile(t, header+"iptables:\n  syncPeriod: 10s\n  localhostNodePorts: false\nnftables:\n  masqueradeAll: true\nportRange: 30000-32767\nfeatureGates:\n  APIServerIdentity: true\n"))
	if cfg.KubeProxy.Mode != "ipvs" {
		t.Errorf("empty mode gives %q, want ipvs", cfg.KubeProxy.Mode)
	}
	for _, want := range []string{"mode is empty", "field iptables.syncPeriod does not apply", "field iptables.localhostNodePorts does not apply",
		"field nftables does not apply", "field portRange does not apply", "feature gate APIServerIdentity does not change what kube-proxy does"} {
		if !slices.ContainsFunc(cfg.Warnings, func(w string) bool { return strings.Contains(w, want) }) {
			t.Errorf("no warning %q in %q", want, cfg.Warnings)
		}
	}
	// ipvs.minSyncPeriod is not defaulted in a file: 0 syncs on every
	// change, which the proxier gets as its smallest period.
	if minSync := resolve(t, cfg, NodeFacts{}).Proxier(Runtime{}).MinSyncPeriod; minSync != time.Nanosecond {
		t.Errorf("min sync period %v, want 1ns", minSync)
	}
	// JSON logging, as kube-proxy.
	cfg = mustParse(t, "--config="+writeFile(t, header+"mode: ipvs\nlogging:\n  format: json\n"))
	if cfg.KubeProxy.Logging.Format != "json" || slices.ContainsFunc(cfg.Warnings, func(w string) bool { return strings.Contains(w, "json") }) {
		t.Errorf("format %q warnings %q", cfg.KubeProxy.Logging.Format, cfg.Warnings)
	}
}

// --write-config-to writes a file that loads back to the same
// configuration.
func TestWriteConfigRoundTrip(t *testing.T) {
	cfg := mustParse(t, "--ipvs-scheduler=sh", "--cluster-cidr=10.244.0.0/16", "--nodeport-addresses=10.0.0.0/8")
	path := filepath.Join(t.TempDir(), "out.yaml")
	if err := Write(cfg.KubeProxy, path); err != nil {
		t.Fatal(err)
	}
	back, _, warnings, err := LoadConfigFile(path)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("load written config: %v %q", err, warnings)
	}
	platformDefaults(back)
	want := cfg.KubeProxy.DeepCopy()
	want.APIVersion, want.Kind = APIVersion, Kind
	if !reflect.DeepEqual(back, want) {
		t.Errorf("round trip differs:\n got %+v\nwant %+v", back, want)
	}
}

// TestMasqueradeBitOutsideFWMarks: a masquerade bit inside the bits of
// nftvs's fwmarks (node port, protocol) would make two frontends' marks
// equal; it is refused with a message that says why.
func TestMasqueradeBitOutsideFWMarks(t *testing.T) {
	for bit, ok := range map[int32]bool{0: true, 3: true, 14: true, 15: true, 12: false, 13: false, 16: false, 31: false} {
		c := &v1alpha1.KubeProxyConfiguration{}
		SetDefaults(c)
		c.IPTables.MasqueradeBit = &bit
		errs := Validate(c, nil)
		got := len(errs) == 0
		if got != ok || !got && !strings.Contains(errs.render("").Error(), "fwmarks use mark bits") {
			t.Errorf("bit %d: accepted %v, want %v (%v)", bit, got, ok, errs)
		}
	}
}

func metav1Duration(d time.Duration) metav1.Duration { return metav1.Duration{Duration: d} }

func resolve(t *testing.T, cfg *Config, n NodeFacts) *Resolved {
	t.Helper()
	r, err := cfg.Resolve(n)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
