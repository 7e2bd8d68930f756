package proxier

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/internal/l4"
	"github.com/nftvs/nftvs/internal/mapsize"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// work is what one sync replans, taken from the watch's state at once.
type work struct {
	// full: every Service is replanned. repair: the kernel is checked
	// for drift whole (nft by generation, IPVS Repair or Resync,
	// kube-ipvs0 listed), whatever is replanned; a full sync repairs.
	full, repair bool
	node         Node
	// inputs holds each Service to replan with its EndpointSlices; a nil
	// Service was deleted.
	inputs map[types.NamespacedName]serviceInput
	// triggers are the trigger times of the changes in inputs.
	triggers map[types.NamespacedName][]TriggerTime
	// addressesChanged: the node's addresses changed since the last sync
	// (OnLocalAddressChange).
	addressesChanged bool
}

type serviceInput struct {
	svc    *v1.Service
	slices []*epSlice
}

// Sync plans the Services that changed (all of them when full, or when a
// previous sync failed) and applies the difference, in an order that never
// refuses a good connection: nft elements for new frontends first, then
// virtual servers, then addresses; on removal the reverse. A full sync
// also repairs the kernel's drift.
func (p *Proxier) Sync(full bool) (SyncResult, error) {
	return p.sync(full, full, nil)
}

// Repair is the periodic sync (every SyncPeriod): the changed Services,
// and the kernel's drift repaired, without replanning the others. Their
// inputs did not change, so neither did their plans, and replanning 10k
// Services (about a second of CPU, several under emulation) is time a
// change arriving meanwhile would wait. Every FullReplanPeriod it is a
// full sync, as kube-proxy's nftables mode does one every hour.
//
// The kernel is read first, without syncMu (readKernel), so that a change
// syncs meanwhile; Run reads off its loop and calls repair.
func (p *Proxier) Repair() (SyncResult, error) {
	return p.repair(p.readForRepair())
}

// repair is Repair on what readKernel read.
func (p *Proxier) repair(r *kernelRead) (SyncResult, error) {
	p.syncMu.Lock()
	full := p.cfg.Clock.Now().Sub(p.lastFull) >= FullReplanPeriod
	p.syncMu.Unlock()
	return p.sync(full, true, r)
}

// FullReplanPeriod is how often the periodic sync replans every Service
// anyway: a safety net, as kube-proxy's nftables mode's hourly full sync.
const FullReplanPeriod = time.Hour

