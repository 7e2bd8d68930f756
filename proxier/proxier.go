package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// Config is the proxier's configuration.
type Config struct {
	PlanConfig
	// MinSyncPeriod (--ipvs-min-sync-period) is the least time between
	// syncs; SyncPeriod (--ipvs-sync-period) the most, and the period of
	// full resyncs that repair drift.
	MinSyncPeriod, SyncPeriod time.Duration
	// DrainTimeout bounds how long a draining real server (weight 0) is
	// kept for the connections it has (--ipvs-graceful-termination-period).
	DrainTimeout time.Duration
	// DummyName is the link holding Service addresses (kube-ipvs0).
	DummyName string
	// IPVSResyncPeriod is how often a full sync also dumps IPVS to repair
	// drift. A dump costs one netlink round trip per virtual server (IPVS
	// cannot list every real server at once), so at 10k Services it is
	// kept off the SyncPeriod path; other full syncs diff against the
	// cache. Default 5 minutes; the first sync always dumps.
	IPVSResyncPeriod time.Duration
	// NodePortAddresses, when set, is called on every full sync to
	// refresh Node.NodePortAddresses (local addresses change).
	NodePortAddresses func() ([]netip.Addr, error)
	// Now is the clock (tests replace it).
	Now func() time.Time
}

// Defaults, as kube-proxy's.
const (
	DefaultMinSyncPeriod = time.Second
	DefaultSyncPeriod    = 30 * time.Second
	DefaultDrainTimeout  = 30 * time.Second
	// DefaultIPVSResyncPeriod bounds how long IPVS drift can last.
	DefaultIPVSResyncPeriod = 5 * time.Minute
)

// Kernel is what the proxier programs: the kernel adapters.
type Kernel struct {
	IPVS      *ipvs.Reconciler
	Addresses ipvs.Addresses
	NFT       nft.Interface
	// Conntrack, when set, deletes the conntrack entries of flows to
	// removed real servers after each sync (nil: the cleaner is off).
	Conntrack conntrack.Interface
}

// SyncResult says what one sync did, for metrics and logs.
type SyncResult struct {
	Full          bool
	IPVSResync    bool // IPVS was dumped and repaired
	ServicesSeen  int  // Services recomputed
	IPVS          ipvs.Result
	NFT           []nft.SyncResult
	AddressesSync bool
	Removed       []ipvs.RemovedRealServer
	// Stale is what the conntrack cleaner was asked to delete, and
	// Conntrack what it did.
	Stale     []conntrack.Stale
	Conntrack conntrack.Result
	Duration  time.Duration
	// PendingSince is when the oldest change this sync programmed was
	// recorded (zero: it programmed no change, e.g. a periodic sync):
	// the start of kubeproxy_network_programming_duration_seconds.
	PendingSince time.Time
}

// Proxier watches Services and EndpointSlices and keeps IPVS, kube-ipvs0
// and the nftables table in step with them. Only Services that changed
// are planned again; only what their plans changed is sent to the kernel.
type Proxier struct {
	cfg Config
	k   Kernel

	mu       sync.Mutex
	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]map[string]*discovery.EndpointSlice
	dirty    map[types.NamespacedName]bool
	// dirtySince is when the oldest change in dirty was recorded (zero:
	// none), for the network programming latency.
	dirtySince     time.Time
	servicesSynced bool
	slicesSynced   bool
	trigger        chan struct{}

	// Owned by the sync goroutine (syncMu).
	syncMu    sync.Mutex
	applied   map[types.NamespacedName][]PortPlan
	addrCount map[netip.Addr]int
	drains    map[drainKey]time.Time // first seen at weight 0
	draining  map[types.NamespacedName]time.Time
	needFull  bool
	// lastIPVSResync is when IPVS was last dumped and repaired (zero:
	// never, so the first sync adopts or removes what it finds).
	lastIPVSResync time.Time
}

type drainKey struct {
	vs ipvs.VSKey
	rs netip.AddrPort
}

