// Package metrics owns the Prometheus metrics nftvs serves on /metrics:
// kube-proxy's (pkg/proxy/metrics: same names, types, labels, buckets and
// help), component-base's build and client-go metrics, and nftvs's own
// under nftvs_. It records what the proxier, the health server and the
// change tracker report, and wraps the conntrack cleaner to count its runs
// per IP family (NewInstrumentedConntrack); it never reads the kernel
// itself (the per-Service IPVS counters are package servicemetrics) and
// serves nothing (the command serves Gatherer).
package metrics