// sync syncs; read, if not nil, is the kernel as read before (a periodic
// repair), else what a repair compares is read now.
func (p *Proxier) sync(full, repair bool, read *kernelRead) (SyncResult, error) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	start := p.cfg.Clock.Now()
	w := p.collectWork(full || p.needFull, repair, start)
	res := SyncResult{Full: w.full, Repair: w.repair}
	if ahead := p.readAhead(); read == nil && w.repair {
		read = ahead // the first sync
	}
	if w.repair || w.addressesChanged {
		// A full sync replans every Service anyway; otherwise only an
		// address that really came or went does.
		r := read
		if w.addressesChanged {
			r = nil // an address just came or went: list them now
		}
		if p.refreshHostAddresses(r) && !w.full {
			p.collectAll(&w)
		}
		p.setNodePortAddresses()
	}
	step := func(d *time.Duration) {
		now := p.cfg.Clock.Now()
		*d, start = now.Sub(start), now
	}
	begin := start
	if read != nil && read.ipvsErr == nil {
		// Drains at a restart ask for every real server's connections:
		// the read has them (a few seconds old at most).
		p.syncRead = read.ipvs
	}
	planned := p.plan(&w, start)
	p.syncConns, p.syncConnsRead, p.syncRead = nil, false, nil
	res.ServicesReplanned = len(planned)
	step(&res.Steps.Plan)

	if err := p.addElements(planned, w.repair, &res); err != nil {
		// Without the companion table in place, do not move IPVS ahead of
		// it: try again later.
		p.requeue(w)
		return res, err
	}
	step(&res.Steps.AddElements)
	p.waitForCleans(planned)
	// A full sync (the first one: every Service new) writes kube-ipvs0's
	// addresses beside IPVS, not after it: the kernel walks the link's
	// whole address list on every add (10k adds: about 10 s under
	// emulation), under a lock IPVS does not take. A change keeps the
	// order, its addresses once its virtual servers exist.
	addrs := p.syncAddressesAsync(planned, w.repair, read, w.full)
	deletes, err := p.upsertVirtualServers(planned, w.repair, begin, read, &res)
	errs := []error{p.isolate(err, &res)}
	step(&res.Steps.VirtualServers)
	errs = append(errs, addrs(&res))
	step(&res.Steps.Addresses)
	errs = append(errs, p.isolate(p.deleteVirtualServers(deletes, &res), &res))
	old := p.commit(planned)
	p.view.publish(planned, old)
	errs = append(errs, p.trimElements(planned, old, &res))
	step(&res.Steps.TrimElements)
	p.cleanConntrack(old, planned, &res)
	step(&res.Steps.Conntrack)
	start = begin
	if v := klog.Level(2); w.repair && (res.IPVSResync || klog.V(v).Enabled()) {
		// The first sync, and every IPVS resync: where the time went.
		klog.InfoS("Full sync", "services", res.ServicesReplanned, "plan", res.Steps.Plan, "addElements", res.Steps.AddElements,
			"virtualServers", res.Steps.VirtualServers, "addresses", res.Steps.Addresses, "trimElements", res.Steps.TrimElements,
			"conntrack", res.Steps.Conntrack, "ipvs", res.IPVS.String(), "addressWrites", res.AddressesAdded+res.AddressesRemoved)
	}

	err = errors.Join(errs...)
	if err != nil {
		p.requeue(w)
	} else {
		p.needFull = false
		if w.full {
			p.lastFull = begin
		}
		for _, ts := range w.triggers {
			res.TriggerTimes = append(res.TriggerTimes, ts...)
		}
	}
	res.Refused = uniqueRefusals(res.Refused)
	p.reportRefused(res.Refused, w.repair)
	// Services the kernel refused part of are retried by every repair.
	for n := range w.inputs {
		delete(p.refusedServices, n)
	}
	for _, r := range res.Refused {
		if r.Service.Name != "" {
			p.refusedServices[r.Service] = true
		}
	}
	res.Problems = maps.Clone(p.problemCounts)
	res.Duration = p.cfg.Clock.Now().Sub(start)
	return res, err
}

// collectWork takes the Services to replan: the changed ones, every one
// on a full sync (or after a Node change), those with a drain due
// (drain.go), and on a repair those the kernel refused something of
// (retried).
func (p *Proxier) collectWork(full, repair bool, now time.Time) work {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := work{full: full || p.nodeChanged, node: p.node, inputs: map[types.NamespacedName]serviceInput{},
		addressesChanged: p.addressesChanged}
	p.nodeChanged, p.addressesChanged = false, false
	if api := p.apiServerAddresses(); !slices.Equal(api, p.apiServer) {
		// The API server's addresses are refused as Service addresses:
		// when they change, every Service is planned again.
		p.apiServer = api
		w.full = true
	}
	w.repair = repair || w.full
	add := func(n types.NamespacedName) {
		if _, ok := w.inputs[n]; !ok {
			w.inputs[n] = p.input(n)
		}
	}
	if w.full {
		for n := range p.services {
			add(n)
		}
		for n := range p.applied {
			add(n)
		}
	}
	for n := range p.dirty {
		add(n)
	}
	if w.repair {
		for n := range p.refusedServices {
			add(n)
		}
	}
	for _, d := range p.drains {
		if t, ok := p.due(d); ok && !t.After(now) {
			add(d.service)
		}
	}
	w.triggers = map[types.NamespacedName][]TriggerTime{}
	for n := range w.inputs {
		if ts, ok := p.triggers[n]; ok {
			w.triggers[n] = ts
			delete(p.triggers, n)
		}
	}
	clear(p.dirty)
	return w
}

