package proxier

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

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
	// DrainTimeout, when positive, bounds how long a draining real server
	// (weight 0) is kept for the connections it has
	// (--ipvs-graceful-termination-period). Zero keeps it until it has
	// none, as kube-proxy does (drain.go).
	DrainTimeout time.Duration
	// DrainCheckPeriod is how often the connections of draining real
	// servers are counted (default 10 s; kube-proxy's is a minute).
	DrainCheckPeriod time.Duration
	// DummyName is the link holding Service addresses (kube-ipvs0).
	DummyName string
	// IPVSResyncPeriod is how often a full sync also dumps IPVS to repair
	// drift. A dump costs one netlink round trip per virtual server (IPVS
	// cannot list every real server at once), so at 10k Services it is
	// kept off the SyncPeriod path; other full syncs diff against the
	// cache. Default 5 minutes; the first sync always dumps.
	IPVSResyncPeriod time.Duration
	// HostAddresses, when set, lists the node's addresses on every full
	// sync, to refresh Node.NodePortAddresses and Node.LocalAddresses
	// (local addresses change without a Node update): every address of
	// every link but DummyName, in one dump. A kernel read (a periodic
	// repair's, a restart's read ahead) takes them from its dump of
	// DummyName's addresses instead, which lists every link's: at 10k
	// Services each dump walks 10k Service addresses, and one is enough.
	HostAddresses func() ([]netip.Addr, error)
	// NodePortAddresses and LocalAddresses choose Node.NodePortAddresses
	// and Node.LocalAddresses among the HostAddresses (nil: that list is
	// not refreshed).
	NodePortAddresses, LocalAddresses func(host []netip.Addr) []netip.Addr
	// Warn, when set, is told of every part of a Service that is not
	// programmed as asked (a FieldError's reason and message), once each
	// time the Service's problems change: kube-proxy's way is a Warning
	// Event on the Service.
	Warn func(service types.NamespacedName, reason, message string)
	// BindAddress is a --bind-address other than 0.0.0.0 or :: (invalid
	// otherwise): one of the node's IPs (NodeIPs) on every Node update.
	BindAddress netip.Addr
	// Clock decides every time in the proxier: the sync loop's tickers
	// and timers (Run), sync durations, drain deadlines (nil: the real
	// clock; tests use a fake one).
	Clock clock.WithTicker
}

// Defaults, as kube-proxy's.
const (
	DefaultMinSyncPeriod = time.Second
	DefaultSyncPeriod    = 30 * time.Second
	// DefaultDrainCheckPeriod: a drained real server leaves within this
	// of its last connection's IPVS entry expiring.
	DefaultDrainCheckPeriod = 10 * time.Second
	// DefaultIPVSResyncPeriod bounds how long IPVS drift can last.
	DefaultIPVSResyncPeriod = 5 * time.Minute
)

// Dataplane is what the proxier programs: the adapters of the kernel
// subsystems (IPVS, kube-ipvs0's addresses, the nftables table,
// conntrack). The name is not Kernel: ipvs.Kernel is the IPVS netlink
// handle.
type Dataplane struct {
	IPVS      *ipvs.Reconciler
	Addresses ipvs.Addresses
	NFT       nft.Interface
	// Conntrack, when set, deletes the conntrack entries of flows to
	// removed real servers, queued by each sync and deleted off the sync
	// path (nil: the cleaner is off).
	Conntrack conntrack.Interface
}

