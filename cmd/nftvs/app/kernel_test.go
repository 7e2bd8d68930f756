package app

import (
	"cmp"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftvs/nftvs/ipvs"
)

// nftvs never sets net.ipv6.conf.all.forwarding, as kube-proxy 1.36
// never does (its IPVS mode writes only net.ipv4.ip_forward): on a SLAAC
// node, turning it on stops Router Advertisements being accepted. It
// checks and warns instead, when the cluster uses IPv6. Before, it set it.
func TestIPv6ForwardingCheckedNotSet(t *testing.T) {
	for _, c := range []struct {
		value    string // "" for a kernel without IPv6
		usesIPv6 bool
		warn     bool
	}{{"0", true, true}, {"1", true, false}, {"0", false, false}, {"", true, false}} {
		s := ipvs.Sysctl{Root: t.TempDir()}
		for _, n := range []string{ipvs.SysctlVSConntrack, ipvs.SysctlVSExpireNodestConn, ipvs.SysctlVSExpireQuiescentTemplate,
			ipvs.SysctlIPv4Forward, ipvs.SysctlIPv6Forward, ipvs.SysctlARPIgnore, ipvs.SysctlARPAnnounce} {
			if n == ipvs.SysctlIPv6Forward && c.value == "" {
				continue
			}
			p := filepath.Join(s.Root, n)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(cmp.Or(c.value, "0")), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// What setupKernel writes, for a dual-stack node with strict ARP.
		if err := ipvs.EnsureSysctls(s, ipvs.SysctlOptions{StrictARP: true, KernelRelease: "6.1.0"}); err != nil {
			t.Fatal(err)
		}
		w := checkIPv6Forwarding(s, c.usesIPv6)
		if got := w != ""; got != c.warn {
			t.Errorf("forwarding %q, cluster uses IPv6 %v: warning %q, want one: %v", c.value, c.usesIPv6, w, c.warn)
		}
		if c.warn && !strings.Contains(w, "net.ipv6.conf.all.forwarding=0") {
			t.Errorf("the warning does not name the sysctl: %s", w)
		}
		if c.value != "" {
			if v, err := s.Get(ipvs.SysctlIPv6Forward); err != nil || v != mustAtoi(t, c.value) {
				t.Errorf("net.ipv6.conf.all.forwarding was %s, is %d (%v): nftvs changed it", c.value, v, err)
			}
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
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
