package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"
)

// Reconciler makes the kernel's IPVS table hold the desired Services. It
// keeps a cache of what it applied, so that Apply only diffs the virtual
// servers it is told about and sends only the writes that differ: a sync
// with nothing changed costs no round trip. Resync dumps the kernel and
// repairs whatever drifted.
//
// The cache is kept truthful: an object enters it once the kernel took it
// and leaves it once the kernel dropped it, so after a failed write the
// next Apply of the same Service redoes exactly what failed.
type Reconciler struct {
	mu      sync.Mutex
	h       Interface
	exclude []netip.Prefix
	cache   map[VSKey]*applied
}

type applied struct {
	vs VirtualServer // normalized; the zero value forces an update
	rs map[netip.AddrPort]RealServer
}

// Result tells what a sync did.
type Result struct {
	// Writes counts netlink writes sent, failed ones included.
	Writes WriteCounts
	// Removed lists the real servers taken out of the kernel, those of
	// deleted virtual servers included, sorted: flows to the virtual
	// server from these real servers are now stale (the conntrack
	// cleaner's input).
	Removed []RemovedRealServer
}

func (r Result) String() string {
	w := r.Writes
	return fmt.Sprintf("virtual servers +%d ~%d -%d, real servers +%d ~%d -%d",
		w.AddVirtualServer, w.UpdateVirtualServer, w.DeleteVirtualServer,
		w.AddRealServer, w.UpdateRealServer, w.DeleteRealServer)
}

// NewReconciler reconciles through h. Virtual servers whose address lies
// in one of excludeCIDRs (--ipvs-exclude-cidrs) belong to someone else:
// Resync never deletes them unless they are desired. Fwmark virtual
// servers have no address and are never excluded.
func NewReconciler(h Interface, excludeCIDRs []netip.Prefix) *Reconciler {
	r := &Reconciler{h: h, cache: map[VSKey]*applied{}}
	for _, p := range excludeCIDRs {
		if p.IsValid() {
			r.exclude = append(r.exclude, netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), p.Addr().Unmap().BitLen())).Masked())
		}
	}
	return r
}

// Excluded reports whether k lies inside the exclude CIDRs.
func (r *Reconciler) Excluded(k VSKey) bool {
	k = k.Key()
	if k.FWMark != 0 {
		return false
	}
	for _, p := range r.exclude {
		if p.Contains(k.Address) {
			return true
		}
	}
	return false
}

// Lookup returns what the Reconciler last applied for k, real servers
// sorted.
func (r *Reconciler) Lookup(k VSKey) (Service, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.cache[k.Key()]
	if !ok {
		return Service{}, false
	}
	return a.service(k.Key()), true
}

// Services returns everything the Reconciler believes is in the kernel,
// sorted.
func (r *Reconciler) Services() []Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Service, 0, len(r.cache))
	for k, a := range r.cache {
		out = append(out, a.service(k))
	}
	slices.SortFunc(out, func(a, b Service) int { return a.VSKey.Compare(b.VSKey) })
	return out
}

// service is what the cache holds for k. An adopted virtual server whose
// update failed has unknown scheduling: only its key is told.
func (a *applied) service(k VSKey) Service {
	s := Service{VirtualServer: a.vs}
	s.VSKey = k
	for _, rs := range a.rs {
		s.RealServers = append(s.RealServers, rs)
	}
	sortRealServers(s.RealServers)
	return s
}

// Apply creates or updates the upserts and deletes the deletes, looking
// only at those virtual servers and trusting the cache for them (no kernel
// dump). A changed virtual server is updated in place; real servers are
// added before others are removed, so a Service never passes through
// having none. A failing object does not stop the others: every error is
// returned, joined. A key both upserted and deleted is upserted. Deleting a
// virtual server the Reconciler never applied is a no-op (Resync removes
// leftovers).
func (r *Reconciler) Apply(upserts []Service, deletes []VSKey) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Result
	ups, errs := sortedServices(upserts)
	wanted := wantedKeys(upserts)
	for _, s := range ups {
		errs = append(errs, r.sync(s, &res)...)
	}
	dels := make([]VSKey, 0, len(deletes))
	for _, k := range deletes {
		if !wanted[k.Key()] {
			dels = append(dels, k.Key())
		}
	}
	slices.SortFunc(dels, VSKey.Compare)
	dels = slices.Compact(dels)
	for _, k := range dels {
		if err := r.delete(k, &res); err != nil {
			errs = append(errs, err)
		}
	}
	sortRemoved(res.Removed)
	return res, errors.Join(errs...)
}

