package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Kind and API version of the configuration file. kube-proxy 1.36 serves
// v1alpha1 only (v1alpha2 exists upstream after 1.36, not in k8s.io/kube-proxy
// v0.36).
const Kind = "KubeProxyConfiguration"

// APIVersion is the only one served.
var APIVersion = v1alpha1.SchemeGroupVersion.String()

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
	case tm.Kind != Kind:
		return nil, warnings, fmt.Errorf("kind is %q, want %s", tm.Kind, Kind)
	case tm.APIVersion == APIVersion:
	case strings.HasPrefix(tm.APIVersion, v1alpha1.GroupName+"/"):
		return nil, warnings, fmt.Errorf("apiVersion %s is not served by kube-proxy 1.36 (nor by nftvs): use %s", tm.APIVersion, APIVersion)
	default:
		return nil, warnings, fmt.Errorf("apiVersion is %q, want %s", tm.APIVersion, APIVersion)
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

// Write writes the effective configuration as a
// KubeProxyConfiguration file (--write-config-to).
func Write(c *v1alpha1.KubeProxyConfiguration, path string) error {
	c = c.DeepCopy()
	c.APIVersion, c.Kind = APIVersion, Kind
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode configuration: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write configuration: %w", err)
	}
	return nil
}
