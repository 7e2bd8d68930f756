// Package app is the nftvs command: it wires the configuration (package
// config) to the kernel adapters (ipvs, nft, conntrack) through the
// proxier, the API server, and the health (package healthcheck) and
// metrics (package metrics) servers, and runs them.
//
// What it owns: the process (flags parsing and --help, logging,
// signals, oom_score_adj), the start-up sequence (kernel modules,
// sysctls, the Node, the first sync), the HTTP servers' listeners, and
// the conntrack sysctls (net/netfilter/nf_conntrack_*). Everything in the
// kernel beyond those sysctls is programmed through the proxier and the
// ipvs, nft and conntrack packages; on SIGTERM nothing is removed, so
// that connections survive a restart (kube-proxy does the same). Only
// --cleanup removes what nftvs programmed.
package app
