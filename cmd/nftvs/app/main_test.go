package app

import (
	"strings"
	"testing"
)

func TestMainExitCodes(t *testing.T) {
	cases := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"--version"}, 0, "(in place of kube-proxy 1.36, IPVS mode)", ""},
		{[]string{"--help"}, 0, "--ipvs-scheduler", ""},
		{[]string{"--no-such-flag"}, 1, "", "unknown flag: --no-such-flag"},
		{[]string{"extra"}, 1, "", "takes no arguments"},
		{[]string{"--companion=iptables"}, 1, "", "--companion"},
		{[]string{"--proxy-mode=nftables"}, 1, "", "--proxy-mode"},
		{[]string{"--config=/nonexistent/kube-proxy.yaml"}, 1, "", "read config file"},
		{[]string{"--max-virtual-servers-per-service=0"}, 1, "", "must be at least 1"},
		{[]string{"--max-source-range-elements-per-service=-1"}, 1, "", "must be at least 1"},
	}
	for _, c := range cases {
		var out, errOut strings.Builder
		code := Main(c.args, &out, &errOut)
		if code != c.code || !strings.Contains(out.String(), c.stdout) || !strings.Contains(errOut.String(), c.stderr) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, %q", c.args, code, out.String(), errOut.String(), c.code, c.stdout, c.stderr)
		}
	}
}