// collectAll adds every Service to w: the node's addresses changed, so
// every node port does.
func (p *Proxier) collectAll(w *work) {
	p.mu.Lock()
	var names []types.NamespacedName
	for n := range p.services {
		if _, ok := w.inputs[n]; !ok {
			names = append(names, n)
		}
	}
	p.mu.Unlock()
	for n := range p.applied {
		if _, ok := w.inputs[n]; !ok && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	p.collectMore(w, names)
}

// kubernetesService is the Service whose endpoints are the API server.
var kubernetesService = types.NamespacedName{Namespace: "default", Name: "kubernetes"}

// apiServerAddresses are the configured API server addresses and the
// endpoints of the default/kubernetes Service, sorted; p.mu is held.
func (p *Proxier) apiServerAddresses() []netip.Addr {
	out := slices.Clone(p.cfg.APIServer)
	for _, s := range p.slices[kubernetesService] {
		for i := range s.slice.endpoints {
			for _, a := range s.slice.endpoints[i].addresses() {
				if ip, err := netip.ParseAddr(a); err == nil {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	return uniqueAddrs(out)
}

// input is what n is planned from; p.mu is held.
func (p *Proxier) input(n types.NamespacedName) serviceInput {
	filed := p.slices[n]
	in := serviceInput{svc: p.services[n], slices: make([]*epSlice, 0, len(filed))}
	for _, s := range filed {
		in.slices = append(in.slices, s.slice)
	}
	return in
}

// requeue gives a failed sync's work back to the next sync, which will be
// a full one.
func (p *Proxier) requeue(w work) {
	p.needFull = true
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := range w.inputs {
		p.dirty[n] = true
	}
	// The failed sync's changes are still to be programmed: their trigger
	// times go with them, to the sync that does.
	for n, ts := range w.triggers {
		p.triggers[n] = append(ts, p.triggers[n]...)
	}
}

// NodeOwner owns the nft elements that belong to the node, not to a
// Service: its node port addresses.
const NodeOwner = "node"

// setNodePortAddresses declares the node port addresses, which every node
// port rule of the table matches (nft.NodePortAddresses).
func (p *Proxier) setNodePortAddresses() {
	var els []nft.Element
	for _, a := range p.nodePortAddresses {
		if (a.Is4() && p.cfg.IPv4) || (a.Is6() && p.cfg.IPv6) {
			els = append(els, nft.Element{Set: nft.NodePortAddresses, Addr: a})
		}
	}
	if err := p.k.NFT.SetElements(NodeOwner, els); err != nil {
		klog.ErrorS(err, "Some node port addresses refused")
	}
}

// plan computes the new plans of the Services in w (nil for a deleted
// one): each Service is planned alone, then frontends two Services ask
// for go to one owner (claims.go) — a Service whose ownership changed is
// planned in this sync too — and weight-0 real servers drain (drain.go).
func (p *Proxier) plan(w *work, now time.Time) map[types.NamespacedName][]PortPlan {
	cfg := p.cfg.PlanConfig
	cfg.Node = w.node
	cfg.Node.NodePortAddresses = p.nodePortAddresses
	cfg.Node.LocalAddresses = p.localAddresses
	cfg.APIServer = p.apiServer
	raw := make(map[types.NamespacedName][]PortPlan, len(w.inputs))
	problems := map[types.NamespacedName][]error{}
	for pending := w.inputs; len(pending) > 0; {
		var affected []types.NamespacedName
		names := slices.Collect(maps.Keys(pending))
		results := planAll(names, pending, &cfg)
		p.claims.reserve(results)
		for i, n := range names {
			in := pending[n]
			var created time.Time
			if in.svc != nil {
				raw[n], problems[n], created = results[i].plans, unjoin(results[i].err), in.svc.CreationTimestamp.Time
			} else {
				raw[n] = nil
			}
			for _, o := range p.claims.set(n, created, raw[n]) {
				if _, done := raw[o]; !done {
					affected = append(affected, o)
				}
			}
		}
		pending = p.collectMore(w, affected)
	}
	planned := make(map[types.NamespacedName][]PortPlan, len(raw))
	for n, plans := range raw {
		if w.inputs[n].svc == nil {
			planned[n] = p.drainRealServers(n, nil, now) // forgets its drains
			p.report(n, nil)
			continue
		}
		conflicts := p.claims.keepOwned(n, plans)
		p.report(n, errors.Join(append(problems[n], conflicts...)...))
		planned[n] = p.drainRealServers(n, plans, now)
	}
	return planned
}

// planResult is PlanService's answer for one Service.
type planResult struct {
	plans []PortPlan
	err   error
}

// parallelPlanAt is how many Services a sync replans before planAll
// spreads them over the CPUs: a first or full sync (10k Services: about
// 2 s of a first sync under emulation, when nothing else wants the CPUs),
// not a change.
const parallelPlanAt = 512

// planAll plans the Services names (those of ins without a Service are
// left zero), on up to GOMAXPROCS goroutines when there are many:
// PlanService is pure, and cfg is only read.
func planAll(names []types.NamespacedName, ins map[types.NamespacedName]serviceInput, cfg *PlanConfig) []planResult {
	out := make([]planResult, len(names))
	plan := func(i int) {
		if in := ins[names[i]]; in.svc != nil {
			out[i].plans, out[i].err = planService(in.svc, in.slices, cfg)
		}
	}
	workers := min(goruntime.GOMAXPROCS(0), len(names)/parallelPlanAt+1)
	if workers <= 1 {
		for i := range names {
			plan(i)
		}
		return out
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(names); i += workers {
				plan(i)
			}
		})
	}
	wg.Wait()
	return out
}

// collectMore adds Services to w, for the same sync, and returns their
// inputs.
func (p *Proxier) collectMore(w *work, names []types.NamespacedName) map[types.NamespacedName]serviceInput {
	if len(names) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	more := map[types.NamespacedName]serviceInput{}
	for _, n := range names {
		in := p.input(n)
		w.inputs[n], more[n] = in, in
	}
	return more
}

// unjoin lists the errors errors.Join put together, at any depth.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, unjoin(e)...)
	}
	return out
}

// report logs and warns about a Service's field errors when they differ
// from those last reported: a full sync replans every Service, and the
// same Event every sync period would only be noise. However many fields
// were refused, the Service gets one Event per change (eventSummary):
// Events are paid from nftvs's API budget on every node, and a tenant
// decides how many fields a Service has. The full count is kept in
// SyncResult.Problems.
func (p *Proxier) report(n types.NamespacedName, err error) {
	p.view.stage(n, err)
	p.countProblems(n, err)
	if err == nil {
		delete(p.problems, n)
		return
	}
	if p.problems[n] == err.Error() {
		klog.V(4).InfoS("Service still has fields that cannot be programmed", "service", n, "err", err)
		return
	}
	p.problems[n] = err.Error()
	var items []problem
	for _, e := range unjoin(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			items = append(items, problem{fe.Reason, fe.Message})
		} else {
			items = append(items, problem{ReasonFailedToProgram, e.Error()})
		}
	}
	reason, msg := eventSummary(items)
	klog.ErrorS(errors.New(msg), "Service has fields that cannot be programmed", "service", n, "reason", reason)
	klog.V(2).InfoS("Every field of the Service that cannot be programmed", "service", n, "err", err)
	if p.cfg.Warn != nil {
		p.cfg.Warn(n, reason, msg)
	}
}

