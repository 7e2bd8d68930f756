package app

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nftvs/nftvs/ipvs"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// Conntrack sysctls kube-proxy sets (pkg/proxy/conntrack/sysctls.go).
const (
	sysctlConntrackMax          = "net/netfilter/nf_conntrack_max"
	sysctlTCPTimeoutEstablished = "net/netfilter/nf_conntrack_tcp_timeout_established"
	sysctlTCPTimeoutCloseWait   = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	sysctlTCPBeLiberal          = "net/netfilter/nf_conntrack_tcp_be_liberal"
	sysctlUDPTimeout            = "net/netfilter/nf_conntrack_udp_timeout"
	sysctlUDPTimeoutStream      = "net/netfilter/nf_conntrack_udp_timeout_stream"
	// conntrackHashsizeParam is the hash table size, a module parameter.
	conntrackHashsizeParam = "/sys/module/nf_conntrack/parameters/hashsize"
	// conntrackMaxLimit caps max-per-core × CPUs, as kube-proxy does.
	conntrackMaxLimit = 1 << 20
	onlineCPUsFile    = "/sys/devices/system/cpu/online"
)

// conntrackMax is kube-proxy's getConntrackMax: max-per-core × CPUs,
// capped at 1M, at least min; 0 (leave nf_conntrack_max alone) when
// max-per-core is 0.
func conntrackMax(c v1alpha1.KubeProxyConntrackConfiguration, cpus int) int {
	if c.MaxPerCore == nil || *c.MaxPerCore <= 0 {
		return 0
	}
	floor := 0
	if c.Min != nil {
		floor = int(*c.Min)
	}
	scaled := int(*c.MaxPerCore) * cpus
	switch {
	case scaled > conntrackMaxLimit:
		return conntrackMaxLimit
	case scaled > floor:
		return scaled
	}
	return floor
}

// ConntrackSysctls lists the conntrack settings the configuration asks
// for, in kube-proxy's order: nf_conntrack_max, then each timeout that is
// positive, and be_liberal when set.
func ConntrackSysctls(c v1alpha1.KubeProxyConntrackConfiguration, cpus int) []ipvs.SysctlSetting {
	var out []ipvs.SysctlSetting
	if m := conntrackMax(c, cpus); m > 0 {
		out = append(out, ipvs.SysctlSetting{Name: sysctlConntrackMax, Value: m})
	}
	seconds := func(d time.Duration) int { return int(d / time.Second) }
	if c.TCPEstablishedTimeout != nil && c.TCPEstablishedTimeout.Duration > 0 {
		out = append(out, ipvs.SysctlSetting{Name: sysctlTCPTimeoutEstablished, Value: seconds(c.TCPEstablishedTimeout.Duration)})
	}
	if c.TCPCloseWaitTimeout != nil && c.TCPCloseWaitTimeout.Duration > 0 {
		out = append(out, ipvs.SysctlSetting{Name: sysctlTCPTimeoutCloseWait, Value: seconds(c.TCPCloseWaitTimeout.Duration)})
	}
	if c.TCPBeLiberal {
		out = append(out, ipvs.SysctlSetting{Name: sysctlTCPBeLiberal, Value: 1})
	}
	if c.UDPTimeout.Duration > 0 {
		out = append(out, ipvs.SysctlSetting{Name: sysctlUDPTimeout, Value: seconds(c.UDPTimeout.Duration)})
	}
	if c.UDPStreamTimeout.Duration > 0 {
		out = append(out, ipvs.SysctlSetting{Name: sysctlUDPTimeoutStream, Value: seconds(c.UDPStreamTimeout.Duration)})
	}
	return out
}

// setConntrackSysctls applies ConntrackSysctls, stopping at the first
// failure as kube-proxy does (which then refuses to start). Raising
// nf_conntrack_max also raises the hash table size to max/4 when it is
// smaller (hashsize is a module parameter, not a sysctl).
func setConntrackSysctls(s ipvs.Sysctl, c v1alpha1.KubeProxyConntrackConfiguration, hashsizePath string) error {
	for _, st := range ConntrackSysctls(c, onlineCPUs(onlineCPUsFile)) {
		if cur, err := s.Get(st.Name); err == nil && cur == st.Value {
			continue
		}
		klog.InfoS("Setting sysctl", "entry", st.Name, "value", st.Value)
		if err := s.Set(st.Name, st.Value); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("set conntrack sysctls (is nf_conntrack loaded?): %w", err)
			}
			return fmt.Errorf("set conntrack sysctls: %w", err)
		}
		if st.Name == sysctlConntrackMax && hashsizePath != "" {
			if err := raiseHashsize(hashsizePath, st.Value/4); err != nil {
				return fmt.Errorf("set conntrack sysctls: %w", err)
			}
		}
	}
	return nil
}

func raiseHashsize(path string, want int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read conntrack hashsize: %w", err)
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("read conntrack hashsize %s: %w", path, err)
	}
	if cur >= want {
		return nil
	}
	klog.InfoS("Setting conntrack hashsize", "conntrackHashsize", want)
	if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o640); err != nil {
		return fmt.Errorf("set conntrack hashsize to %d: %w", want, err)
	}
	return nil
}

// onlineCPUs counts the host's online CPUs from sysfs, as kube-proxy does
// (kubernetes#99225: a container's CPU affinity is not the host's CPU
// count), falling back to the Go runtime's count.
func onlineCPUs(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return runtime.NumCPU()
	}
	n, err := countCPUList(strings.TrimSpace(string(b)))
	if err != nil || n < 1 {
		return runtime.NumCPU()
	}
	return n
}

// countCPUList counts the CPUs of a list such as "0-3,5,7-8".
func countCPUList(s string) (int, error) {
	n := 0
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return 0, fmt.Errorf("cpu list %q: %w", s, err)
			}
		}
		if b < a {
			return 0, fmt.Errorf("cpu list %q: bad range %q", s, part)
		}
		n += b - a + 1
	}
	return n, nil
}
