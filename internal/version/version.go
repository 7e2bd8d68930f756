// Package version is what nftvs says about itself: its own version and
// the Kubernetes release whose kube-proxy it stands in for. It owns no
// state but the version set at build time.
package version

import (
	"runtime/debug"

	utilversion "k8s.io/apimachinery/pkg/util/version"
)

// version is set at build time
// (-ldflags "-X github.com/nftvs/nftvs/internal/version.version=v1.2.3");
// otherwise the module version is used.
var version = ""

// Get is the nftvs version.
func Get() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// Kube is the Kubernetes release whose kube-proxy nftvs stands in for:
// feature gate defaults are that release's, and kubernetes_build_info's
// major and minor are its.
var Kube = utilversion.MustParse("1.36")