// countProblems keeps p.problemCounts, by reason, for n's current field
// errors.
func (p *Proxier) countProblems(n types.NamespacedName, err error) {
	for reason, c := range p.problemsOf[n] {
		if p.problemCounts[reason] -= c; p.problemCounts[reason] <= 0 {
			delete(p.problemCounts, reason)
		}
	}
	delete(p.problemsOf, n)
	if err == nil {
		return
	}
	by := map[string]int{}
	for _, e := range unjoin(err) {
		reason := ReasonFailedToProgram
		var fe *FieldError
		if errors.As(e, &fe) {
			reason = fe.Reason
		}
		by[reason]++
		p.problemCounts[reason]++
	}
	p.problemsOf[n] = by
}

// problem is one part of a Service not programmed as asked: the reason of
// its Event and what to say.
type problem struct{ reason, message string }

// eventFirstItems is how many problems an Event spells out; the others
// are counted.
const eventFirstItems = 3

// eventNoteMax bounds an Event's note (events.k8s.io/v1 refuses more than
// 1 kB).
const eventNoteMax = 1000

// eventSummary makes one Event of a Service's problems: the reason of the
// first (they share it, mostly), and a note with the count by reason and
// the first few.
func eventSummary(items []problem) (reason, note string) {
	if len(items) == 0 {
		return "", ""
	}
	reason = items[0].reason
	if len(items) == 1 {
		return reason, truncate(items[0].message, eventNoteMax)
	}
	count := map[string]int{}
	for _, it := range items {
		count[it.reason]++
	}
	var reasons []string
	for r, c := range count {
		reasons = append(reasons, fmt.Sprintf("%s ×%d", r, c))
	}
	slices.Sort(reasons)
	var b strings.Builder
	fmt.Fprintf(&b, "%d fields not programmed (%s): ", len(items), strings.Join(reasons, ", "))
	for i, it := range items[:min(len(items), eventFirstItems)] {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(it.message)
	}
	if more := len(items) - eventFirstItems; more > 0 {
		fmt.Fprintf(&b, "; and %d more", more)
	}
	return reason, truncate(b.String(), eventNoteMax)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-len("…")] + "…"
}

