package app

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// net.ipv6.conf.all.forwarding is set only when the cluster uses IPv6:
// setting it turns off Router Advertisement acceptance on SLAAC nodes.
// Before, it was set whenever the kernel had IPv6.
func TestIPv6ForwardingOnlyWhenTheClusterUsesIPv6(t *testing.T) {
	v4 := []netip.Addr{netip.MustParseAddr("192.168.0.10")}
	dual := append(v4, netip.MustParseAddr("fd00::10"))
	for _, c := range []struct {
		name     string
		args     []string
		nodeIPs  []netip.Addr
		podCIDRs []string
		want     bool
	}{
		{"IPv4 node, no CIDRs", nil, v4, nil, false},
		{"IPv4 node and cluster CIDR", []string{"--cluster-cidr=10.244.0.0/16"}, v4, []string{"10.244.1.0/24"}, false},
		{"unknown node", nil, nil, nil, false},
		{"dual-stack node", nil, dual, nil, true},
		{"IPv6 cluster CIDR", []string{"--cluster-cidr=10.244.0.0/16,fd00:244::/56"}, v4, nil, true},
		{"IPv6 podCIDR", nil, v4, []string{"10.244.1.0/24", "fd00:244:0:1::/64"}, true},
		{"IPv6 bind address", []string{"--bind-address=fd00::10"}, nil, nil, true},
	} {
		if got := usesIPv6(mustParse(t, c.args...), c.nodeIPs, c.podCIDRs); got != c.want {
			t.Errorf("%s: usesIPv6 = %v, want %v", c.name, got, c.want)
		}
	}
}

type timeoutSetter struct {
	calls [][3]time.Duration
	err   error
}

func (s *timeoutSetter) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	s.calls = append(s.calls, [3]time.Duration{tcp, tcpFin, udp})
	return s.err
}

// IPVS timeouts that cannot be set are logged and nftvs goes on, as
// kube-proxy's IPVS mode does; before, nftvs stopped.
func TestIPVSTimeoutsAsKubeProxy(t *testing.T) {
	s := &timeoutSetter{}
	setIPVSTimeouts(s, mustParse(t).KubeProxy.IPVS)
	if len(s.calls) != 0 {
		t.Errorf("timeouts set with none configured: %v", s.calls)
	}
	s.err = errors.New("operation not permitted")
	setIPVSTimeouts(s, mustParse(t, "--ipvs-tcp-timeout=900s", "--ipvs-udp-timeout=30s").KubeProxy.IPVS)
	if len(s.calls) != 1 || s.calls[0] != [3]time.Duration{900 * time.Second, 0, 30 * time.Second} {
		t.Errorf("calls %v", s.calls)
	}
}