// New returns a proxier programming k.
func New(cfg Config, k Kernel) *Proxier {
	if cfg.MinSyncPeriod <= 0 {
		cfg.MinSyncPeriod = DefaultMinSyncPeriod
	}
	if cfg.SyncPeriod <= 0 {
		cfg.SyncPeriod = DefaultSyncPeriod
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.DummyName == "" {
		cfg.DummyName = ipvs.DummyName
	}
	if cfg.IPVSResyncPeriod <= 0 {
		cfg.IPVSResyncPeriod = DefaultIPVSResyncPeriod
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Proxier{
		cfg: cfg, k: k,
		services:  map[types.NamespacedName]*v1.Service{},
		slices:    map[types.NamespacedName]map[string]*discovery.EndpointSlice{},
		dirty:     map[types.NamespacedName]bool{},
		trigger:   make(chan struct{}, 1),
		applied:   map[types.NamespacedName][]PortPlan{},
		addrCount: map[netip.Addr]int{},
		drains:    map[drainKey]time.Time{},
		draining:  map[types.NamespacedName]time.Time{},
		needFull:  true,
	}
}

func (p *Proxier) kick() {
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

// OnServiceUpdate records a Service's new state (nil: deleted).
func (p *Proxier) OnServiceUpdate(name types.NamespacedName, svc *v1.Service) {
	p.mu.Lock()
	if svc == nil {
		delete(p.services, name)
	} else {
		p.services[name] = svc
	}
	p.markDirty(name)
	p.mu.Unlock()
	p.kick()
}

// markDirty queues a Service for the next sync; p.mu is held.
func (p *Proxier) markDirty(name types.NamespacedName) {
	if len(p.dirty) == 0 && p.dirtySince.IsZero() {
		p.dirtySince = p.cfg.Now()
	}
	p.dirty[name] = true
}

// OnEndpointSliceUpdate records a slice's new state (nil: deleted). The
// slice belongs to the Service named by its kubernetes.io/service-name
// label.
func (p *Proxier) OnEndpointSliceUpdate(namespace, sliceName string, slice *discovery.EndpointSlice, service string) {
	if service == "" {
		return
	}
	name := types.NamespacedName{Namespace: namespace, Name: service}
	p.mu.Lock()
	if slice == nil {
		delete(p.slices[name], sliceName)
		if len(p.slices[name]) == 0 {
			delete(p.slices, name)
		}
	} else {
		if p.slices[name] == nil {
			p.slices[name] = map[string]*discovery.EndpointSlice{}
		}
		p.slices[name][sliceName] = slice
	}
	p.markDirty(name)
	p.mu.Unlock()
	p.kick()
}

// OnNodeUpdate records this node's topology zone and addresses; a change
// replans every Service.
func (p *Proxier) OnNodeUpdate(zone string, ips []netip.Addr) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if zone == p.cfg.Node.Zone && slices.Equal(ips, p.cfg.Node.IPs) {
		return
	}
	p.cfg.Node.Zone, p.cfg.Node.IPs = zone, ips
	p.needFull = true
	p.kick()
}

// SetSynced marks the informer caches synced: nothing is programmed
// before, so a restart never programs a partial view.
func (p *Proxier) SetSynced(services, slices bool) {
	p.mu.Lock()
	p.servicesSynced = p.servicesSynced || services
	p.slicesSynced = p.slicesSynced || slices
	p.mu.Unlock()
	p.kick()
}

func (p *Proxier) ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.servicesSynced && p.slicesSynced
}

// Run syncs until ctx ends: at most every MinSyncPeriod after a change, at
// least every SyncPeriod (a full sync), retrying failures with backoff.
// onSync, if set, sees every sync's outcome.
func (p *Proxier) Run(ctx context.Context, onSync func(SyncResult, error)) {
	full := time.NewTicker(p.cfg.SyncPeriod)
	defer full.Stop()
	var last time.Time
	backoff := time.Duration(0)
	for {
		wantFull := false
		var drainTimer <-chan time.Time
		if d := p.nextDrainDeadline(); !d.IsZero() {
			drainTimer = time.After(max(time.Until(d), 0))
		}
		select {
		case <-ctx.Done():
			return
		case <-p.trigger:
		case <-full.C:
			wantFull = true
		case <-drainTimer:
		}
		if !p.ready() {
			continue
		}
		if wait := p.cfg.MinSyncPeriod - time.Since(last) + backoff; wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		res, err := p.Sync(wantFull)
		if onSync != nil {
			onSync(res, err)
		}
		if err != nil {
			backoff = min(max(2*backoff, time.Second), p.cfg.SyncPeriod)
			klog.ErrorS(err, "Sync failed, retrying", "backoff", backoff)
			p.kick()
			continue
		}
		backoff = 0
	}
}

func (p *Proxier) nextDrainDeadline() time.Time {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	var next time.Time
	for _, d := range p.draining {
		if next.IsZero() || d.Before(next) {
			next = d
		}
	}
	return next
}

// Sync plans the Services that changed (all of them when full, or when a
// previous sync failed) and applies the difference, in an order that never
// refuses a good connection: nft elements for new frontends first, then
// virtual servers, then addresses; on removal the reverse.
func (p *Proxier) Sync(full bool) (SyncResult, error) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	start := p.cfg.Now()
	full = full || p.needFull
	res := SyncResult{Full: full}

	p.mu.Lock()
	work := map[types.NamespacedName]bool{}
	if full {
		for n := range p.services {
			work[n] = true
		}
		for n := range p.applied {
			work[n] = true
		}
	}
	for n := range p.dirty {
		work[n] = true
	}
	clear(p.dirty)
	res.PendingSince, p.dirtySince = p.dirtySince, time.Time{}
	type input struct {
		svc    *v1.Service
		slices []*discovery.EndpointSlice
	}
	inputs := make(map[types.NamespacedName]input, len(work))
	for n := range work {
		in := input{svc: p.services[n]}
		for _, s := range p.slices[n] {
			in.slices = append(in.slices, s)
		}
		inputs[n] = in
	}
	p.mu.Unlock()
	for n, d := range p.draining {
		if !d.After(start) {
			work[n] = true
			if _, ok := inputs[n]; !ok {
				p.mu.Lock()
				in := input{svc: p.services[n]}
				for _, s := range p.slices[n] {
					in.slices = append(in.slices, s)
				}
				p.mu.Unlock()
				inputs[n] = in
			}
		}
	}

	if full && p.cfg.NodePortAddresses != nil {
		if addrs, err := p.cfg.NodePortAddresses(); err != nil {
			klog.ErrorS(err, "Listing node port addresses; keeping the previous ones")
		} else {
			p.cfg.Node.NodePortAddresses = addrs
		}
	}

	// Plan.
	planned := make(map[types.NamespacedName][]PortPlan, len(work))
	for n := range work {
		in := inputs[n]
		if in.svc == nil {
			planned[n] = nil
			continue
		}
		plans, err := PlanService(in.svc, in.slices, &p.cfg.PlanConfig)
		if err != nil {
			// The rest of the Service is planned; the bad parts are left out.
			klog.ErrorS(err, "Service has fields that cannot be programmed", "service", n)
		}
		planned[n] = p.boundDrains(n, plans, start)
	}
	res.ServicesSeen = len(planned)

	var errs []error
	// 1. nft: owners get the union of old and new elements, so new
	// frontends are accepted before their VIP answers.
	for n, plans := range planned {
		old := portsByName(p.applied[n])
		for _, pl := range plans {
			els := pl.Elements
			if o, ok := old[pl.Name]; ok {
				els = append(slices.Clone(o.Elements), els...)
			}
			if err := p.k.NFT.SetElements(pl.Name.String(), els); err != nil {
				klog.ErrorS(err, "Some nftables elements refused", "servicePort", pl.Name)
			}
		}
	}
	r, err := p.k.NFT.Sync(full)
	res.NFT = append(res.NFT, r)
	if err != nil {
		// Without the companion table in place, do not move IPVS ahead of
		// it: try again later.
		p.requeue(work, res.PendingSince)
		return res, fmt.Errorf("nftables: %w", err)
	}

	// 2. IPVS virtual and real servers, new and changed.
	var upserts []ipvs.Service
	var deletes []ipvs.VSKey
	for n, plans := range planned {
		want := map[ipvs.VSKey]bool{}
		for _, pl := range plans {
			for _, s := range pl.Services {
				upserts = append(upserts, s)
				want[s.Key()] = true
			}
		}
		for _, pl := range p.applied[n] {
			for _, s := range pl.Services {
				if !want[s.Key()] {
					deletes = append(deletes, s.Key())
				}
			}
		}
	}
	if full && (p.lastIPVSResync.IsZero() || start.Sub(p.lastIPVSResync) >= p.cfg.IPVSResyncPeriod) {
		var all []ipvs.Service
		for n, plans := range p.applied {
			if _, replanned := planned[n]; replanned {
				continue
			}
			for _, pl := range plans {
				all = append(all, pl.Services...)
			}
		}
		all = append(all, upserts...)
		r, err := p.k.IPVS.Resync(all)
		res.IPVS = r
		res.IPVSResync = true
		res.Removed = append(res.Removed, r.Removed...)
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs resync: %w", err))
		} else {
			p.lastIPVSResync = start
			deletes = nil // Resync removed every virtual server not in all
		}
	} else {
		r, err := p.k.IPVS.Apply(upserts, nil)
		res.IPVS = r
		res.Removed = append(res.Removed, r.Removed...)
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
		}
	}

	// 3. Addresses on kube-ipvs0. New references are counted before old
	// ones are dropped, so a replanned Service that keeps its addresses
	// (an endpoint change) never takes a count through zero: no address
	// changes, and the interface's addresses are not listed and diffed
	// (an O(Services) netlink dump) for a sync that changes none.
	changed := full
	for n, plans := range planned {
		for _, pl := range plans {
			for _, a := range pl.Addresses {
				if p.addrCount[a]++; p.addrCount[a] == 1 {
					changed = true
				}
			}
		}
		for _, pl := range p.applied[n] {
			for _, a := range pl.Addresses {
				if p.addrCount[a]--; p.addrCount[a] <= 0 {
					delete(p.addrCount, a)
					changed = true
				}
			}
		}
	}
	if changed {
		res.AddressesSync = true
		if err := p.k.Addresses.EnsureDummy(p.cfg.DummyName); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.cfg.DummyName, err))
		} else {
			want := make([]netip.Addr, 0, len(p.addrCount))
			for a := range p.addrCount {
				want = append(want, a)
			}
			slices.SortFunc(want, netip.Addr.Compare)
			if _, _, err := p.k.Addresses.SyncAddresses(p.cfg.DummyName, want); err != nil {
				var inUse *ipvs.AddressInUseError
				if errors.As(err, &inUse) {
					klog.V(2).InfoS("Service addresses already on another interface, not bound again", "detail", inUse.Error())
				} else {
					errs = append(errs, fmt.Errorf("addresses of %s: %w", p.cfg.DummyName, err))
				}
			}
		}
	}

	// 4. Virtual servers no longer wanted (their addresses are gone).
	if len(deletes) > 0 {
		r, err := p.k.IPVS.Apply(nil, deletes)
		res.IPVS.Writes = res.IPVS.Writes.Add(r.Writes)
		res.Removed = append(res.Removed, r.Removed...)
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
		}
	}

	// 5. nft: owners keep only their new elements; gone ports lose theirs.
	oldPlans := make(map[types.NamespacedName][]PortPlan, len(planned))
	for n := range planned {
		oldPlans[n] = p.applied[n]
	}
	for n, plans := range planned {
		now := portsByName(plans)
		for _, pl := range plans {
			_ = p.k.NFT.SetElements(pl.Name.String(), pl.Elements)
		}
		for name := range portsByName(p.applied[n]) {
			if _, ok := now[name]; !ok {
				_ = p.k.NFT.SetElements(name.String(), nil)
			}
		}
		if plans == nil {
			delete(p.applied, n)
		} else {
			p.applied[n] = plans
		}
	}
	r, err = p.k.NFT.Sync(false)
	res.NFT = append(res.NFT, r)
	if err != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	}

	// 6. Flows to real servers that are gone: IPVS flushed its own
	// connections when the real server was deleted (kernel 5.9+ with
	// expire_nodest_conn), the cleaner removes the conntrack entries that
	// would otherwise make a reused 5-tuple hit a dead pod
	// (kubernetes#81775).
	res.Stale = staleFlows(res.Removed, oldPlans, planned)
	if p.k.Conntrack != nil && len(res.Stale) > 0 {
		r, err := p.k.Conntrack.Clean(res.Stale)
		res.Conntrack = r
		if err != nil {
			// Not worth failing the sync for: the entries expire by
			// themselves; log and go on.
			klog.ErrorS(err, "Cleaning conntrack entries of removed endpoints")
		}
	}

	if len(errs) > 0 {
		p.requeue(work, res.PendingSince)
	} else {
		p.needFull = false
	}
	res.Duration = p.cfg.Now().Sub(start)
	return res, errors.Join(errs...)
}