// Resync dumps the kernel's virtual and real servers, rebuilds the cache
// from them and makes the kernel hold exactly all: it repairs drift,
// and deletes every other virtual server except those inside the exclude
// CIDRs. Use it at start and now and then; Apply for everything else.
func (r *Reconciler) Resync(all []Service) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Result
	ups, errs := sortedServices(all)
	wanted := wantedKeys(all)

	kernel, err := r.h.GetVirtualServers()
	if err != nil {
		// Without the dump nothing is known: keep the cache as it was.
		return res, errors.Join(append(errs, fmt.Errorf("resync: %w", err))...)
	}
	slices.SortFunc(kernel, func(a, b VirtualServer) int { return a.VSKey.Compare(b.VSKey) })
	cache := make(map[VSKey]*applied, len(kernel))
	var unreadable []VSKey
	for _, v := range kernel {
		k := v.Key()
		if !wanted[k] && r.Excluded(k) {
			continue // someone else's: never read, never written
		}
		rss, err := r.h.GetRealServers(k)
		if err != nil {
			// Left out of the cache: a desired one is adopted by sync
			// (AddVirtualServer says EEXIST), another one deleted below.
			errs = append(errs, fmt.Errorf("resync: %w", err))
			if !wanted[k] {
				unreadable = append(unreadable, k)
			}
			continue
		}
		a := &applied{vs: v.normalized(), rs: make(map[netip.AddrPort]RealServer, len(rss))}
		for _, rs := range rss {
			a.rs[rs.AddrPort()] = rs
		}
		cache[k] = a
	}
	r.cache = cache

	for _, s := range ups {
		errs = append(errs, r.sync(s, &res)...)
	}
	var stale []VSKey
	for k := range r.cache {
		if !wanted[k] {
			stale = append(stale, k)
		}
	}
	for _, k := range unreadable {
		r.cache[k] = &applied{rs: map[netip.AddrPort]RealServer{}}
		stale = append(stale, k)
	}
	slices.SortFunc(stale, VSKey.Compare)
	for _, k := range stale {
		if err := r.delete(k, &res); err != nil {
			errs = append(errs, err)
		}
	}
	sortRemoved(res.Removed)
	return res, errors.Join(errs...)
}

// wantedKeys are the keys of services, invalid ones included: a Service
// refused for a bad real server must not have its virtual server deleted.
func wantedKeys(services []Service) map[VSKey]bool {
	m := make(map[VSKey]bool, len(services))
	for _, s := range services {
		m[s.Key()] = true
	}
	return m
}

// sortedServices validates, normalizes and sorts services, dropping (with
// an error each) invalid ones and repeated keys.
func sortedServices(in []Service) ([]Service, []error) {
	var errs []error
	out := make([]Service, 0, len(in))
	for _, s := range in {
		if err := s.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		s.VirtualServer = s.VirtualServer.normalized()
		out = append(out, s)
	}
	slices.SortStableFunc(out, func(a, b Service) int { return a.VSKey.Compare(b.VSKey) })
	dedup := out[:0]
	for i, s := range out {
		if i > 0 && s.VSKey == out[i-1].VSKey {
			errs = append(errs, fmt.Errorf("virtual server %s given twice: kept the first", s.VSKey))
			continue
		}
		dedup = append(dedup, s)
	}
	return dedup, errs
}

func sortRemoved(rs []RemovedRealServer) {
	slices.SortFunc(rs, func(a, b RemovedRealServer) int {
		if c := a.VirtualServer.Compare(b.VirtualServer); c != 0 {
			return c
		}
		return a.RealServer.AddrPort().Compare(b.RealServer.AddrPort())
	})
}

// sync makes one virtual server and its real servers as desired. If the
// virtual server turns out to have vanished behind our back, it is
// created again, once; the errors of the first try are then moot.
func (r *Reconciler) sync(s Service, res *Result) []error {
	gone, errs := r.syncOnce(s, res)
	if gone {
		_, errs = r.syncOnce(s, res)
	}
	return errs
}

