// Package nft owns nftvs's nftables table: the companion layer that
// kube-proxy's IPVS mode builds from ipset and iptables (masquerade,
// hairpin, NodePort and LoadBalancer handling, source ranges, the filter
// that keeps host services off Service VIPs), rebuilt as one inet table
// programmed over netlink with github.com/google/nftables.
//
// The shape is declarative. Callers describe, per owner (a Service port, or
// the node), the set and map elements they need; the rules are fixed by the
// Config and their number never grows with the number of Services. A mirror
// counts the owners of every element, so one element can serve several
// Services, and Sync sends only what changed since the last sync, in one
// atomic transaction. A full sync rebuilds the table in one transaction
// when the kernel may have drifted (someone else changed the ruleset), and
// WatchDrift notices others' changes to the table as they happen. When the
// kernel refuses a transaction, the owners it refuses are found by
// bisection and reported (RefusedError); everyone else's elements are
// applied.
//
// Marks are shared: nftvs sets and clears only its masquerade bit, except
// on the first packet of internal connections to externalTrafficPolicy
// Local frontends, whose whole mark becomes the IPVS fwmark.
//
// The package touches nothing but its own table ("inet nftvs" by default):
// other tables (firewalld, Docker, iptables-nft, other users) are never read
// or written. An accept verdict here cannot override a drop in another
// table's base chain: each base chain decides for itself.
package nft