// SyncResult says what one sync did, for metrics and logs.
type SyncResult struct {
	Full              bool // every Service replanned
	Repair            bool // the kernel checked for drift whole (Repair, and every full sync)
	IPVSResync        bool // IPVS was dumped and repaired
	ServicesReplanned int  // Services planned again by this sync (all of them in a full sync)
	IPVS              ipvs.Result
	NFT               []nft.SyncResult
	AddressesSync     bool
	// AddressesAdded and AddressesRemoved count the kube-ipvs0 address
	// writes of the sync.
	AddressesAdded, AddressesRemoved int
	Removed                          []ipvs.RemovedRealServer
	// Stale is what the sync queued for the conntrack cleaner to delete
	// (cleanqueue.go: the deletion happens after the sync returns).
	Stale []conntrack.Stale
	// Refused are what was refused, each once: virtual servers IPVS
	// refused, and Service ports' nft elements the kernel or the table
	// (SetElements, before the kernel) refused. The sync went on without
	// them.
	Refused []Refusal
	// Problems counts, by Event reason, the fields of every Service that
	// are not programmed as asked (after this sync): each Service gets
	// one Event per change, this keeps the full count.
	Problems map[string]int
	Duration time.Duration
	// Steps is where Duration went.
	Steps SyncSteps
	// TriggerTimes are the endpoints.kubernetes.io/last-change-trigger-time
	// annotations of the EndpointSlice changes this sync programmed, as
	// kube-proxy collects them (later than the proxier's start): each is
	// the start of one kubeproxy_network_programming_duration_seconds
	// sample, under the family of its EndpointSlice, as kube-proxy's
	// proxier of that family observes it. A failed sync keeps its
	// changes', for the sync that programs them.
	TriggerTimes []TriggerTime
}

// TriggerTime is when an EndpointSlice change was triggered, and the IP
// family of that EndpointSlice.
type TriggerTime struct {
	At     time.Time
	Family v1.IPFamily
}

// SyncSteps are the durations of a sync's steps (Sync), for logs and
// benchmarks: what a sync spends where.
type SyncSteps struct {
	Plan, AddElements, VirtualServers, TrimElements time.Duration
	// Addresses is kube-ipvs0's step; on a full sync, which writes the
	// addresses beside IPVS, only the time it outlasted VirtualServers.
	Addresses time.Duration
	// Conntrack is the time spent working out stale flows and queueing
	// them (the clean itself runs off the sync path).
	Conntrack time.Duration
}

// Proxier watches Services and EndpointSlices and keeps IPVS, kube-ipvs0
// and the nftables table in step with them. Only Services that changed
// are planned again; only what their plans changed is sent to the kernel.
type Proxier struct {
	cfg Config // as New completed it; never changed after
	k   Dataplane

	// mu guards what the watch records. The informer callbacks hold it
	// only to record a change, never while the kernel is programmed, so a
	// watch never waits for a sync; Sync holds it only to take its work.
	mu       sync.Mutex
	services map[types.NamespacedName]*v1.Service
	// slices are each Service's EndpointSlices, sorted by name: nearly
	// every Service has one, and a map each cost 10k Services 3 MB.
	slices map[types.NamespacedName][]filedSlice
	// sliceOwner is the name of the Service each EndpointSlice
	// (namespace/name) is filed under in slices, in the slice's namespace.
	sliceOwner map[types.NamespacedName]string
	dirty      map[types.NamespacedName]bool
	// triggers are the trigger times of the EndpointSlice changes of the
	// dirty Services, for the network programming latency.
	triggers map[types.NamespacedName][]TriggerTime
	started  time.Time
	// node is this node as last watched (zone and addresses); nodeChanged
	// asks the next sync to replan every Service.
	node        Node
	nodeChanged bool
	// addressesChanged asks the next sync to list the node's addresses
	// again (OnLocalAddressChange).
	addressesChanged bool
	// apiServer are the API server's addresses as last planned with.
	apiServer []netip.Addr
	synced    bool // SetSynced
	trigger   chan struct{}

	// syncMu is held for a whole sync and guards what the kernel holds
	// (the state below). Readers of it (HealthChecks, NoLocalEndpoints)
	// wait for a running sync to end.
	syncMu  sync.Mutex
	applied map[types.NamespacedName][]PortPlan
	// addrCount counts the references to each kube-ipvs0 address.
	addrCount map[netip.Addr]int
	// drains are the real servers kept at weight 0 for their
	// connections; each says when its Service is due to be planned again
	// (Proxier.due).
	drains map[drainKey]*drain
	// syncConns are every real server's connection counts, read once by
	// the sync that needs them (kernelConnections), forgotten after it;
	// syncRead is the sync's kernel read, which has them already (a
	// restart's), looked up per virtual server (connectionsOf).
	syncConns     map[ipvs.VSKey]map[netip.AddrPort]ipvs.Connections
	syncConnsRead bool
	syncRead      *ipvs.Snapshot
	// nodePortAddresses and localAddresses are refreshed by full syncs.
	nodePortAddresses, localAddresses []netip.Addr
	// hostGen counts their refreshes: a kernelRead listed them at one.
	hostGen atomic.Uint64
	// ahead is ReadAhead's read, for the first sync (nil: none).
	ahead chan *kernelRead
	// healthChecks and noLocalInternal/External are what applied holds of
	// health check node ports and ports without local endpoints.
	healthChecks                     map[ServicePortName]ServiceHealth
	noLocalInternal, noLocalExternal int
	// claims are the frontends each Service asks for, and their owners.
	claims frontendClaims
	// refusals are the IPVS refusals reported already; refusedServices
	// the Services the last sync that planned them had refusals of.
	refusals        map[string]bool
	refusedServices map[types.NamespacedName]bool
	// problems are the FieldErrors last reported per Service;
	// problemsOf counts them by reason, and problemCounts sums those.
	problems      map[types.NamespacedName]string
	problemsOf    map[types.NamespacedName]map[string]int
	problemCounts map[string]int
	needFull      bool
	// lastFull is when every Service was last replanned (Repair).
	lastFull time.Time
	// lastIPVSResync is when IPVS was last dumped and repaired (zero:
	// never, so the first sync adopts or removes what it finds).
	lastIPVSResync time.Time

	// cleans deletes the conntrack entries of removed real servers off
	// the sync path (cleanqueue.go); nil until the first clean.
	cleans *cleanQueue

	// view publishes what was applied to readers that must not take
	// syncMu (view.go).
	view view
}

