package app

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/ipvs"
)

// kube-proxy's getConntrackMax cases (pkg/proxy/conntrack/sysctls_test.go).
func TestConntrackMax(t *testing.T) {
	cases := []struct {
		maxPerCore, min *int32
		cpus            int
		want            int
	}{
		{nil, nil, 4, 0},
		{ptr.To[int32](0), ptr.To[int32](131072), 4, 0},
		{ptr.To[int32](32768), ptr.To[int32](131072), 2, 131072},   // the floor
		{ptr.To[int32](32768), ptr.To[int32](131072), 8, 262144},   // scaled
		{ptr.To[int32](32768), nil, 2, 65536},                      // no floor
		{ptr.To[int32](32768), ptr.To[int32](131072), 64, 1 << 20}, // capped at 1M
	}
	for _, c := range cases {
		got := conntrackMax(v1alpha1.KubeProxyConntrackConfiguration{MaxPerCore: c.maxPerCore, Min: c.min}, c.cpus)
		if got != c.want {
			t.Errorf("maxPerCore %v min %v cpus %d: %d, want %d", deref(c.maxPerCore), deref(c.min), c.cpus, got, c.want)
		}
	}
}

func deref(p *int32) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestConntrackSysctls(t *testing.T) {
	c := v1alpha1.KubeProxyConfiguration{}
	config.SetDefaults(&c)
	got := ConntrackSysctls(c.Conntrack, 2)
	want := []ipvs.SysctlSetting{
		{Name: "net/netfilter/nf_conntrack_max", Value: 131072},
		{Name: "net/netfilter/nf_conntrack_tcp_timeout_established", Value: 86400},
		{Name: "net/netfilter/nf_conntrack_tcp_timeout_close_wait", Value: 3600},
	}
	if !slices.Equal(got, want) {
		t.Errorf("defaults: %v, want %v", got, want)
	}
	c.Conntrack.MaxPerCore = ptr.To[int32](0)
	c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{}
	c.Conntrack.TCPBeLiberal = true
	c.Conntrack.UDPTimeout = metav1.Duration{Duration: 30 * time.Second}
	c.Conntrack.UDPStreamTimeout = metav1.Duration{Duration: 2 * time.Minute}
	got = ConntrackSysctls(c.Conntrack, 2)
	want = []ipvs.SysctlSetting{
		{Name: "net/netfilter/nf_conntrack_tcp_timeout_close_wait", Value: 3600},
		{Name: "net/netfilter/nf_conntrack_tcp_be_liberal", Value: 1},
		{Name: "net/netfilter/nf_conntrack_udp_timeout", Value: 30},
		{Name: "net/netfilter/nf_conntrack_udp_timeout_stream", Value: 120},
	}
	if !slices.Equal(got, want) {
		t.Errorf("set: %v, want %v", got, want)
	}
}

// setConntrackSysctls writes through a sysctl tree (a temporary one here)
// and raises the hash size with nf_conntrack_max.
func TestSetConntrackSysctls(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"net/netfilter/nf_conntrack_max":                     "65536",
		"net/netfilter/nf_conntrack_tcp_timeout_established": "432000",
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  "3600",
	}
	for name, v := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hashsize := filepath.Join(root, "hashsize")
	if err := os.WriteFile(hashsize, []byte("16384\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := v1alpha1.KubeProxyConfiguration{}
	config.SetDefaults(&c)
	c.Conntrack.Min = ptr.To[int32](1 << 20) // whatever the CPU count
	s := ipvs.Sysctl{Root: root}
	if err := setConntrackSysctls(s, c.Conntrack, hashsize); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"net/netfilter/nf_conntrack_max": 1 << 20, "net/netfilter/nf_conntrack_tcp_timeout_established": 86400} {
		if got, err := s.Get(name); err != nil || got != want {
			t.Errorf("%s = %d (%v), want %d", name, got, err, want)
		}
	}
	if b, _ := os.ReadFile(hashsize); strings.TrimSpace(string(b)) != strconv.Itoa(1<<18) {
		t.Errorf("hashsize %q, want max/4", b)
	}
	// A missing sysctl (nf_conntrack not loaded) is a clear error.
	c.Conntrack.TCPBeLiberal = true
	err := setConntrackSysctls(s, c.Conntrack, hashsize)
	if err == nil || !strings.Contains(err.Error(), "nf_conntrack_tcp_be_liberal") || !strings.Contains(err.Error(), "is nf_conntrack loaded?") {
		t.Errorf("missing sysctl: %v", err)
	}
}

func TestCountCPUList(t *testing.T) {
	for s, want := range map[string]int{"0": 1, "0-3": 4, "0-3,5,7-8": 7, "0,2": 2} {
		if got, err := countCPUList(s); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"a", "3-1", "1-x"} {
		if _, err := countCPUList(s); err == nil {
			t.Errorf("%q: no error", s)
		}
	}
}