// staleFlows turns removed real servers into conntrack deletions: entries
// whose original destination is a frontend of the virtual server (for a
// fwmark virtual server, every frontend of its Service port) and whose
// reply comes from the removed real server. UDP ports that had no
// endpoint and now have one also get their entries to the frontends
// flushed whatever the reply source, as kube-proxy does: datagrams sent
// while there was no endpoint left entries that would blackhole the flow.
func staleFlows(removed []ipvs.RemovedRealServer, old map[types.NamespacedName][]PortPlan, planned map[types.NamespacedName][]PortPlan) []conntrack.Stale {
	type target struct {
		proto     v1.Protocol
		frontends []netip.AddrPort
	}
	targets := map[ipvs.VSKey]target{}
	add := func(plans map[types.NamespacedName][]PortPlan) {
		for _, ps := range plans {
			for _, pl := range ps {
				for _, s := range pl.Services {
					k := s.Key()
					if _, done := targets[k]; done {
						continue
					}
					t := target{proto: pl.Name.Protocol}
					for _, o := range pl.Services {
						ok := o.Key()
						// A fwmark virtual server is reached through every
						// frontend of its port and family.
						if ok.FWMark == 0 && (ok == k || k.FWMark != 0 && ok.Address.Is6() == k.IPv6) {
							t.frontends = append(t.frontends, netip.AddrPortFrom(ok.Address, ok.Port))
						}
					}
					targets[k] = t
				}
			}
		}
	}
	add(old)
	add(planned)
	var out []conntrack.Stale
	for _, r := range removed {
		t, ok := targets[r.VirtualServer.Key()]
		if !ok || len(t.frontends) == 0 {
			continue
		}
		out = append(out, conntrack.Stale{Protocol: conntrack.Protocol(t.proto),
			Frontends: t.frontends, Endpoint: r.RealServer.AddrPort()})
	}
	for n, plans := range planned {
		before := portsByName(old[n])
		for _, pl := range plans {
			if pl.Name.Protocol != v1.ProtocolUDP {
				continue
			}
			for _, s := range pl.Services {
				if s.FWMark != 0 || !servesAny(s) || servesAny(findService(before[pl.Name], s.Key())) {
					continue
				}
				out = append(out, conntrack.Stale{Protocol: conntrack.ProtocolUDP,
					Frontends: []netip.AddrPort{netip.AddrPortFrom(s.Address, s.Port)}})
			}
		}
	}
	return out
}

