// Package servicemetrics exports IPVS's own traffic counters per Service
// port: what kube-router exports and kube-proxy never has. It owns
// nothing in the kernel and writes nothing: each scrape reads every
// virtual server's counters at once (ipvs.StatsReader: one netlink dump
// and one read of /proc/net/ip_vs), at most once per TTL, and sums them
// over the Service port's virtual servers (ClusterIP, node ports,
// external and load-balancer IPs, the fwmark one of externalTrafficPolicy
// Local) as the proxier last applied them (proxier.Proxier's view, read
// without the sync lock).
//
// Off by default (--ipvs-service-metrics): at 10k Services it adds 70k+
// series; real-server series (--ipvs-service-metrics-real-servers)
// multiply that by the endpoints.
package servicemetrics
