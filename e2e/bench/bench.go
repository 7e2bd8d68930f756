// Package bench is the scale benchmark of nftvs side by side with upstream
// kube-proxy (issue #9): the same Services and EndpointSlices, created in
// one real kube-apiserver on the host, programmed by each proxy in a fresh
// VM with real IPVS. cmd/bench-upstream drives the control plane and the
// VMs; cmd/bench-guest runs in each VM, starts one proxy and measures it.
// This file holds what both sides share: the result of one run, the
// workload's addresses, the differential check of IPVS tables and the
// report (Markdown, JSON, SVG).
package bench

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
)

// The proxies compared.
const (
	ProxyNftvs    = "nftvs"    // the binary built from ./cmd/nftvs
	ProxyIPVS     = "ipvs"     // upstream kube-proxy --proxy-mode=ipvs
	ProxyNftables = "nftables" // upstream kube-proxy --proxy-mode=nftables
)

// Proxies in report order.
var Proxies = []string{ProxyNftvs, ProxyIPVS, ProxyNftables}

// ProxyTitle is how the report names a proxy.
func ProxyTitle(p string) string {
	switch p {
	case ProxyNftvs:
		return "nftvs"
	case ProxyIPVS:
		return "kube-proxy ipvs"
	case ProxyNftables:
		return "kube-proxy nftables"
	}
	return p
}

// UsesIPVS reports whether the proxy programs IPVS.
func UsesIPVS(p string) bool { return p == ProxyNftvs || p == ProxyIPVS }

// The workload. Every address is a pure function of the Service index, so
// that every proxy (and the differential check) sees the same objects.
const (
	Namespace   = "bench"
	NodeName    = "node-a"
	NodeIP      = "10.0.2.15" // the guest's eth0 (e2e/vm)
	ServiceCIDR = "10.96.0.0/16"
	ClusterCIDR = "10.128.0.0/9"
	ServicePort = 80
	TargetPort  = 8080
	// DirectPort is the backend's second port, for the direct-to-pod
	// data-plane baseline (no Service has it as target).
	DirectPort = 8081
	// FirstClusterIP is Service 0's ClusterIP; Service i has the i-th
	// address after it. 10.96.0.1 is the API server's own Service.
	firstClusterIP = "10.96.1.0"
	// Endpoint j of Service i is the (i*eps+j)-th address after
	// 10.128.0.0: Service 0's endpoints are 10.128.0.1..eps.
	firstEndpoint = "10.128.0.1"
	// AltEndpoint replaces the last endpoint of the changed Service in
	// the one-endpoint changes (outside every other endpoint).
	AltEndpoint = "10.127.255.1"
	// ClientIP is the client pod of the data-plane test.
	ClientIP = "10.255.255.2"
	// MaxServices is what the /16 Service CIDR holds after firstClusterIP.
	MaxServices = 65000
)

