// Package ipvs owns nftvs's load-balancing half: IPVS virtual and real
// servers, the kube-ipvs0 dummy link that makes Service addresses local,
// and the sysctls IPVS mode needs. It speaks netlink (github.com/moby/ipvs
// for IPVS, github.com/vishvananda/netlink for links), never ipvsadm or ip.
//
// What it owns, and so may create, change and delete:
//   - every IPVS virtual server (and its real servers) whose address is not
//     inside --ipvs-exclude-cidrs, and every fwmark virtual server: a
//     Resync deletes those it was not asked to keep;
//   - the kube-ipvs0 dummy link (kept down) and its addresses;
//   - the IPVS timeouts and the sysctls listed by Sysctls
//     (net/ipv4/vs/*, forwarding, strict ARP).
//
// What it must never touch: virtual servers inside the exclude CIDRs
// (they are not even read), any link but the dummy it is given (an address
// another interface holds is reported, not bound again; a non-dummy link
// of the dummy's name is an error, not deleted), addresses, routes and
// the IPVS connection table (there is no netlink call to delete one IPVS
// connection; conntrack cleanup lives in package conntrack, fed by
// Result.Removed).
//
// Layers, each with a real implementation and an in-memory fake:
//   - Interface: one netlink round trip per call (Kernel, Fake, and
//     Counting to count calls);
//   - Reconciler: desired Services against a cache of what was applied,
//     so a sync with nothing changed costs no round trip, and Resync
//     repairs drift from a dump;
//   - Addresses: the dummy link (NetlinkAddresses, FakeAddresses);
//   - Sysctl, EnsureSysctls and ProbeScheduler for start-up.
//
// Kernel behaviour designed around: the kernel reports FlagHashed on every
// virtual server (masked when comparing); a missing virtual server is
// ESRCH, a missing real server ENOENT, an existing one EEXIST; a real
// server's address family defaults to its virtual server's (moby/ipvs
// never sends it, and nftvs never mixes families); an IPv6 virtual server
// needs a persistence netmask of 128 (a prefix length), an IPv4 one
// 255.255.255.255; dumping the real servers of a missing virtual server
// returns none, without error.
package ipvs