// addElements is step 1: every replanned port owns the union of its old
// and new nft elements, so new frontends are accepted before their VIP
// answers. A failure here stops the sync.
func (p *Proxier) addElements(planned map[types.NamespacedName][]PortPlan, full bool, res *SyncResult) error {
	if full {
		n := 0
		for _, plans := range planned {
			for _, pl := range plans {
				n += len(pl.Elements)
			}
		}
		p.k.NFT.Reserve(n)
	}
	for n, plans := range planned {
		old := portsByName(p.applied[n])
		for _, pl := range plans {
			els := pl.Elements
			if o, ok := old[pl.Name]; ok {
				els = union(o.Elements, els)
			}
			p.setElements(pl.Name, els, res)
		}
	}
	r, err := p.k.NFT.Sync(full)
	res.NFT = append(res.NFT, r)
	switch {
	case r.Adopted:
		klog.V(2).InfoS("Found the nftables table as configured; syncing its elements, not rebuilding it")
	case r.NotAdopted != "":
		klog.InfoS("Writing the nftables table whole at start", "reason", r.NotAdopted)
	}
	return p.isolateElements(err, res)
}

// isolateElements takes the owners whose elements the kernel refused out
// of err into res.Refused (the table applied everyone else's); what is
// left fails the sync.
func (p *Proxier) isolateElements(err error, res *SyncResult) error {
	var refused *nft.RefusedError
	if !errors.As(err, &refused) {
		if err != nil {
			return &StepError{Step: StepNFTables, Prefix: "nftables", Err: err}
		}
		return nil
	}
	for _, owner := range refused.Owners {
		res.Refused = append(res.Refused, elementsRefused(owner, refused.Errs[owner]))
	}
	return nil
}

// elementsRefused is the refusal of owner's nft elements, by the kernel
// or by the table before the kernel saw them: the same words either way.
func elementsRefused(owner string, err error) Refusal {
	return Refusal{Service: serviceOfOwner(owner), Err: fmt.Errorf("nftables refused the elements of %s: %w", owner, err)}
}

// serviceOfOwner is the Service of an nft owner name,
// "namespace/name:port/protocol" (ServicePortName.Owner); NodeOwner has
// none.
func serviceOfOwner(owner string) types.NamespacedName {
	ns, rest, ok := strings.Cut(owner, "/")
	if !ok {
		return types.NamespacedName{}
	}
	name, _, _ := strings.Cut(rest, ":")
	name, _, _ = strings.Cut(name, "/")
	return types.NamespacedName{Namespace: ns, Name: name}
}

// setElements declares a port's elements. Elements the table refuses
// before the kernel sees them (an overlap with another owner's, say) are
// left out and go into res.Refused, as the kernel's refusals do
// (isolateElements): logged once, counted, and a Warning Event on the
// Service (reportRefused). The port's other elements are kept, and the
// sync goes on.
func (p *Proxier) setElements(name ServicePortName, els []nft.Element, res *SyncResult) {
	if err := p.k.NFT.SetElements(name.Owner(), els); err != nil {
		// The error names the owner; elementsRefused does too.
		if inner := errors.Unwrap(err); inner != nil {
			err = inner
		}
		res.Refused = append(res.Refused, elementsRefused(name.Owner(), err))
	}
}

// union is a's elements, then those of b that a lacks.
func union(a, b []nft.Element) []nft.Element {
	out := slices.Clone(a)
	have := make(map[nft.Element]bool, len(a))
	for _, e := range a {
		have[e] = true
	}
	for _, e := range b {
		if !have[e] {
			have[e] = true
			out = append(out, e)
		}
	}
	return out
}