func servesAny(s ipvs.Service) bool {
	for _, r := range s.RealServers {
		if r.Weight > 0 {
			return true
		}
	}
	return false
}

func findService(pl PortPlan, k ipvs.VSKey) ipvs.Service {
	for _, s := range pl.Services {
		if s.Key() == k {
			return s
		}
	}
	return ipvs.Service{}
}

func (p *Proxier) requeue(work map[types.NamespacedName]bool, since time.Time) {
	p.needFull = true
	p.mu.Lock()
	for n := range work {
		p.dirty[n] = true
	}
	// The failed sync's changes are still pending since they were seen.
	if !since.IsZero() && (p.dirtySince.IsZero() || since.Before(p.dirtySince)) {
		p.dirtySince = since
	}
	p.mu.Unlock()
}

// boundDrains drops real servers that have drained (weight 0) for longer
// than DrainTimeout, and remembers when the Service must be looked at
// again.
func (p *Proxier) boundDrains(n types.NamespacedName, plans []PortPlan, now time.Time) []PortPlan {
	delete(p.draining, n)
	seen := map[drainKey]bool{}
	for i := range plans {
		for j := range plans[i].Services {
			s := &plans[i].Services[j]
			kept := s.RealServers[:0]
			for _, r := range s.RealServers {
				k := drainKey{s.Key(), r.AddrPort()}
				if r.Weight > 0 {
					delete(p.drains, k)
					kept = append(kept, r)
					continue
				}
				seen[k] = true
				first, ok := p.drains[k]
				if !ok {
					first = now
					p.drains[k] = now
				}
				deadline := first.Add(p.cfg.DrainTimeout)
				if !deadline.After(now) {
					continue // drained long enough: remove it
				}
				if d, ok := p.draining[n]; !ok || deadline.Before(d) {
					p.draining[n] = deadline
				}
				kept = append(kept, r)
			}
			s.RealServers = kept
		}
	}
	// Forget drains of this Service's real servers that are no longer
	// planned at weight 0 (removed, or back in service).
	for k := range p.drains {
		if seen[k] {
			continue
		}
		for _, pl := range p.applied[n] {
			for _, s := range pl.Services {
				if s.Key() == k.vs {
					delete(p.drains, k)
				}
			}
		}
	}
	return plans
}

