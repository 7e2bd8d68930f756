package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	utilversion "k8s.io/apimachinery/pkg/util/version"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json, as kube-proxy's main registers it
	metricsfeatures "k8s.io/component-base/metrics/features"
	zpagesfeatures "k8s.io/component-base/zpages/features"

	"github.com/nftvs/nftvs/internal/version"
)

// notImplementedGates are the gates kube-proxy reads that change what it
// does, with the only value nftvs implements and why. Setting one to the
// other value is refused.
var notImplementedGates = map[string]struct {
	value bool
	why   string
}{
	"AllowServiceExternalIPs": {true, "nftvs always programs a Service's externalIPs"},
	"ComponentFlagz":          {false, "nftvs serves no /flagz"},
	"ComponentStatusz":        {false, "nftvs serves no /statusz"},
	"NativeHistograms":        {false, "nftvs's histograms are classic Prometheus histograms"},
}

// implementedGates are the gates kube-proxy reads that nftvs follows in
// their only possible (locked) state.
var implementedGates = map[string]bool{
	"MultiCIDRServiceAllocator":     true, // ServiceCIDRs: IPVS mode does nothing with them
	"PreferSameTrafficDistribution": true, // node hints of trafficDistribution PreferSameNode
}

// windowsGates are read by kube-proxy on Windows only.
var windowsGates = map[string]bool{"WinDSR": true, "WinOverlay": true}

// newFeatureGate returns a feature gate that knows kube-proxy 1.36's
// gates, set from featureGates as kube-proxy sets its own
// (utilfeature.DefaultMutableFeatureGate.SetFromMap in
// cmd/kube-proxy/app/options.go): an unknown gate, or a locked one set
// away from its value, is an error with kube-proxy's message. nftvs
// honours the logging gates (component-base logs API) and client-go's
// (once UseClientGoFeatureGates is called); a gate of
// notImplementedGates set to the value nftvs does not implement is an
// error; gates kube-proxy does not read (other components', Windows') are
// accepted with a warning, as kube-proxy accepts them without effect.
func newFeatureGate(featureGates map[string]bool) (featuregate.MutableVersionedFeatureGate, []string, error) {
	fg := featuregate.NewVersionedFeatureGate(version.Kube)
	if err := addKubeProxyFeatureGates(fg); err != nil {
		return nil, nil, fmt.Errorf("feature gates: %w", err)
	}
	if err := fg.SetFromMap(featureGates); err != nil {
		return nil, nil, err
	}
	logging := gateNames(logsapi.AddFeatureGates)
	clientGo := gateNames(func(g featuregate.MutableVersionedFeatureGate) error {
		return clientfeatures.AddVersionedFeaturesToExistingFeatureGates(clientGoGates{g})
	})
	var warnings, refused []string
	for _, name := range slices.Sorted(maps.Keys(featureGates)) {
		on := featureGates[name]
		g, notImplemented := notImplementedGates[name]
		switch {
		case logging[name], clientGo[name], implementedGates[name]:
		case notImplemented:
			if on != g.value {
				refused = append(refused, fmt.Sprintf("%s=%t: not implemented by nftvs (%s)", name, on, g.why))
			}
		case windowsGates[name]:
			warnings = append(warnings, fmt.Sprintf("feature gate %s applies to kube-proxy on Windows only", name))
		default:
			warnings = append(warnings, fmt.Sprintf("feature gate %s does not change what kube-proxy does, nor nftvs", name))
		}
	}
	if len(refused) > 0 {
		return fg, warnings, errors.New(strings.Join(refused, "; "))
	}
	return fg, warnings, nil
}

// addKubeProxyFeatureGates adds the gates kube-proxy 1.36 knows, as its
// binary registers them: component-base's logging, metrics and zpages
// gates and client-go's with their versions, and the others
// (k8s.io/kubernetes pkg/features, k8s.io/apiserver) as 1.36 has them
// (kubeFeatureGates).
func addKubeProxyFeatureGates(fg featuregate.MutableVersionedFeatureGate) error {
	for _, add := range []func(featuregate.MutableVersionedFeatureGate) error{
		logsapi.AddFeatureGates, metricsfeatures.AddFeatureGates, zpagesfeatures.AddFeatureGates,
		func(g featuregate.MutableVersionedFeatureGate) error {
			return clientfeatures.AddVersionedFeaturesToExistingFeatureGates(clientGoGates{g})
		},
	} {
		if err := add(fg); err != nil {
			return err
		}
	}
	known := fg.GetAll()
	rest := map[featuregate.Feature]featuregate.VersionedSpecs{}
	for name, spec := range kubeFeatureGates {
		if _, ok := known[featuregate.Feature(name)]; !ok {
			// 1.36's state, from 1.0 (featuregate wants a deprecated
			// gate to start at 1.0).
			spec.Version = utilversion.MajorMinor(1, 0)
			rest[featuregate.Feature(name)] = featuregate.VersionedSpecs{spec}
		}
	}
	return fg.AddVersioned(rest)
}

// gateNames are the names of the gates add registers.
func gateNames(add func(featuregate.MutableVersionedFeatureGate) error) map[string]bool {
	g := featuregate.NewVersionedFeatureGate(version.Kube)
	if err := add(g); err != nil {
		panic(err) // the gates of a module nftvs builds with
	}
	out := map[string]bool{}
	for name := range g.GetAll() {
		out[string(name)] = true
	}
	return out
}

// clientGoGates lets client-go's gates live in nftvs's feature gate, as
// k8s.io/kubernetes pkg/features/client_adapter.go does for kube-proxy.
type clientGoGates struct {
	fg featuregate.MutableVersionedFeatureGate
}

func (a clientGoGates) Enabled(name clientfeatures.Feature) bool {
	return a.fg.Enabled(featuregate.Feature(name))
}

func (a clientGoGates) AddVersioned(in map[clientfeatures.Feature]clientfeatures.VersionedSpecs) error {
	out := map[featuregate.Feature]featuregate.VersionedSpecs{}
	for name, specs := range in {
		for _, s := range specs {
			spec := featuregate.FeatureSpec{Default: s.Default, LockToDefault: s.LockToDefault, Version: s.Version}
			switch s.PreRelease {
			case clientfeatures.Alpha:
				spec.PreRelease = featuregate.Alpha
			case clientfeatures.Beta:
				spec.PreRelease = featuregate.Beta
			case clientfeatures.GA:
				spec.PreRelease = featuregate.GA
			case clientfeatures.Deprecated:
				spec.PreRelease = featuregate.Deprecated
			default:
				return fmt.Errorf("client-go feature %s: unknown stage %q", name, s.PreRelease)
			}
			out[featuregate.Feature(name)] = append(out[featuregate.Feature(name)], spec)
		}
	}
	return a.fg.AddVersioned(out)
}

// UseClientGoFeatureGates makes client-go read its gates from fg, as
// kube-proxy's does from its --feature-gates. Call it before any client
// is made.
func UseClientGoFeatureGates(fg featuregate.FeatureGate) {
	clientfeatures.ReplaceFeatureGates(clientGoReader{fg})
}

type clientGoReader struct{ fg featuregate.FeatureGate }

func (r clientGoReader) Enabled(name clientfeatures.Feature) bool {
	return r.fg.Enabled(featuregate.Feature(name))
}
