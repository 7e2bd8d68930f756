package config

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/component-base/featuregate"
)

// Feature gates are validated as kube-proxy validates them: an unknown
// gate and a locked one set away from its value are refused with
// kube-proxy's message; a gate kube-proxy reads is honoured, or refused
// with the reason when nftvs does not implement its value; a gate
// kube-proxy does not read is accepted with a warning. Before, every gate
// but the logging ones was accepted and ignored.
func TestFeatureGatesAsKubeProxy(t *testing.T) {
	for _, c := range []struct {
		gates string
		err   string // "": accepted
		warn  string
	}{
		{"Foo=true", "--feature-gates: unrecognized feature gate: Foo", ""},
		{"MultiCIDRServiceAllocator=false", "cannot set feature gate MultiCIDRServiceAllocator to false, feature is locked to true", ""},
		{"NativeHistograms=true", "NativeHistograms=true: not implemented by nftvs", ""},
		{"AllowServiceExternalIPs=false", "AllowServiceExternalIPs=false: not implemented by nftvs (nftvs always programs a Service's externalIPs)", ""},
		{"ComponentStatusz=true", "ComponentStatusz=true: not implemented by nftvs (nftvs serves no /statusz)", ""},
		{"ComponentStatusz=false,ComponentFlagz=false,NativeHistograms=false", "", ""},
		{"PreferSameTrafficDistribution=true,MultiCIDRServiceAllocator=true", "", ""},
		{"WatchListClient=false,LoggingAlphaOptions=true", "", ""},
		{"WinDSR=true", "", "feature gate WinDSR applies to kube-proxy on Windows only"},
		{"APIServerIdentity=false", "", "feature gate APIServerIdentity does not change what kube-proxy does, nor nftvs"},
	} {
		_, cfg, err := parse(t, "--feature-gates="+c.gates)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: refused: %v", c.gates, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want %q", c.gates, err, c.err)
		}
		if c.warn != "" && (cfg == nil || !slices.Contains(cfg.Warnings, c.warn)) {
			t.Errorf("%s: warnings %q, want %q", c.gates, cfg.Warnings, c.warn)
		}
		if c.err == "" && c.warn == "" && cfg != nil && len(cfg.Warnings) > 0 {
			t.Errorf("%s: warnings %q", c.gates, cfg.Warnings)
		}
	}
	// Honoured: client-go's gates are nftvs's (UseClientGoFeatureGates).
	cfg := mustParse(t, "--feature-gates=WatchListClient=false")
	if cfg.FeatureGate.Enabled(featuregate.Feature("WatchListClient")) {
		t.Error("WatchListClient=false not set")
	}
	if !mustParse(t).FeatureGate.Enabled(featuregate.Feature("WatchListClient")) {
		t.Error("WatchListClient is not on by default, as in 1.36")
	}
}

var helpGate = regexp.MustCompile(`^\s*(\w+=true\|false \((?:ALPHA|BETA|DEPRECATED) - default=(?:true|false)\))\s*$`)

// When the kube-proxy binary of the e2e tools is built, the gates its
// --help lists (all but GA ones) are exactly nftvs's, in the same states.
func TestFeatureGatesMatchKubeProxyBinary(t *testing.T) {
	bin, out := kubeProxyHelp(t, "TestFeatureGatesAsKubeProxy still checks the table")
	var upstream []string
	for _, line := range strings.Split(out, "\n") {
		if m := helpGate.FindStringSubmatch(line); m != nil {
			upstream = append(upstream, m[1])
		}
	}
	if len(upstream) < 50 {
		t.Fatalf("could not read the feature gates of %s --help:\n%s", bin, out)
	}
	ours := mustParse(t).FeatureGate.KnownFeatures()
	slices.Sort(upstream)
	slices.Sort(ours)
	for _, g := range upstream {
		if !slices.Contains(ours, g) {
			t.Errorf("kube-proxy has %s, nftvs not", g)
		}
	}
	for _, g := range ours {
		if !slices.Contains(upstream, g) {
			t.Errorf("nftvs has %s, kube-proxy not", g)
		}
	}
}
