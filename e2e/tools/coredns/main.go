// Command coredns is CoreDNS as the real node (e2e/node) runs it for
// cluster DNS: upstream's coremain with only the plugins kubeadm's default
// Corefile uses, and the one upstream's DNS tests' own server uses (a full
// CoreDNS build compiles every cloud SDK). The
// version is the one kubeadm 1.36 deploys (CoreDNSVersion in
// k8s.io/kubernetes/cmd/kubeadm/app/constants).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	// Not in kubeadm's Corefile: upstream's DNS tests run /coredns from
	// the agnhost image as their own test server, with a Corefile of
	// `hosts` and `log` (test/e2e/network/dns_common.go,
	// generateCoreDNSConfigmap). Without it that server never started,
	// and "DNS configMap nameserver Change stubDomain" and "DNS should
	// support configurable pod resolv.conf" failed under both proxies.
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	// The registered plugins run in upstream's order (dnsserver.Directives);
	// the ones not linked in are simply absent.
	_ = dnsserver.Directives
	coremain.Run()
}
