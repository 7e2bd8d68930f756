// Command nftvs is a Kubernetes service proxy that runs in place of
// kube-proxy's IPVS mode: IPVS load-balances, one nftables table does what
// kube-proxy did with iptables and ipset. It takes kube-proxy's flags and
// KubeProxyConfiguration; see package app and docs/architecture.md.
package main

import (
	"os"

	"github.com/nftvs/nftvs/cmd/nftvs/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