// upsertVirtualServers is step 2: new and changed virtual servers with
// their real servers. A full sync dumps and repairs IPVS now and then
// (IPVSResyncPeriod). It returns the virtual servers replanned Services
// no longer want, to delete once their addresses are gone.
func (p *Proxier) upsertVirtualServers(planned map[types.NamespacedName][]PortPlan, full bool, now time.Time, read *kernelRead, res *SyncResult) ([]ipvs.VSKey, error) {
	upserts := make([]ipvs.Service, 0, len(planned))
	var deletes []ipvs.VSKey
	for n, plans := range planned {
		for _, pl := range plans {
			upserts = append(upserts, pl.VirtualServers...)
		}
		if len(p.applied[n]) == 0 {
			continue // new (every Service at a first sync): nothing to delete
		}
		want := map[ipvs.VSKey]bool{}
		for _, pl := range plans {
			for _, s := range pl.VirtualServers {
				want[s.Key()] = true
			}
		}
		for _, pl := range p.applied[n] {
			for _, s := range pl.VirtualServers {
				// A frontend another Service still asks for is handed
				// over (updated in place), not deleted.
				if k := s.Key(); !want[k] && !p.claims.claimed(k) {
					deletes = append(deletes, k)
				}
			}
		}
	}
	resync := full && (p.lastIPVSResync.IsZero() || now.Sub(p.lastIPVSResync) >= p.cfg.IPVSResyncPeriod)
	if read != nil && read.ipvsErr == nil && !read.resync {
		resync = false // read without real servers: a resync next period
	}
	if !resync {
		var errs []error
		if full {
			// Virtual servers deleted or changed behind our back come back
			// within one sync period, for one dump of the virtual
			// servers (no real server read).
			r, err := p.repairIPVS(read)
			res.IPVS, errs = r, append(errs, err)
			res.Removed = append(res.Removed, r.Removed...)
		}
		r, err := p.k.IPVS.Apply(upserts, nil)
		res.IPVS.Writes = res.IPVS.Writes.Add(r.Writes)
		res.Removed = append(res.Removed, r.Removed...)
		return deletes, errors.Join(append(errs, err)...)
	}
	all := upserts
	for n, plans := range p.applied {
		if _, replanned := planned[n]; replanned {
			continue
		}
		for _, pl := range plans {
			all = append(all, pl.VirtualServers...)
		}
	}
	r, err := p.resyncIPVS(all, read)
	res.IPVS = r
	res.IPVSResync = true
	res.Removed = append(res.Removed, r.Removed...)
	if err != nil {
		return deletes, err
	}
	p.lastIPVSResync = now
	return nil, nil // Resync removed every virtual server not in all
}

// syncAddressesAsync starts syncAddresses, on a goroutine of its own if
// async, and returns what waits for it and puts its counts in res.
func (p *Proxier) syncAddressesAsync(planned map[types.NamespacedName][]PortPlan, full bool, read *kernelRead, async bool) func(res *SyncResult) error {
	if !async {
		return func(res *SyncResult) error { return p.syncAddresses(planned, full, read, res) }
	}
	var (
		own  SyncResult
		err  error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		err = p.syncAddresses(planned, full, read, &own)
	}()
	return func(res *SyncResult) error {
		<-done
		res.AddressesSync, res.AddressesAdded, res.AddressesRemoved = own.AddressesSync, own.AddressesAdded, own.AddressesRemoved
		return err
	}
}

