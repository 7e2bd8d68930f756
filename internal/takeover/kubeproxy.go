package takeover

import "strings"

// KubeProxyChains are the chains kube-proxy's IPVS mode creates, by
// iptables table, the same in the ip and ip6 families. From upstream
// 1.36 pkg/proxy/ipvs/proxier.go (iptablesChains), plus:
//   - KUBE-PROXY-CANARY, kube-proxy's canary (mangle, nat, filter), which
//     it creates when it ever ran in iptables mode on this node;
//   - KUBE-FIREWALL in nat, where IPVS mode kept loadBalancerSourceRanges
//     before KUBE-PROXY-FIREWALL/KUBE-SOURCE-RANGES-FIREWALL (filter)
//     replaced it. The filter table's KUBE-FIREWALL is the kubelet's.
var KubeProxyChains = map[string][]string{
	"nat": {
		"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER",
		"KUBE-MARK-MASQ", "KUBE-FIREWALL", "KUBE-PROXY-CANARY",
	},
	"filter": {
		"KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
		"KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER", "KUBE-PROXY-CANARY",
	},
	"mangle": {"KUBE-PROXY-CANARY"},
}

// kubeProxyIPv4Sets are the ipsets of kube-proxy's IPVS mode (upstream
// pkg/proxy/ipvs/ipset.go, ipsetInfo in proxier.go).
var kubeProxyIPv4Sets = []string{
	"KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
	"KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-FW", "KUBE-LOAD-BALANCER-LOCAL",
	"KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR",
	"KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP",
	"KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
	"KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
}

// KubeProxyIPSets are kube-proxy's ipset names, IPv4 then IPv6. Upstream
// names the IPv6 sets "KUBE-6-…" and cuts them to ipset's 31 characters
// (NewIPSet in pkg/proxy/ipvs/ipset.go).
func KubeProxyIPSets() []string {
	out := append([]string(nil), kubeProxyIPv4Sets...)
	for _, n := range kubeProxyIPv4Sets {
		n6 := strings.Replace(n, "KUBE-", "KUBE-6-", 1)
		if len(n6) > 31 {
			n6 = n6[:31]
		}
		out = append(out, n6)
	}
	return out
}

// isKubeProxyChain reports whether name is one of kube-proxy's chains in
// the table.
func isKubeProxyChain(table, name string) bool {
	for _, c := range KubeProxyChains[table] {
		if c == name {
			return true
		}
	}
	return false
}
