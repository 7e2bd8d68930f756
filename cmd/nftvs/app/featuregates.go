package app

import (
	"fmt"
	"slices"

	utilversion "k8s.io/apimachinery/pkg/util/version"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json, as kube-proxy's main registers it
)

// kubeVersion is the Kubernetes release whose kube-proxy nftvs stands in
// for: feature gate defaults are that release's.
var kubeVersion = utilversion.MustParse("1.36")

// loggingFeatureGate is a feature gate holding the logging gates of the
// component-base logs API (LoggingAlphaOptions, LoggingBetaOptions,
// ContextualLogging), set from featureGates as kube-proxy would set them:
// kube-proxy needs LoggingAlphaOptions=true for --log-text-split-stream.
// nftvs has no other gates: the names of the others are returned, ignored.
func loggingFeatureGate(featureGates map[string]bool) (featuregate.FeatureGate, []string, error) {
	fg := featuregate.NewVersionedFeatureGate(kubeVersion)
	if err := logsapi.AddFeatureGates(fg); err != nil {
		return nil, nil, fmt.Errorf("logging feature gates: %w", err)
	}
	known := fg.GetAll()
	logging := map[string]bool{}
	var ignored []string
	for name, on := range featureGates {
		if _, ok := known[featuregate.Feature(name)]; ok {
			logging[name] = on
		} else {
			ignored = append(ignored, name)
		}
	}
	slices.Sort(ignored)
	if err := fg.SetFromMap(logging); err != nil {
		return nil, ignored, fmt.Errorf("logging feature gates: %w", err)
	}
	return fg, ignored, nil
}