// syncAddresses is step 3: kube-ipvs0's addresses. New references are
// counted before old ones are dropped, so a replanned Service that keeps
// its addresses (an endpoint change) never takes a count through zero: no
// address changes, and the link's addresses are not listed and diffed
// (an O(Services) netlink dump) for a sync that changes none.
func (p *Proxier) syncAddresses(planned map[types.NamespacedName][]PortPlan, full bool, read *kernelRead, res *SyncResult) error {
	var have *ipvs.AddressSnapshot
	if full {
		have = addressesRead(read)
	}
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
	if !changed {
		return nil
	}
	res.AddressesSync = true
	if err := p.k.Addresses.EnsureDummy(p.cfg.DummyName); err != nil {
		return &StepError{Step: StepAddresses, Prefix: p.cfg.DummyName, Err: err}
	}
	want := make([]netip.Addr, 0, len(p.addrCount))
	for a := range p.addrCount {
		want = append(want, a)
	}
	slices.SortFunc(want, netip.Addr.Compare)
	var added, removed []netip.Addr
	var err error
	if have != nil {
		added, removed, err = p.k.Addresses.SyncAddressesFrom(p.cfg.DummyName, want, have)
	} else {
		added, removed, err = p.k.Addresses.SyncAddresses(p.cfg.DummyName, want)
	}
	res.AddressesAdded, res.AddressesRemoved = len(added), len(removed)
	var inUse *ipvs.AddressInUseError
	if errors.As(err, &inUse) {
		klog.V(2).InfoS("Service addresses already on another interface, not bound again", "detail", inUse.Error())
		return nil
	}
	if err != nil {
		return &StepError{Step: StepAddresses, Prefix: "addresses of " + p.cfg.DummyName, Err: err}
	}
	return nil
}

// deleteVirtualServers is step 4: virtual servers no longer wanted, now
// that their addresses are gone.
func (p *Proxier) deleteVirtualServers(deletes []ipvs.VSKey, res *SyncResult) error {
	if len(deletes) == 0 {
		return nil
	}
	r, err := p.k.IPVS.Apply(nil, deletes)
	res.IPVS.Writes = res.IPVS.Writes.Add(r.Writes)
	res.Removed = append(res.Removed, r.Removed...)
	return err
}

// commit records the new plans as applied and returns the ones they
// replace. It keeps the health check node ports and the no-local-endpoint
// counts up to date as it goes, so that reading them after a sync costs
// what the sync changed, not a walk of every Service.
func (p *Proxier) commit(planned map[types.NamespacedName][]PortPlan) map[types.NamespacedName][]PortPlan {
	// Only Services that had plans: a first sync or a restart replans
	// 10k Services that had none.
	old := map[types.NamespacedName][]PortPlan{}
	p.applied = mapsize.Grown(p.applied, len(planned))
	for n, plans := range planned {
		if a := p.applied[n]; a != nil {
			old[n] = a
		}
		p.account(p.applied[n], -1)
		p.account(plans, +1)
		if plans == nil {
			delete(p.applied, n)
		} else {
			p.applied[n] = plans
		}
	}
	return old
}

// account adds (sign +1) or removes (-1) plans' share of the health
// checks and no-local-endpoint counts.
func (p *Proxier) account(plans []PortPlan, sign int) {
	for _, pl := range plans {
		if pl.InternalNoLocal {
			p.noLocalInternal += sign
		}
		if pl.ExternalNoLocal {
			p.noLocalExternal += sign
		}
		if pl.HealthCheckNodePort > 0 {
			if sign > 0 {
				p.healthChecks[pl.Name] = ServiceHealth{Name: pl.Name, NodePort: pl.HealthCheckNodePort, LocalEndpoints: pl.LocalEndpoints}
			} else {
				delete(p.healthChecks, pl.Name)
			}
		}
	}
}

// trimElements is step 5: every replanned port keeps only its new nft
// elements, and ports that are gone lose theirs. A Service without an
// old plan (every one at the first sync, at a restart too) got exactly
// its new elements from addElements: nothing to trim (at 10k Services,
// 0.6 s of the first sync under emulation).
func (p *Proxier) trimElements(planned, old map[types.NamespacedName][]PortPlan, res *SyncResult) error {
	for n, plans := range planned {
		if len(old[n]) == 0 {
			continue
		}
		now := portsByName(plans)
		for _, pl := range plans {
			p.setElements(pl.Name, pl.Elements, res)
		}
		for name := range portsByName(old[n]) {
			if _, ok := now[name]; !ok {
				p.setElements(name, nil, res)
			}
		}
	}
	r, err := p.k.NFT.Sync(false)
	res.NFT = append(res.NFT, r)
	return p.isolateElements(err, res)
}

