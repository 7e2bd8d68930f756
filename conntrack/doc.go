// Package conntrack deletes the nf_conntrack entries of Service flows
// whose backend is gone: nftvs's fix for kubernetes/kubernetes#81775.
//
// With net.ipv4.vs.conntrack=1 every IPVS flow also has a conntrack entry:
// original tuple client → frontend (ClusterIP:port, external or
// LoadBalancer IP:port, node IP:nodePort), reply tuple endpoint → client
// (or → node, when masqueraded). When an endpoint is removed, a client that
// reuses its source port matches the stale, confirmed entry, and IPVS drops
// the first SYN of the reused tuple instead of scheduling it anew. Upstream
// kube-proxy only cleans UDP entries; this package cleans TCP, UDP and SCTP,
// IPv4 and IPv6.
//
// What it owns: deleting the entries a Stale names, and only those: of
// its protocol, original destination one of its frontends, reply source
// its endpoint (or any reply source, for a UDP Service that had no
// endpoint). It never touches
//   - entries whose original destination is not a Service frontend: pod to
//     pod, the node's own connections, clients that reach an endpoint
//     directly, even when their reply source is a removed endpoint;
//   - entries of other endpoints or other frontends (those that match are
//     deleted in whichever conntrack zone they are);
//   - the IPVS connection table, which no netlink call can edit one
//     connection at a time: removing the real server (with
//     expire_nodest_conn=1, kernel 5.9+) is what flushes its IPVS
//     connections, and that is package ipvs's job, done before Clean;
//   - other network namespaces than its own.
//
// Cost: one Clean dumps the table at most once, whatever the number of
// Stale entries (an empty list dumps nothing), matches every entry against
// a hash index in Go, and deletes the matches in batched requests that
// name each entry's tuple, zone and id. A delete request without a tuple
// would flush the table: one is never sent. When every Stale shares the
// family and protocol (and possibly ports or an IPv4 address), the dump
// carries a kernel-side filter (CTA_FILTER, 5.9+) that is a superset of
// what the index matches; the kernel still walks every bucket, but copies
// out only what may match.
//
// Its cost, measured, is in docs/architecture.md (Conntrack cleanup).
package conntrack