// syncOnce returns gone when the kernel said the virtual server does not
// exist (ESRCH) although the cache had it; the cache then no longer has
// it either, and the next try creates it.
func (r *Reconciler) syncOnce(s Service, res *Result) (gone bool, errs []error) {
	want := s.VirtualServer
	key := want.VSKey
	cur, ok := r.cache[key]
	if !ok {
		res.Writes.AddVirtualServer++
		err := r.h.AddVirtualServer(want)
		switch {
		case err == nil:
			cur = &applied{vs: want, rs: map[netip.AddrPort]RealServer{}}
		case errors.Is(err, syscall.EEXIST):
			// In the kernel but not in the cache (Apply before any
			// Resync, or a failed dump): adopt it, real servers and all,
			// and let the update below set its scheduling.
			rss, gerr := r.h.GetRealServers(key)
			if gerr != nil {
				return false, []error{gerr}
			}
			cur = &applied{rs: make(map[netip.AddrPort]RealServer, len(rss))}
			for _, rs := range rss {
				cur.rs[rs.AddrPort()] = rs
			}
		default:
			return false, []error{err}
		}
		r.cache[key] = cur
	}

	desired := make(map[netip.AddrPort]RealServer, len(s.RealServers))
	for _, rs := range s.RealServers {
		rs.Address = rs.Address.Unmap()
		desired[rs.AddrPort()] = rs
	}
	// goneNow drops a virtual server the kernel does not have (ESRCH)
	// from the cache; its real servers that are not desired any more are
	// gone with it.
	goneNow := func(err error) (bool, []error) {
		for ap, rs := range cur.rs {
			if _, ok := desired[ap]; !ok {
				res.Removed = append(res.Removed, RemovedRealServer{VirtualServer: key, RealServer: rs})
			}
		}
		delete(r.cache, key)
		return true, append(errs, err)
	}

	if cur.vs != want {
		res.Writes.UpdateVirtualServer++
		switch err := r.h.UpdateVirtualServer(want); {
		case err == nil:
			cur.vs = want
		case errors.Is(err, syscall.ESRCH):
			return goneNow(err)
		default:
			// The old scheduling stays; the real servers still matter.
			errs = append(errs, err)
		}
	}

	var adds, updates, dels []RealServer
	for ap, rs := range desired {
		have, ok := cur.rs[ap]
		switch {
		case !ok:
			adds = append(adds, rs)
		case have.Weight != rs.Weight:
			updates = append(updates, rs)
		}
	}
	for ap, rs := range cur.rs {
		if _, ok := desired[ap]; !ok {
			dels = append(dels, rs)
		}
	}
	sortRealServers(adds)
	sortRealServers(updates)
	sortRealServers(dels)

	for _, rs := range adds {
		res.Writes.AddRealServer++
		err := r.h.AddRealServer(key, rs)
		if errors.Is(err, syscall.EEXIST) {
			// Someone added it behind our back: set its weight.
			res.Writes.UpdateRealServer++
			err = r.h.UpdateRealServer(key, rs)
		}
		switch {
		case err == nil:
			cur.rs[rs.AddrPort()] = rs
		case errors.Is(err, syscall.ESRCH):
			return goneNow(err)
		default:
			errs = append(errs, err)
		}
	}
	for _, rs := range updates {
		res.Writes.UpdateRealServer++
		err := r.h.UpdateRealServer(key, rs)
		if errors.Is(err, syscall.ENOENT) {
			// Deleted behind our back: add it again.
			delete(cur.rs, rs.AddrPort())
			res.Writes.AddRealServer++
			err = r.h.AddRealServer(key, rs)
		}
		switch {
		case err == nil:
			cur.rs[rs.AddrPort()] = rs
		case errors.Is(err, syscall.ESRCH):
			return goneNow(err)
		default:
			errs = append(errs, err)
		}
	}
	for _, rs := range dels {
		res.Writes.DeleteRealServer++
		err := r.h.DeleteRealServer(key, rs)
		switch {
		case err == nil, errors.Is(err, syscall.ENOENT):
			delete(cur.rs, rs.AddrPort())
			res.Removed = append(res.Removed, RemovedRealServer{VirtualServer: key, RealServer: rs})
		case errors.Is(err, syscall.ESRCH):
			return goneNow(err)
		default:
			errs = append(errs, err)
		}
	}
	return false, errs
}

// delete removes a virtual server the cache has; its real servers go
// with it.
func (r *Reconciler) delete(k VSKey, res *Result) error {
	cur, ok := r.cache[k]
	if !ok {
		return nil
	}
	res.Writes.DeleteVirtualServer++
	if err := r.h.DeleteVirtualServer(k); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	for _, rs := range cur.rs {
		res.Removed = append(res.Removed, RemovedRealServer{VirtualServer: k, RealServer: rs})
	}
	delete(r.cache, k)
	return nil
}