func portsByName(plans []PortPlan) map[ServicePortName]PortPlan {
	m := make(map[ServicePortName]PortPlan, len(plans))
	for _, pl := range plans {
		m[pl.Name] = pl
	}
	return m
}

// ServiceHealth is what a Service port's health check node port answers
// (externalTrafficPolicy Local LoadBalancers).
type ServiceHealth struct {
	Name           ServicePortName
	NodePort       int
	LocalEndpoints int
}

// HealthChecks lists the health check node ports of the Services as last
// applied.
func (p *Proxier) HealthChecks() []ServiceHealth {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	var out []ServiceHealth
	for _, plans := range p.applied {
		for _, pl := range plans {
			if pl.HealthCheckNodePort > 0 {
				out = append(out, ServiceHealth{Name: pl.Name, NodePort: pl.HealthCheckNodePort, LocalEndpoints: pl.LocalEndpoints})
			}
		}
	}
	slices.SortFunc(out, func(a, b ServiceHealth) int { return a.NodePort - b.NodePort })
	return out
}

// NoLocalEndpoints counts Service ports with a Local traffic policy and no
// local endpoint, per traffic kind ("internal", "external"), as kube-proxy's
// sync_proxy_rules_no_local_endpoints_total gauge reports them.
func (p *Proxier) NoLocalEndpoints() (internal, external int) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	for _, plans := range p.applied {
		for _, pl := range plans {
			if pl.InternalNoLocal {
				internal++
			}
			if pl.ExternalNoLocal {
				external++
			}
		}
	}
	return internal, external
}

// Pending counts Services changed but not yet synced (for the
// sync_proxy_rules_*_changes_pending gauges).
func (p *Proxier) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.dirty)
}
