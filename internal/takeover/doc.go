// Package takeover removes what upstream kube-proxy's IPVS mode left in
// the kernel when nftvs replaces it on a running node
// (--takeover-kube-proxy), so that nftvs's one nftables table is the only
// companion of IPVS. IPVS itself (virtual servers, real servers,
// kube-ipvs0 and its addresses) is not this package's: the proxier's
// first sync adopts it in place (ipvs.Reconciler.Resync), which is what
// keeps established connections flowing.
//
// What it owns, and so may delete:
//   - in the iptables-nft tables filter, nat and mangle of the ip and ip6
//     families: the chains kube-proxy's IPVS mode creates (KubeProxyChains,
//     read from upstream pkg/proxy/ipvs/proxier.go, plus KUBE-PROXY-CANARY
//     and the nat KUBE-FIREWALL of releases before 1.26), their rules, and
//     the rules of the built-in (base) chains that jump or go to them;
//   - kube-proxy's ipsets (KubeProxyIPSets, the KUBE-6- names of IPv6
//     included), once no rule uses them.
//
// What it must never touch: any other chain or rule, even one named
// KUBE-*: the kubelet's KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT and filter
// KUBE-FIREWALL, KUBE-MARK-DROP, iptables-mode chains, CNI and Docker
// chains. A kube-proxy chain that a chain of someone else jumps to is kept
// whole (with what it jumps to), because deleting it would break that
// chain; only kube-proxy's own hooks into the built-in chains go. Other
// tables (inet nftvs, firewalld, users' tables), other ipsets, and
// iptables-legacy, which cannot be reached without the iptables binary:
// legacy tables are detected (/proc/net/ip_tables_names) and reported with
// what the administrator must run.
//
// Layers: PlanRuleset is a pure function from what was read to what to
// delete (tested with iptables-save fixtures); Netfilter and
// IPSets are the thin netlink adapters (google/nftables, one transaction
// guarded by the ruleset generation; vishvananda/netlink for ipset); Run
// drives them and is idempotent.
package takeover
