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
// (listed in a dump, but their real servers are not even read), any link but the dummy it is given (an address
// another interface holds is reported, not bound again; a non-dummy link
// of the dummy's name is an error, not deleted), addresses, routes and
// the IPVS connection table (there is no netlink call to delete one IPVS
// connection; conntrack cleanup lives in package conntrack, fed by
// Result.Removed).
//
// Layers, each with a real implementation and an in-memory fake:
//   - Interface: one netlink round trip per call (Kernel, Fake);
//   - Reconciler: desired Services against a cache of what was applied,
//     so a sync with nothing changed costs no round trip, and Resync
//     repairs drift from a dump;
//   - Addresses: the dummy link (NetlinkAddresses, FakeAddresses);
//   - Sysctl, EnsureSysctls, ProbeScheduler and ProbeSchedulers (which
//     schedulers the kernel offers, for Service annotations) for start-up;
//   - StatsReader: every virtual server's counters in one netlink dump,
//     and every real server's connection counts in one read of
//     /proc/net/ip_vs (read only), for the per-Service metrics.
//
// Kernel behaviour designed around (each checked by a vmtest):
//   - the kernel reports FlagHashed on every virtual server: masked when
//     comparing;
//   - a missing virtual server is ESRCH, a missing real server ENOENT, an
//     existing one EEXIST; dumping the real servers of a missing virtual
//     server returns none, without error;
//   - moby/ipvs never sends a real server's address family, so the kernel
//     takes the virtual server's: IPv6 real servers just work, but one of
//     the other family is stored mangled (2001:db8::1 on an IPv4 virtual
//     server becomes 32.1.13.184), so the Reconciler refuses mixed
//     families;
//   - an IPv6 virtual server's persistence netmask is a prefix length
//     (128; 0 is refused), an IPv4 one a mask (255.255.255.255);
//   - a /32 or /128 on a down dummy is a local address, IPv6 too; setting
//     a link down drops its IPv6 addresses (EnsureDummy does that to an up
//     kube-ipvs0; the next SyncAddresses restores them).
package ipvs