// cleanConntrack is step 6: flows to real servers that are gone. IPVS
// flushed its own connections when the real server was deleted (kernel
// 5.9+ with expire_nodest_conn); the cleaner removes the conntrack entries
// that would otherwise make a reused 5-tuple hit a dead pod
// (kubernetes#81775).
func (p *Proxier) cleanConntrack(old, planned map[types.NamespacedName][]PortPlan, res *SyncResult) {
	res.Stale = staleFlows(res.Removed, old, planned)
	if p.k.Conntrack == nil || len(res.Stale) == 0 {
		return
	}
	p.cleanQueue().add(res.Stale)
}

// waitForCleans waits for the queued conntrack cleans when a planned real
// server is an endpoint whose flows are queued for deletion: it is about
// to get traffic again, and its new flows must not be deleted.
func (p *Proxier) waitForCleans(planned map[types.NamespacedName][]PortPlan) {
	if p.cleans == nil {
		return
	}
	queued := p.cleans.endpoints()
	if queued == nil {
		return
	}
	for _, plans := range planned {
		for _, pl := range plans {
			proto := l4.Protocol(pl.Name.Protocol)
			for _, s := range pl.VirtualServers {
				for _, r := range s.RealServers {
					if queued[endpointKey{proto, r.AddrPort()}] {
						p.cleans.flush()
						return
					}
				}
			}
		}
	}
}

// cleanQueue is the conntrack clean queue, made on first use (the
// cleaner can be set after New, as tests do).
func (p *Proxier) cleanQueue() *cleanQueue {
	if p.cleans == nil {
		p.cleans = newCleanQueue(p.k.Conntrack)
	}
	return p.cleans
}

func portsByName(plans []PortPlan) map[ServicePortName]PortPlan {
	if len(plans) == 0 {
		return nil // a new Service (all of them at a first sync): no map
	}
	m := make(map[ServicePortName]PortPlan, len(plans))
	for _, pl := range plans {
		m[pl.Name] = pl
	}
	return m
}

// Refusal is what the kernel refused (a virtual server, or a Service
// port's nft elements), and the Service that asked for it.
type Refusal struct {
	Service types.NamespacedName
	Err     error
}

// isolate takes the virtual servers IPVS refused out of err into
// res.Refused: one refused object fails neither the sync nor the other
// Services, and is tried again by the next full sync. What is left (IPVS
// failing the node) fails the sync.
func (p *Proxier) isolate(err error, res *SyncResult) error {
	var rest []error
	for _, e := range unjoin(err) {
		var vs *ipvs.VirtualServerError
		if !errors.As(e, &vs) || !vs.Refused() {
			rest = append(rest, e)
			continue
		}
		owner, _ := p.claims.owner(vs.Key)
		res.Refused = append(res.Refused, Refusal{Service: owner.name, Err: e})
	}
	if len(rest) == 0 {
		return nil
	}
	return &StepError{Step: StepIPVS, Prefix: "ipvs", Err: errors.Join(rest...)}
}

// uniqueRefusals keeps each refusal once: a port's elements meet the
// table twice in a sync (addElements, trimElements), and a refusal is
// one however often it is met.
func uniqueRefusals(refused []Refusal) []Refusal {
	seen := map[string]bool{}
	out := refused[:0]
	for _, r := range refused {
		k := r.Service.String() + "\x00" + r.Err.Error()
		if !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}

// reportRefused logs each refusal once and warns each Service once per
// sync that found new ones (one Event summing them up, as report does); a
// full sync forgets the refusals it did not see again.
func (p *Proxier) reportRefused(refused []Refusal, full bool) {
	seen := map[string]bool{}
	fresh := map[types.NamespacedName][]problem{}
	var order []types.NamespacedName
	for _, r := range refused {
		msg := r.Err.Error()
		seen[msg] = true
		if p.refusals[msg] {
			continue
		}
		p.refusals[msg] = true
		klog.ErrorS(r.Err, "The kernel refused part of a Service; the node's other Services are programmed", "service", r.Service)
		if r.Service.Name == "" {
			continue
		}
		if _, ok := fresh[r.Service]; !ok {
			order = append(order, r.Service)
		}
		fresh[r.Service] = append(fresh[r.Service], problem{ReasonFailedToProgram, msg})
	}
	if p.cfg.Warn != nil {
		for _, n := range order {
			reason, note := eventSummary(fresh[n])
			p.cfg.Warn(n, reason, note)
		}
	}
	if full {
		p.refusals = seen
	}
}