// New returns a proxier programming k.
func New(cfg Config, k Dataplane) *Proxier {
	if cfg.MinSyncPeriod <= 0 {
		cfg.MinSyncPeriod = DefaultMinSyncPeriod
	}
	if cfg.SyncPeriod <= 0 {
		cfg.SyncPeriod = DefaultSyncPeriod
	}
	if cfg.DrainCheckPeriod <= 0 {
		cfg.DrainCheckPeriod = DefaultDrainCheckPeriod
	}
	if cfg.DummyName == "" {
		cfg.DummyName = ipvs.DummyName
	}
	if cfg.IPVSResyncPeriod <= 0 {
		cfg.IPVSResyncPeriod = DefaultIPVSResyncPeriod
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Proxier{
		cfg: cfg, k: k,
		services:          map[types.NamespacedName]*v1.Service{},
		slices:            map[types.NamespacedName][]filedSlice{},
		sliceOwner:        map[types.NamespacedName]string{},
		dirty:             map[types.NamespacedName]bool{},
		triggers:          map[types.NamespacedName][]TriggerTime{},
		started:           cfg.Clock.Now(),
		node:              cfg.Node,
		trigger:           make(chan struct{}, 1),
		applied:           map[types.NamespacedName][]PortPlan{},
		addrCount:         map[netip.Addr]int{},
		healthChecks:      map[ServicePortName]ServiceHealth{},
		drains:            map[drainKey]*drain{},
		nodePortAddresses: cfg.Node.NodePortAddresses,
		localAddresses:    cfg.Node.LocalAddresses,
		problems:          map[types.NamespacedName]string{},
		problemsOf:        map[types.NamespacedName]map[string]int{},
		problemCounts:     map[string]int{},
		claims:            newFrontendClaims(),
		refusals:          map[string]bool{},
		refusedServices:   map[types.NamespacedName]bool{},
		needFull:          true,
	}
}

func (p *Proxier) kick() {
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

// SyncSoon asks for a sync without waiting for the sync period: the nft
// table calls it when someone else changed it (its next sync rebuilds it).
func (p *Proxier) SyncSoon() { p.kick() }

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
func (p *Proxier) markDirty(name types.NamespacedName) { p.dirty[name] = true }

// OnEndpointSliceUpdate records a slice's new state (nil: deleted). The
// slice belongs to the Service named by its kubernetes.io/service-name
// label (service). Anyone who may write EndpointSlices may relabel one:
// a slice whose label changed, or went, leaves the Service it was filed
// under, whatever the event says its old label was.
func (p *Proxier) OnEndpointSliceUpdate(namespace, sliceName string, slice *discovery.EndpointSlice, service string) {
	trigger := ""
	if slice != nil {
		trigger = slice.Annotations[v1.EndpointsLastChangeTriggerTime]
	}
	p.updateEndpointSlice(namespace, sliceName, newEpSlice(slice), service, trigger)
}

// updateEndpointSlice is OnEndpointSliceUpdate with the slice's
// trigger-time annotation (the informers cache it apart: cachedSlice).
func (p *Proxier) updateEndpointSlice(namespace, sliceName string, slice *epSlice, service, trigger string) {
	key := types.NamespacedName{Namespace: namespace, Name: sliceName}
	p.mu.Lock()
	if prevService, ok := p.sliceOwner[key]; ok && (prevService != service || slice == nil) {
		prev := types.NamespacedName{Namespace: namespace, Name: prevService}
		p.fileSlice(prev, sliceName, nil)
		delete(p.sliceOwner, key)
		p.markDirty(prev)
	}
	if service == "" || slice == nil {
		p.mu.Unlock()
		p.kick()
		return
	}
	name := types.NamespacedName{Namespace: namespace, Name: service}
	p.sliceOwner[key] = service
	p.fileSlice(name, sliceName, slice)
	if t, ok := lastChangeTriggerTime(trigger); ok && t.After(p.started) {
		f := v1.IPv4Protocol
		if slice.addressType == discovery.AddressTypeIPv6 {
			f = v1.IPv6Protocol
		}
		p.triggers[name] = append(p.triggers[name], TriggerTime{At: t, Family: f})
	}
	p.markDirty(name)
	p.mu.Unlock()
	p.kick()
}

// filedSlice is an EndpointSlice filed under its Service, with its name.
type filedSlice struct {
	name  string
	slice *epSlice
}

// fileSlice files slice under Service n by name, or removes the named
// slice if slice is nil; p.mu is held.
func (p *Proxier) fileSlice(n types.NamespacedName, name string, slice *epSlice) {
	filed := p.slices[n]
	i, found := slices.BinarySearchFunc(filed, name, func(f filedSlice, name string) int { return strings.Compare(f.name, name) })
	switch {
	case slice == nil && found:
		filed = slices.Delete(filed, i, i+1)
	case slice == nil:
	case found:
		filed[i].slice = slice
	default:
		filed = slices.Insert(filed, i, filedSlice{name, slice})
	}
	if len(filed) == 0 {
		delete(p.slices, n)
	} else {
		p.slices[n] = filed
	}
}

// lastChangeTriggerTime is when the change an EndpointSlice carries was
// triggered: the EndpointSlice controller's annotation v, if set.
func lastChangeTriggerTime(v string) (time.Time, bool) {
	if v == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

// OnNodeUpdate records this node's topology zone and addresses; a change
// replans every Service.
func (p *Proxier) OnNodeUpdate(zone string, ips []netip.Addr) {
	p.mu.Lock()
	if zone == p.node.Zone && slices.Equal(ips, p.node.IPs) {
		p.mu.Unlock()
		return
	}
	p.node.Zone, p.node.IPs = zone, ips
	p.nodeChanged = true
	p.mu.Unlock()
	p.kick()
}

// OnLocalAddressChange says that an address came or went on one of the
// node's links (a VIP failover, a new interface): the next sync, within
// MinSyncPeriod, lists the addresses again and replans every Service if
// they changed, instead of waiting for the next full sync. Changes to
// kube-ipvs0's addresses, which nftvs makes, are not to be reported.
func (p *Proxier) OnLocalAddressChange() {
	p.mu.Lock()
	p.addressesChanged = true
	p.mu.Unlock()
	p.kick()
}

// SetSynced marks the informer caches (Services and EndpointSlices)
// synced: nothing is programmed before, so a restart never programs a
// partial view.
func (p *Proxier) SetSynced() {
	p.mu.Lock()
	p.synced = true
	p.mu.Unlock()
	p.kick()
}

func (p *Proxier) ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.synced
}

// Run syncs until ctx ends: at most every MinSyncPeriod after a change, at
// least every SyncPeriod (a Repair), retrying failures with backoff.
// Every DrainCheckPeriod it counts the connections of draining real
// servers. onSync, if set, sees every sync's outcome.
//
// A Repair reads the kernel on a goroutine of its own (readRepairs): the
// loop stays free to sync changes while the reading goes on, and a change
// never waits for it. MinSyncPeriod spaces change syncs: a repair does
// not make the next change wait.
func (p *Proxier) Run(ctx context.Context, onSync func(SyncResult, error)) {
	c := p.cfg.Clock
	full := c.NewTicker(p.cfg.SyncPeriod)
	defer full.Stop()
	reads := make(chan *kernelRead)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		p.readRepairs(ctx, full.C(), reads)
	}()
	defer func() { <-readerDone }()
	check := c.NewTicker(p.cfg.DrainCheckPeriod)
	defer check.Stop()
	var last time.Time
	backoff := time.Duration(0)
	for {
		var read *kernelRead
		var drain clock.Timer
		var drainC <-chan time.Time
		if d, ok := p.nextDrainDeadline(); ok {
			drain = c.NewTimer(max(d.Sub(c.Now()), 0))
			drainC = drain.C()
		}
		checkOnly := false
		select {
		case <-ctx.Done():
			stopTimer(drain)
			return
		case <-p.trigger:
		case read = <-reads:
		case <-drainC:
		case <-check.C():
			checkOnly = true
		}
		stopTimer(drain)
		if checkOnly {
			if p.hasDrains() {
				p.checkDrains() // kicks a sync if one went idle
			}
			continue
		}
		if !p.ready() {
			continue
		}
		if wait := p.cfg.MinSyncPeriod - c.Since(last) + backoff; wait > 0 {
			t := c.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
		}
		// The SyncPeriod tick repairs (Repair); a change syncs what changed.
		var res SyncResult
		var err error
		if read != nil {
			res, err = p.repair(read)
		} else {
			last = c.Now()
			res, err = p.Sync(false)
		}
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

// readRepairs reads the kernel for a Repair at every tick, and hands the
// read to the sync loop, until ctx ends.
func (p *Proxier) readRepairs(ctx context.Context, ticks <-chan time.Time, reads chan<- *kernelRead) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
		}
		r := p.readForRepair()
		select {
		case <-ctx.Done():
			return
		case reads <- r:
		}
	}
}

