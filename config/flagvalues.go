package config

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	netutils "k8s.io/utils/net"
)

// Flag values of kube-proxy's own types (k8s.io/component-base/cli/flag
// and cmd/kube-proxy/app), so that --help and parsing match it.

// ipVar is kube-proxy's utilflag.IPVar: an IP address. An empty value
// leaves the default, as kube-proxy's does.
type ipVar struct{ val *string }

func (v ipVar) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) == nil {
		return fmt.Errorf("%q is not a valid IP address", s)
	}
	*v.val = s
	return nil
}

func (v ipVar) String() string { return *v.val }
func (v ipVar) Type() string   { return "ip" }

// ipPortVar is kube-proxy's utilflag.IPPortVar: "IP" or "IP:port". An
// empty value leaves the default, as kube-proxy's does.
type ipPortVar struct{ val *string }

func (v ipPortVar) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) != nil {
		*v.val = s
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not in a valid format (ip or ip:port): %w", s, err)
	}
	if netutils.ParseIPSloppy(host) == nil {
		return fmt.Errorf("%q is not a valid IP address", host)
	}
	if _, err := netutils.ParsePort(port, true); err != nil {
		return fmt.Errorf("%q is not a valid number", port)
	}
	*v.val = s
	return nil
}

func (v ipPortVar) String() string { return *v.val }
func (v ipPortVar) Type() string   { return "ipport" }

// stringValue is a flag of a string type such as ProxyMode.
type stringValue[T ~string] struct {
	val      *T
	typeName string
}

func (v stringValue[T]) Set(s string) error { *v.val = T(s); return nil }
func (v stringValue[T]) String() string     { return string(*v.val) }
func (v stringValue[T]) Type() string       { return v.typeName }

// mapStringBool is component-base's MapStringBool: "a=true,b=false"; the
// first use replaces the default, later ones add to it.
type mapStringBool struct {
	m   *map[string]bool
	set *bool
}

func (v mapStringBool) Set(s string) error {
	if !*v.set || *v.m == nil {
		*v.m = map[string]bool{}
		*v.set = true
	}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("missing bool value for %s", kv)
		}
		b, err := strconv.ParseBool(strings.TrimSpace(val))
		if err != nil {
			return fmt.Errorf("invalid value of %s: %s, err: %w", k, val, err)
		}
		(*v.m)[strings.TrimSpace(k)] = b
	}
	return nil
}

func (v mapStringBool) String() string {
	if v.m == nil || *v.m == nil {
		return ""
	}
	pairs := make([]string, 0, len(*v.m))
	for k, b := range *v.m {
		pairs = append(pairs, fmt.Sprintf("%s=%t", k, b))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}

func (v mapStringBool) Type() string { return "mapStringBool" }

// versionValue is component-base's --version: "true" and "raw" print the
// version and exit.
type versionValue struct{ val *string }

// Another value (kube-proxy's --version=vX.Y.Z sets the version it
// reports) is accepted and prints nothing.
func (v versionValue) Set(s string) error { *v.val = s; return nil }

func (v versionValue) String() string   { return *v.val }
func (v versionValue) Type() string     { return "version" }
func (v versionValue) IsBoolFlag() bool { return true }
