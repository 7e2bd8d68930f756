// Package app is the nftvs command: kube-proxy's flags and
// KubeProxyConfiguration, their defaults and validation, and the wiring of
// the proxier to the kernel adapters, the API server, and the health,
// metrics and per-Service health check servers.
//
// Users swap the image of their kube-proxy DaemonSet and keep its
// arguments, so every kube-proxy 1.36 flag is accepted with kube-proxy's
// name and default. Flags of IPVS mode are implemented; flags of other
// modes (iptables-*, ...) are accepted and logged as not applying;
// feature gates are validated as kube-proxy validates them. As in kube-proxy, a --config file replaces the
// configuration flags: only --hostname-override and the logging flags
// override the file (the others are reported as ignored).
//
// What it owns: the process (flags, logging, signals, oom_score_adj), the
// HTTP servers, and the conntrack sysctls (net/netfilter/nf_conntrack_*).
// Everything in the kernel beyond those sysctls is programmed through the
// proxier and the ipvs, nft and conntrack packages; on SIGTERM nothing is
// removed, so that connections survive a restart (kube-proxy does the
// same). Only --cleanup removes what nftvs programmed.
package app