// stopTimer stops t, if there is one.
func stopTimer(t clock.Timer) {
	if t != nil {
		t.Stop()
	}
}

// ServiceHealth is what a Service port's health check node port answers
// (externalTrafficPolicy Local LoadBalancers).
type ServiceHealth struct {
	Name           ServicePortName
	NodePort       int
	LocalEndpoints FamilyCount
}

// FamilyCount is a count per IP family.
type FamilyCount struct{ IPv4, IPv6 int }

// Of is the count of family f.
func (c FamilyCount) Of(f v1.IPFamily) int {
	if f == v1.IPv6Protocol {
		return c.IPv6
	}
	return c.IPv4
}

// Total is the count of both families.
func (c FamilyCount) Total() int { return c.IPv4 + c.IPv6 }

// HealthChecks lists the health check node ports of the Services as last
// applied (kept by commit: the cost is the number of health checks, not
// of Services).
func (p *Proxier) HealthChecks() []ServiceHealth {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	out := make([]ServiceHealth, 0, len(p.healthChecks))
	for _, h := range p.healthChecks {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b ServiceHealth) int { return a.NodePort - b.NodePort })
	return out
}

// NoLocalEndpoints counts Service ports with a Local traffic policy and no
// local endpoint, per traffic kind ("internal", "external"), as kube-proxy's
// sync_proxy_rules_no_local_endpoints_total gauge reports them (kept by
// commit).
func (p *Proxier) NoLocalEndpoints() (internal, external int) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	return p.noLocalInternal, p.noLocalExternal
}