func addN(base string, n int) netip.Addr {
	a := netip.MustParseAddr(base).As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ServiceName is the name of Service i.
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// SliceName is the name of Service i's one EndpointSlice.
func SliceName(i int) string { return ServiceName(i) + "-x" }

// ClusterIP is Service i's ClusterIP.
func ClusterIP(i int) netip.Addr { return addN(firstClusterIP, i) }

// EndpointIP is endpoint j of Service i.
func EndpointIP(i, j, eps int) netip.Addr { return addN(firstEndpoint, i*eps+j) }

// IsBenchClusterIP reports whether a is the ClusterIP of one of the n
// Services of the workload.
func IsBenchClusterIP(a netip.Addr, n int) bool {
	return a.Is4() && !a.Less(ClusterIP(0)) && a.Less(ClusterIP(n))
}

// ChangedService is the Service whose endpoints the one-endpoint changes
// edit: one in the middle.
func ChangedService(n int) int { return n / 2 }

// Run is the result of one proxy at one size, written by bench-guest.
type Run struct {
	Proxy     string `json:"proxy"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpointsPerService"`
	Kernel    string `json:"kernel"`
	Version   string `json:"proxyVersion,omitempty"`

	// Programmed: the outside check saw every Service programmed within
	// the bound (FirstSyncBoundSeconds).
	Programmed            bool    `json:"programmed"`
	FirstSyncBoundSeconds float64 `json:"firstSyncBoundSeconds"`
	// FirstSyncWallSeconds is from the proxy's exec (every object
	// already in the API server) to the outside check passing, or to the
	// proxy's first sync reported when the first check after that passes
	// (bench-guest: the check waits for the report).
	FirstSyncWallSeconds float64 `json:"firstSyncWallSeconds,omitempty"`
	// KernelCompleteSeconds is from exec to the first time the kernel
	// held every Service (IPVS or nftables maps), whether or not the
	// proxy had reported its sync: for a proxy that hit the bound it
	// says how far it got (upstream IPVS mode writes IPVS first and its
	// iptables rules and ipsets after).
	KernelCompleteSeconds float64 `json:"kernelCompleteSeconds,omitempty"`
	// FirstSyncMetricSeconds is the proxy's own first observation of
	// kubeproxy_sync_proxy_rules_duration_seconds (IPv4).
	FirstSyncMetricSeconds float64 `json:"firstSyncMetricSeconds,omitempty"`
	// FirstSyncMetricCount is the histogram's count when it was first
	// seen non-zero: 1 unless syncs were missed between two scrapes
	// (then FirstSyncMetricSeconds is the mean).
	FirstSyncMetricCount int `json:"firstSyncMetricCount,omitempty"`
	// SyncsUntilProgrammed and SyncSecondsUntilProgrammed are the
	// sync histogram's count and sum when the outside check passed: a
	// proxy whose first sync ran before every object was known needs
	// more than one.
	SyncsUntilProgrammed       int     `json:"syncsUntilProgrammed,omitempty"`
	SyncSecondsUntilProgrammed float64 `json:"syncSecondsUntilProgrammed,omitempty"`
	// FirstSyncNetProg is kubeproxy_network_programming_duration_seconds
	// (sum, count) when the node was programmed.
	FirstSyncNetProgSum   float64 `json:"firstSyncNetworkProgrammingSum"`
	FirstSyncNetProgCount int     `json:"firstSyncNetworkProgrammingCount"`
	// CPUFirstSyncSeconds is the proxy's CPU time (user+system, its own
	// and its waited-for children's: iptables-restore, ipset, nft) from
	// start to programmed.
	CPUFirstSyncSeconds float64 `json:"cpuFirstSyncSeconds,omitempty"`

	Changes []Change `json:"changes,omitempty"`
	// SyncPeriodSeconds is the proxy's syncPeriod during the run (0 in
	// results from before it was recorded: 1 h).
	SyncPeriodSeconds float64 `json:"syncPeriodSeconds,omitempty"`
	// ChangeBoundSeconds bounds each change.
	ChangeBoundSeconds float64 `json:"changeBoundSeconds"`

	// CPUTotalSeconds and PeakRSSBytes are at the end of the run (before
	// the proxy is stopped): VmHWM of the proxy process itself.
	CPUTotalSeconds float64 `json:"cpuTotalSeconds,omitempty"`
	PeakRSSBytes    int64   `json:"peakRSSBytes,omitempty"`

	Counts Counts `json:"counts"`

	Conn *ConnResult `json:"dataPlane,omitempty"`
	// Direct is the same connection loop to one endpoint's pod address,
	// past no Service: the VM's own rate at that moment, so that
	// Conn/Direct is what the Service path costs, with the emulator's
	// and the host's swings divided out.
	Direct *ConnResult `json:"dataPlaneDirect,omitempty"`

	// Restart is nftvs stopped (SIGTERM) at the end of the run and
	// started again on the node it programmed (nftvs only).
	Restart *Restart `json:"restart,omitempty"`

	// Floor is the kernel floor of the first sync, measured in the same
	// VM after the proxy's run (nftvs only; RunFloor).
	Floor *Floor `json:"floor,omitempty"`

	// IPVS is the normalised IPVS table right after the first sync
	// (NormalizeIPVS), for the differential check.
	IPVS []string `json:"ipvs,omitempty"`

	// IPVSLines and IPVSHash summarise IPVS in the report (which drops
	// the table itself): its line count and a hash of it.
	IPVSLines int    `json:"ipvsLines,omitempty"`
	IPVSHash  string `json:"ipvsHash,omitempty"`
	// VMSeconds is the whole VM run, boot included (host side).
	VMSeconds float64 `json:"vmSeconds,omitempty"`

	Errors []string `json:"errors,omitempty"`
	// LogTail is the end of the proxy's log when something failed.
	LogTail string `json:"logTail,omitempty"`
}

// Restart is a second start of the proxy on the node its first one
// programmed, with the same objects in the API server.
type Restart struct {
	// ProgrammedSeconds is from exec to the proxy's first sync reported
	// (its metric seen, polled every 250 ms), CheckedSeconds to the
	// outside check passing after that (the kernel was programmed all
	// along; the check's own dump takes about a second at 10k under
	// emulation, so runs before 7 December, which ran it in the same
	// loop as the metric, counted up to two of them in ProgrammedSeconds);
	// InformersSyncedSeconds from exec to its informers' sync (its
	// "Informer caches synced" log line): ProgrammedSeconds less it is
	// what the first sync costs on a programmed node.
	ProgrammedSeconds      float64 `json:"programmedSeconds,omitempty"`
	CheckedSeconds         float64 `json:"checkedSeconds,omitempty"`
	InformersSyncedSeconds float64 `json:"informersSyncedSeconds,omitempty"`
	// FirstSyncSeconds is the first sync's own metric.
	FirstSyncSeconds float64 `json:"firstSyncSeconds,omitempty"`
	// FirstSyncDoneSeconds is from exec to the first sync's end in the
	// proxy's own log (its "Full sync" line, written as the sync
	// returns; runs from 7 December 09:00 UTC): less
	// InformersSyncedSeconds, the restart goal's figure, both from the
	// proxy's clock. ProgrammedSeconds adds the metric poll's lag, up to
	// a second when the VM is saturated after the sync (its GC).
	FirstSyncDoneSeconds float64 `json:"firstSyncDoneSeconds,omitempty"`
	// Writes until programmed, from the proxy's own counters:
	// nftvs_ipvs_netlink_writes_total, nftvs_address_writes_total and
	// nftvs_nft_element_writes_total, every op summed.
	IPVSWrites       int `json:"ipvsWrites"`
	AddressWrites    int `json:"addressWrites"`
	NFTElementWrites int `json:"nftElementWrites"`
	// CPUSeconds is the restarted proxy's CPU time until programmed.
	CPUSeconds float64 `json:"cpuSeconds,omitempty"`
	Error      string  `json:"error,omitempty"`
}

// sinceInformers is t less the informers' sync, 0 when either is unknown.
func (rs *Restart) sinceInformers(t float64) float64 {
	if rs.InformersSyncedSeconds <= 0 || t <= 0 {
		return 0
	}
	return t - rs.InformersSyncedSeconds
}

// Change is one one-endpoint change: an EndpointSlice update through the
// API server.
type Change struct {
	// SyncSeconds is the proxy's sync_proxy_rules_duration for the
	// sync(s) that followed (sum delta / count delta).
	SyncSeconds float64 `json:"syncSeconds"`
	Syncs       int     `json:"syncs"`
	// NetProgSeconds is network_programming_duration (delta mean), 0
	// when the proxy reported none.
	NetProgSeconds float64 `json:"networkProgrammingSeconds,omitempty"`
	// ObservedSeconds is from the update's start (before 7 December
	// 09:10 UTC its return) to the outside check seeing the new endpoint
	// programmed (for IPVS proxies polled in the kernel every 20 ms;
	// before 09:00, and for nftables mode, checked only after the sync
	// metric moved).
	ObservedSeconds float64 `json:"observedSeconds"`
	TimedOut        bool    `json:"timedOut,omitempty"`
}

// Counts are the kernel objects after the first sync.
type Counts struct {
	IPVSVirtualServers int `json:"ipvsVirtualServers"`
	IPVSRealServers    int `json:"ipvsRealServers"`
	KubeIPVS0Addresses int `json:"kubeIPVS0Addresses"`
	// NftRules and NftElements cover every nftables table, including
	// iptables-nft's (upstream IPVS mode's iptables rules live there).
	NftTables   int `json:"nftTables"`
	NftChains   int `json:"nftChains"`
	NftRules    int `json:"nftRules"`
	NftSets     int `json:"nftSets"`
	NftElements int `json:"nftElements"`
	// IptablesRules are the -A lines of iptables-save + ip6tables-save.
	IptablesRules int `json:"iptablesRules"`
	IpsetSets     int `json:"ipsetSets"`
	IpsetEntries  int `json:"ipsetEntries"`
}

// ConnResult is the data-plane test: new TCP connections through one
// ClusterIP, each connect + read the answer + close.
type ConnResult struct {
	Connections int     `json:"connections"`
	Errors      int     `json:"errors"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"perSecond"`
}

// Median of xs (the mean of the middle two for an even count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// Percentile q (0–100) of xs, nearest rank; 0 for none.
func Percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	i := int(math.Ceil(q/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Latency is the distribution of the changes' latencies: observed (the
// outside check) and network programming (the proxy's metric), p50 and
// p99, over the changes that completed.
type Latency struct {
	N                        int
	ObservedP50, ObservedP99 float64
	NetProgP50, NetProgP99   float64
	TimedOut                 int
}

// ChangeLatency is the run's Latency.
func (r *Run) ChangeLatency() Latency {
	var l Latency
	var o, np []float64
	for _, c := range r.Changes {
		if c.TimedOut {
			l.TimedOut++
			continue
		}
		o = append(o, c.ObservedSeconds)
		if c.NetProgSeconds > 0 {
			np = append(np, c.NetProgSeconds)
		}
	}
	l.N = len(o)
	l.ObservedP50, l.ObservedP99 = Percentile(o, 50), Percentile(o, 99)
	l.NetProgP50, l.NetProgP99 = Percentile(np, 50), Percentile(np, 99)
	return l
}

// ChangeMedian is the median sync duration of the changes that completed,
// and whether any timed out.
func (r *Run) ChangeMedian() (sync float64, observed float64, timedOut bool) {
	var s, o []float64
	for _, c := range r.Changes {
		if c.TimedOut {
			timedOut = true
			continue
		}
		s = append(s, c.SyncSeconds)
		o = append(o, c.ObservedSeconds)
	}
	return Median(s), Median(o), timedOut
}
