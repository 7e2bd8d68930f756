package ipvs

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"k8s.io/klog/v2"
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
	// yield, if set, is called between two batches (Yielding).
	yield func()

	mu      sync.Mutex
	h       Interface
	exclude []netip.Prefix
	// ownFWMark says which fwmarks are the proxier's (nil: all).
	ownFWMark func(mark uint32) bool
	cache     map[VSKey]*applied
	// snapshot numbers the last Read; touched are the virtual servers
	// written since it (nil: no Read outstanding). A read taken outside
	// the lock is stale for those, and only for those.
	snapshot uint64
	touched  map[VSKey]bool
	// batch is create's buffer of writes, kept between calls: a first
	// sync at 10k Services creates in 100 batches of about 1,000 writes,
	// and a buffer grown anew each time was 40 MB of its garbage.
	batch []Write
}

// YieldBatch is how many virtual servers Apply, Resync and Repair go
// through between two calls of the Yielding function: about 1,000 netlink writes with 10
// real servers each, well under a second even under emulation.
const YieldBatch = 100

// pace calls the Yielding function before the i-th virtual server of a batch loop, once
// every YieldBatch.
func (r *Reconciler) pace(i int) {
	if r.yield != nil && i > 0 && i%YieldBatch == 0 {
		r.yield()
	}
}

type applied struct {
	vs VirtualServer // normalized; the zero value forces an update
	rs weights
}

// weights are a virtual server's real servers as the kernel holds them:
// the weight of each address and port, sorted by address and port. A
// sorted slice, not a map: one allocation of 40 bytes a real server,
// where a map of 10 took about 1 KB and a rehash or two on the way (the
// cache holds one per virtual server; the first sync built them all).
type weights []weighted

// weighted is one real server, packed without pointers: 24 bytes where a
// netip.AddrPort and an int were 40 with a pointer, 100k of them at 10k
// Services, every one of them for the GC to scan.
type weighted struct {
	addr   [16]byte // IPv4 in the first 4
	port   uint16
	is4    bool
	weight int32 // validated: 0..maxWeight
}

func newWeighted(ap netip.AddrPort, weight int) weighted {
	x := weighted{port: ap.Port(), weight: int32(weight)}
	if a := ap.Addr(); a.Is4() {
		v4 := a.As4()
		copy(x.addr[:], v4[:])
		x.is4 = true
	} else {
		x.addr = a.As16()
	}
	return x
}

func (x weighted) addrPort() netip.AddrPort {
	a := netip.AddrFrom16(x.addr)
	if x.is4 {
		a = netip.AddrFrom4([4]byte(x.addr[:4]))
	}
	return netip.AddrPortFrom(a, x.port)
}

func newWeights(rss []RealServer) weights {
	w := make(weights, 0, len(rss))
	for _, rs := range rss {
		w.put(rs)
	}
	return w
}

// compare orders as netip.AddrPort.Compare does (IPv4 first, then the
// address, then the port), without making AddrPorts: a resync at 10k
// Services searches 100k real servers, and the conversions were most of
// its time.
func (x weighted) compare(y weighted) int {
	if x.is4 != y.is4 {
		if x.is4 {
			return -1
		}
		return 1
	}
	if c := bytes.Compare(x.addr[:], y.addr[:]); c != 0 {
		return c
	}
	return cmp.Compare(x.port, y.port)
}

// find is where ap is, or would be.
func (w weights) find(ap netip.AddrPort) (int, bool) {
	return slices.BinarySearchFunc(w, newWeighted(ap, 0), weighted.compare)
}

// inOrder reports whether w is, element by element, the n real servers
// that at gives: true for most, as the kernel and the planner list them
// in address order; false sends the caller to the search.
func (w weights) inOrder(n int, at func(int) (netip.AddrPort, int)) bool {
	if len(w) != n {
		return false
	}
	for i := range w {
		if ap, weight := at(i); w[i] != newWeighted(ap, weight) {
			return false
		}
	}
	return true
}

// put holds rs; in address order it appends.
func (w *weights) put(rs RealServer) {
	x := newWeighted(rs.AddrPort(), rs.Weight)
	if n := len(*w); n == 0 || (*w)[n-1].compare(x) < 0 {
		*w = append(*w, x)
		return
	}
	i, ok := slices.BinarySearchFunc(*w, x, weighted.compare)
	if ok {
		(*w)[i].weight = x.weight
		return
	}
	*w = slices.Insert(*w, i, x)
}

// remove forgets the real server at ap.
func (w *weights) remove(ap netip.AddrPort) {
	if i, ok := w.find(ap); ok {
		*w = slices.Delete(*w, i, i+1)
	}
}

// get is the real server at ap, if held.
func (w weights) get(ap netip.AddrPort) (RealServer, bool) {
	i, ok := w.find(ap)
	if !ok {
		return RealServer{}, false
	}
	return w[i].realServer(), true
}

func (x weighted) realServer() RealServer {
	ap := x.addrPort()
	return RealServer{Address: ap.Addr(), Port: ap.Port(), Weight: int(x.weight)}
}

// sameAs reports whether w holds exactly the real servers read (nil:
// none were read, which is not the same as none held).
func (w weights) sameAs(read []RealServerConnections) bool {
	if read == nil || len(read) != len(w) {
		return false
	}
	if w.inOrder(len(read), func(i int) (netip.AddrPort, int) { return read[i].AddrPort, read[i].Weight }) {
		return true
	}
	for _, x := range read {
		if have, ok := w.get(x.AddrPort); !ok || have.Weight != x.Weight {
			return false
		}
	}
	return true
}

// holds reports whether the cache entry is s already (s normalized, as
// sortedServices makes it): the same scheduling and exactly its real
// servers with their weights.
func (a *applied) holds(s Service) bool {
	if a.vs != s.VirtualServer || len(a.rs) != len(s.RealServers) {
		return false
	}
	rss := s.RealServers
	if a.rs.inOrder(len(rss), func(i int) (netip.AddrPort, int) { return rss[i].AddrPort(), rss[i].Weight }) {
		return true
	}
	for _, rs := range rss {
		if have, ok := a.rs.get(rs.AddrPort()); !ok || have.Weight != rs.Weight {
			return false
		}
	}
	return true
}

// all are the real servers held, sorted.
func (w weights) all() []RealServer {
	out := make([]RealServer, 0, len(w))
	for _, x := range w {
		out = append(out, x.realServer())
	}
	return out
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
// servers have no address: OwnFWMarks says which are someone else's.
func NewReconciler(h Interface, excludeCIDRs []netip.Prefix) *Reconciler {
	r := &Reconciler{h: h, cache: map[VSKey]*applied{}}
	for _, p := range excludeCIDRs {
		if p.IsValid() {
			r.exclude = append(r.exclude, netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), p.Addr().Unmap().BitLen())).Masked())
		}
	}
	return r
}

// OwnFWMarks tells the Reconciler which fwmark virtual servers are its
// own: Resync leaves the others alone unless they are desired, as it
// does those inside the exclude CIDRs (keepalived makes fwmark virtual
// servers of its own). It returns r.
func (r *Reconciler) OwnFWMarks(own func(mark uint32) bool) *Reconciler {
	r.ownFWMark = own
	return r
}

// Yielding makes the Reconciler call yield between two batches of
// YieldBatch virtual servers in Apply, Resync and Repair: a full sync at
// 10k Services writes IPVS for tens of seconds on a slow node, and gives
// way in between to whatever else waits for the CPU. It returns r.
func (r *Reconciler) Yielding(yield func()) *Reconciler {
	r.yield = yield
	return r
}

// Excluded reports whether k is someone else's: inside the exclude CIDRs,
// or an fwmark outside the proxier's (OwnFWMarks).
func (r *Reconciler) Excluded(k VSKey) bool {
	k = k.Key()
	if k.FWMark != 0 {
		return r.ownFWMark != nil && !r.ownFWMark(k.FWMark)
	}
	for _, p := range r.exclude {
		if p.Contains(k.Address) {
			return true
		}
	}
	return false
}

// Connections reads the connection counts of k's real servers from the
// kernel: whether a draining real server still carries traffic.
func (r *Reconciler) Connections(k VSKey) (map[netip.AddrPort]Connections, error) {
	return r.h.GetConnections(k)
}

// AllConnections reads the connection counts of every real server of
// every virtual server at once (GetAllRealServers): a restarted proxier
// asks for many virtual servers' at its first sync. A virtual server
// missing from the answer is not known: ask Connections.
func (r *Reconciler) AllConnections() (map[VSKey]map[netip.AddrPort]Connections, error) {
	all, err := r.h.GetAllRealServers()
	if err != nil {
		return nil, err
	}
	return connectionsOf(all), nil
}

// service is what the cache holds for k. An adopted virtual server whose
// update failed has unknown scheduling: only its key is told.
func (a *applied) service(k VSKey) Service {
	s := Service{VirtualServer: a.vs}
	s.VSKey = k
	if len(a.rs) > 0 {
		s.RealServers = a.rs.all()
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
	errs = append(errs, r.syncAll(ups, 0, nil, &res)...)
	dels := make([]VSKey, 0, len(deletes))
	for _, k := range deletes {
		if !wanted[k.Key()] {
			dels = append(dels, k.Key())
		}
	}
	slices.SortFunc(dels, VSKey.Compare)
	dels = slices.Compact(dels)
	for i, k := range dels {
		r.pace(len(ups) + i)
		if err := r.delete(k, &res); err != nil {
			errs = append(errs, err)
		}
	}
	sortRemoved(res.Removed)
	return res, errors.Join(errs...)
}

// Snapshot is the kernel's IPVS table as one Read saw it, taken without
// the Reconciler's lock: a periodic repair reads 10k virtual servers
// while changes keep being applied, and compares under the lock after.
// The virtual servers written in between are judged by the cache, not by
// the snapshot (RepairFrom, ResyncFrom).
type Snapshot struct {
	id      uint64
	virtual []VirtualServer // sorted by key
	// real is every virtual server's real servers, read in bulk (nil when
	// not asked for, or when the bulk read failed).
	real map[VSKey][]RealServerConnections
	// settled is settle's, index for index with virtual: the cache entry
	// for the virtual server as read — the cache's own when it held it
	// exactly, else one made from the read (nil: its real servers were
	// not read).
	settled []*applied
}

// Len is the number of virtual servers read (0 for a nil Snapshot).
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.virtual)
}

// ConnectionsOf are the connection counts of k's real servers as the
// Snapshot read them, and whether it read k's (false for a nil Snapshot,
// or one read without real servers).
func (s *Snapshot) ConnectionsOf(k VSKey) (map[netip.AddrPort]Connections, bool) {
	if s == nil || s.real == nil {
		return nil, false
	}
	rss, ok := s.real[k]
	if !ok {
		return nil, false
	}
	m := make(map[netip.AddrPort]Connections, len(rss))
	for _, x := range rss {
		m[x.AddrPort] = x.Connections
	}
	return m, true
}

func connectionsOf(all map[VSKey][]RealServerConnections) map[VSKey]map[netip.AddrPort]Connections {
	out := make(map[VSKey]map[netip.AddrPort]Connections, len(all))
	for k, rss := range all {
		m := make(map[netip.AddrPort]Connections, len(rss))
		for _, x := range rss {
			m[x.AddrPort] = x.Connections
		}
		out[k] = m
	}
	return out
}

// ErrSnapshotSuperseded is returned for a Snapshot older than the last
// Read: the writes since it are no longer known.
var ErrSnapshotSuperseded = errors.New("IPVS snapshot superseded by a newer read")

// Read dumps the kernel's virtual servers, and with realServers every real
// server too (GetAllRealServers), for RepairFrom or ResyncFrom. It holds
// no lock of the Reconciler while it reads: Apply goes on meanwhile. One
// Read is outstanding at a time; a newer one supersedes it.
func (r *Reconciler) Read(realServers bool) (*Snapshot, error) {
	r.mu.Lock()
	r.snapshot++
	s := &Snapshot{id: r.snapshot}
	r.touched = map[VSKey]bool{}
	r.mu.Unlock()
	// Every real server in one read, beside the virtual servers' dump
	// (a file and a netlink socket: at a restart with 10k Services, two
	// reads of seconds each under emulation, on a node with CPUs to
	// spare); a virtual server the read missed (created since, or one it
	// cannot tell) is dumped alone. If the read fails, every one is.
	var wg sync.WaitGroup
	var realErr error
	if realServers {
		wg.Go(func() { s.real, realErr = r.h.GetAllRealServers() })
	}
	kernel, err := r.h.GetVirtualServers()
	wg.Wait()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(kernel, func(a, b VirtualServer) int { return a.VSKey.Compare(b.VSKey) })
	s.virtual = kernel
	if realErr != nil {
		klog.V(2).InfoS("Reading every IPVS real server at once failed; dumping each virtual server's", "err", realErr)
		s.real = nil
	}
	if s.real != nil {
		r.settle(s)
	}
	return s, nil
}

// settleBatch is how many virtual servers settle compares under one
// hold of r.mu.
const settleBatch = 500

// settle compares what s read with the cache, where Read runs: off the
// sync loop for a periodic resync, and while the informers list at a
// restart. At 10k Services these compares (a resync: 100k real servers)
// and conversions (a restart: every cache entry made anew) were most of
// ResyncFrom's time under r.mu, which a change arriving meanwhile waited
// for; ResyncFrom now only takes the verdicts. A virtual server written
// after the read is touched, and ResyncFrom takes the cache's entry for
// it, not these: so the verdicts hold for the others whenever they were
// made. r.mu is taken batch by batch, so that a sync's Apply can run
// between them.
func (r *Reconciler) settle(s *Snapshot) {
	s.settled = make([]*applied, len(s.virtual))
	for from := 0; from < len(s.virtual); from += settleBatch {
		r.mu.Lock()
		for i := from; i < min(from+settleBatch, len(s.virtual)); i++ {
			k, vs := s.virtual[i].Key(), s.virtual[i].normalized()
			rss, ok := s.real[k]
			if !ok {
				continue // missed by the bulk read: ResyncFrom dumps it alone
			}
			if a, ok := r.cache[k]; ok && a.vs == vs && a.rs.sameAs(rss) {
				s.settled[i] = a // as the kernel holds it: no new entry (most of them)
				continue
			}
			w := make(weights, 0, len(rss))
			for _, x := range rss {
				w.put(RealServer{Address: x.AddrPort.Addr(), Port: x.AddrPort.Port(), Weight: x.Weight})
			}
			s.settled[i] = &applied{vs: vs, rs: w}
		}
		r.mu.Unlock()
	}
}

// touch records a write to k for the outstanding Snapshot; r.mu is held.
func (r *Reconciler) touch(k VSKey) {
	if r.touched != nil {
		r.touched[k] = true
	}
}

// takeSnapshot checks that s is the outstanding Snapshot and returns the
// virtual servers written since it was read, ending it; r.mu is held.
func (r *Reconciler) takeSnapshot(s *Snapshot) (map[VSKey]bool, error) {
	if s == nil || s.id != r.snapshot || r.touched == nil {
		return nil, ErrSnapshotSuperseded
	}
	touched := r.touched
	r.touched = nil
	return touched, nil
}

// Resync dumps the kernel's virtual and real servers, rebuilds the cache
// from them and makes the kernel hold exactly all: it repairs drift,
// and deletes every other virtual server except those inside the exclude
// CIDRs. Use it at start and now and then; Apply for everything else.
func (r *Reconciler) Resync(all []Service) (Result, error) {
	s, err := r.Read(true)
	if err != nil {
		// Without the dump nothing is known: keep the cache as it was.
		_, errs := sortedServices(all)
		return Result{}, errors.Join(append(errs, fmt.Errorf("resync: %w", err))...)
	}
	return r.ResyncFrom(all, s)
}

// ResyncFrom is Resync on a Snapshot read earlier (Read(true)): a
// virtual server written since is taken as the cache has it, every other
// one as the snapshot saw it.
func (r *Reconciler) ResyncFrom(all []Service, s *Snapshot) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Result
	// How many times each key is wanted, invalid Services included (see
	// wantedKeys).
	wanted := make(map[VSKey]int, len(all))
	for _, svc := range all {
		wanted[svc.Key()]++
	}
	touched, err := r.takeSnapshot(s)
	if err != nil {
		_, errs := sortedServices(all)
		return res, errors.Join(append(errs, fmt.Errorf("resync: %w", err))...)
	}
	// Sized for what will be held: at a first sync the kernel has none
	// of the 10k virtual servers about to be created.
	cache := make(map[VSKey]*applied, max(len(s.virtual), len(all)))
	for k := range touched {
		if a, ok := r.cache[k]; ok {
			cache[k] = a
		}
	}
	var errs []error
	var unreadable []VSKey
	for i, v := range s.virtual {
		r.pace(i)
		k := v.Key()
		if touched[k] || (wanted[k] == 0 && r.Excluded(k)) {
			continue // written since the read; or someone else's: never read, never written
		}
		if s.settled != nil && s.settled[i] != nil {
			cache[k] = s.settled[i] // untouched since the read: its verdict holds
			continue
		}
		rss, err := r.h.GetRealServers(k)
		if err != nil {
			// Left out of the cache: a desired one is adopted by sync
			// (AddVirtualServer says EEXIST), another one deleted below.
			errs = append(errs, fmt.Errorf("resync: %w", err))
			if wanted[k] == 0 {
				unreadable = append(unreadable, k)
			}
			continue
		}
		cache[k] = &applied{vs: v.normalized(), rs: newWeights(rss)}
	}
	r.cache = cache
	s.settled = nil

	// Those held as desired already (most of them) need no write, so no
	// place in the order of the writes: only the others are sorted.
	// Sorting all 10k was most of what a resync that writes nothing
	// spent under r.mu. A key given twice is left to sortedServices,
	// which keeps the first given and reports the other.
	todo := make([]Service, 0, max(len(all)-len(cache), 0))
	for _, svc := range all {
		if wanted[svc.Key()] == 1 && svc.Validate() == nil {
			svc.VirtualServer = svc.VirtualServer.normalized()
			if a, ok := r.cache[svc.Key()]; ok && a.holds(svc) {
				continue
			}
		}
		todo = append(todo, svc)
	}
	ups, verrs := sortedServices(todo)
	errs = append(errs, verrs...)
	errs = append(errs, r.syncAll(ups, len(s.virtual), nil, &res)...)
	var stale []VSKey
	for k := range r.cache {
		if wanted[k] == 0 {
			stale = append(stale, k)
		}
	}
	for _, k := range unreadable {
		r.cache[k] = &applied{rs: weights{}}
		stale = append(stale, k)
	}
	slices.SortFunc(stale, VSKey.Compare)
	for i, k := range stale {
		r.pace(len(s.virtual) + len(ups) + i)
		if err := r.delete(k, &res); err != nil {
			errs = append(errs, err)
		}
	}
	sortRemoved(res.Removed)
	return res, errors.Join(errs...)
}

// Repair lists the kernel's virtual servers — one dump, no real server
// read — and restores those the cache has but the kernel lost or changed
// behind our back (ipvsadm -D, -C, -E), with their real servers as
// cached. It never deletes: strangers wait for Resync, and so do real
// servers changed behind our back. Cheap enough for every full sync.
func (r *Reconciler) Repair() (Result, error) {
	s, err := r.Read(false)
	if err != nil {
		return Result{}, fmt.Errorf("repair: %w", err)
	}
	return r.RepairFrom(s)
}

// RepairFrom is Repair on a Snapshot read earlier (Read): virtual servers
// written since the read are left as they are, the cache being newer.
func (r *Reconciler) RepairFrom(s *Snapshot) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Result
	touched, err := r.takeSnapshot(s)
	if err != nil {
		return res, fmt.Errorf("repair: %w", err)
	}
	have := make(map[VSKey]VirtualServer, len(s.virtual))
	for _, v := range s.virtual {
		have[v.Key()] = v.normalized()
	}
	// The drifted ones, sorted for the order of the writes: found first,
	// since sorting all 10k keys was most of a repair that found none,
	// time a change arriving meanwhile waited.
	var keys []VSKey
	for k, a := range r.cache {
		if touched[k] {
			continue
		}
		if a.vs == (VirtualServer{}) {
			// Adopted, its scheduling unknown: if lost, what to restore is
			// unknown too; the next Apply or Resync re-creates it.
			continue
		}
		if v, ok := have[k]; !ok || v != a.vs {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, VSKey.Compare)
	var errs []error
	for i, k := range keys {
		r.pace(i)
		a := r.cache[k]
		_, ok := have[k]
		s := a.service(k)
		if !ok {
			delete(r.cache, k) // gone with its real servers (IPVS dropped their connections)
		} else {
			a.vs = VirtualServer{} // changed: force the update
		}
		errs = append(errs, r.sync(s, &res)...)
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
			errs = append(errs, &VirtualServerError{Key: s.Key(), Err: err})
			continue
		}
		s.VirtualServer = s.VirtualServer.normalized()
		out = append(out, s)
	}
	// Sorted by key, the first given first: through indices, since a
	// stable sort of 10k Services moved their 100-byte structs about
	// (0.8 s of a first sync under emulation).
	order := make([]int, len(out))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		if c := out[i].VSKey.Compare(out[j].VSKey); c != 0 {
			return c
		}
		return i - j
	})
	dedup := make([]Service, 0, len(out))
	for n, i := range order {
		s := out[i]
		if n > 0 && s.VSKey == out[order[n-1]].VSKey {
			errs = append(errs, &VirtualServerError{Key: s.VSKey, Err: fmt.Errorf("virtual server %s given twice: kept the first", s.VSKey)})
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

// syncAll syncs services (sorted, valid) in order, but those skip says
// are as desired already, pacing from the pace-th virtual server. Those
// the cache lacks are created in batches when the kernel takes them
// (Batcher): a first sync at 10k Services creates them all, and one
// round trip per write was most of its time. A batch is sent before each
// yield, so that what a pace says was written has been.
func (r *Reconciler) syncAll(services []Service, pace int, skip func(Service) bool, res *Result) []error {
	var errs []error
	b, batching := r.h.(Batcher)
	var create []Service
	flush := func() {
		if len(create) > 0 {
			errs = append(errs, r.create(b, create, res)...)
			create = create[:0]
		}
	}
	for i, s := range services {
		if n := pace + i; n > 0 && n%YieldBatch == 0 {
			flush()
		}
		r.pace(pace + i)
		if skip != nil && skip(s) {
			continue
		}
		if _, cached := r.cache[s.Key()]; batching && !cached {
			create = append(create, s)
			continue
		}
		errs = append(errs, r.sync(s, res)...)
	}
	flush()
	return errs
}

// create adds services the cache lacks, as sync would, in two batches:
// every virtual server, then the real servers of those the kernel took.
// The writes and errors are sync's, one for one: a virtual server
// refused has no real server sent; one the kernel had already (EEXIST)
// is adopted and synced on its own, as are the services whose real
// servers met the rare answers sync handles with more writes (EEXIST,
// ESRCH).
func (r *Reconciler) create(b Batcher, services []Service, res *Result) []error {
	var errs []error
	writes := r.batch[:0]
	defer func() { r.batch = writes[:0] }()
	for _, s := range services {
		r.touch(s.Key())
		writes = append(writes, Write{Op: OpAddVirtualServer, VirtualServer: s.VirtualServer})
	}
	res.Writes.AddVirtualServer += len(services)
	added := make([]Service, 0, len(services))
	for i, err := range b.WriteBatch(writes) {
		s := services[i]
		switch {
		case err == nil:
			r.cache[s.Key()] = &applied{vs: s.VirtualServer, rs: make(weights, 0, len(s.RealServers))}
			added = append(added, s)
		case errors.Is(err, syscall.EEXIST):
			// As ensureVirtualServer: adopt what the kernel holds.
			rss, gerr := r.h.GetRealServers(s.Key())
			if gerr != nil {
				errs = append(errs, &VirtualServerError{Key: s.Key(), Err: gerr})
				continue
			}
			r.cache[s.Key()] = &applied{rs: newWeights(rss)}
			errs = append(errs, r.sync(s, res)...)
		default:
			errs = append(errs, &VirtualServerError{Key: s.Key(), Err: err})
		}
	}
	writes = writes[:0]
	for _, s := range added {
		for _, rs := range s.RealServers {
			rs.Address = rs.Address.Unmap()
			writes = append(writes, Write{Op: OpAddRealServer, VirtualServer: s.VirtualServer, RealServer: rs})
		}
	}
	if len(writes) == 0 {
		return errs
	}
	res.Writes.AddRealServer += len(writes)
	werrs := b.WriteBatch(writes)
	i := 0
	for _, s := range added {
		cur := r.cache[s.Key()]
		var failed []error
		again := false
		for range s.RealServers {
			switch err := werrs[i]; {
			case err == nil:
				cur.rs.put(writes[i].RealServer)
			case errors.Is(err, syscall.EEXIST), errors.Is(err, syscall.ESRCH):
				again = true
			default:
				failed = append(failed, &VirtualServerError{Key: s.Key(), Err: err})
			}
			i++
		}
		if again {
			errs = append(errs, r.sync(s, res)...)
		} else {
			errs = append(errs, failed...)
		}
	}
	return errs
}

// sync makes one virtual server and its real servers as desired. If the
// virtual server turns out to have vanished behind our back, it is
// created again, once; the errors of the first try are then moot.
func (r *Reconciler) sync(s Service, res *Result) []error {
	gone, errs := r.syncOnce(s, res)
	if gone {
		_, errs = r.syncOnce(s, res)
	}
	for i, err := range errs {
		errs[i] = &VirtualServerError{Key: s.Key(), Err: err}
	}
	return errs
}

// syncOnce returns gone when the kernel said the virtual server does not
// exist (ESRCH) although the cache had it; the cache then no longer has
// it either, and the next try creates it.
func (r *Reconciler) syncOnce(s Service, res *Result) (gone bool, errs []error) {
	want := s.VirtualServer
	cur, err := r.ensureVirtualServer(want, res)
	if err != nil {
		return false, []error{err}
	}
	vs := vsSync{r: r, key: want.VSKey, cur: cur, res: res, desired: make([]RealServer, 0, len(s.RealServers))}
	for _, rs := range s.RealServers {
		rs.Address = rs.Address.Unmap()
		vs.desired = append(vs.desired, rs)
	}
	sortRealServers(vs.desired)
	if cur.vs != want {
		r.touch(want.VSKey)
		res.Writes.UpdateVirtualServer++
		switch err := r.h.UpdateVirtualServer(want); {
		case err == nil:
			cur.vs = want
		case errors.Is(err, syscall.ESRCH):
			return vs.gone(err)
		default:
			// The old scheduling stays; the real servers still matter.
			vs.errs = append(vs.errs, err)
		}
	}
	adds, updates, dels := vs.diff()
	for _, step := range []struct {
		rss   []RealServer
		write func(RealServer) error
	}{{adds, vs.add}, {updates, vs.update}, {dels, vs.delete}} {
		for _, rs := range step.rss {
			if err := step.write(rs); errors.Is(err, syscall.ESRCH) {
				return vs.gone(err)
			}
		}
	}
	return false, vs.errs
}

// ensureVirtualServer returns the cache entry of want's key, creating the
// virtual server when the cache lacks it, or adopting it when the kernel
// has it already (Apply before any Resync, or a failed dump): real servers
// and all, the caller then sets its scheduling.
func (r *Reconciler) ensureVirtualServer(want VirtualServer, res *Result) (*applied, error) {
	if cur, ok := r.cache[want.VSKey]; ok {
		return cur, nil
	}
	r.touch(want.VSKey)
	res.Writes.AddVirtualServer++
	err := r.h.AddVirtualServer(want)
	var cur *applied
	switch {
	case err == nil:
		cur = &applied{vs: want, rs: weights{}}
	case errors.Is(err, syscall.EEXIST):
		rss, gerr := r.h.GetRealServers(want.VSKey)
		if gerr != nil {
			return nil, gerr
		}
		cur = &applied{rs: newWeights(rss)}
	default:
		return nil, err
	}
	r.cache[want.VSKey] = cur
	return cur, nil
}

// vsSync brings one cached virtual server's real servers to desired.
type vsSync struct {
	r       *Reconciler
	key     VSKey
	cur     *applied
	desired []RealServer // sorted by address and port
	res     *Result
	errs    []error
}

// diff returns the real servers to add, to reweigh and to delete, sorted:
// a merge of the two sorted lists.
func (v *vsSync) diff() (adds, updates, dels []RealServer) {
	want, have := v.desired, v.cur.rs
	for len(want) > 0 || len(have) > 0 {
		c := 0
		switch {
		case len(want) == 0:
			c = 1
		case len(have) == 0:
			c = -1
		default:
			c = want[0].AddrPort().Compare(have[0].addrPort())
		}
		switch {
		case c < 0:
			adds, want = append(adds, want[0]), want[1:]
		case c > 0:
			dels, have = append(dels, have[0].realServer()), have[1:]
		default:
			if int(have[0].weight) != want[0].Weight {
				updates = append(updates, want[0])
			}
			want, have = want[1:], have[1:]
		}
	}
	return adds, updates, dels
}

// isDesired reports whether the real server at ap is desired.
func (v *vsSync) isDesired(ap netip.AddrPort) bool {
	_, ok := slices.BinarySearchFunc(v.desired, ap, func(rs RealServer, ap netip.AddrPort) int { return rs.AddrPort().Compare(ap) })
	return ok
}

// done records a real server write: err nil means rs is now as cached
// (removed: gone from the kernel). ESRCH is returned to the caller, whose
// virtual server has vanished; other errors are kept.
func (v *vsSync) done(rs RealServer, removed bool, err error) error {
	switch {
	case err == nil && removed:
		v.cur.rs.remove(rs.AddrPort())
		v.res.Removed = append(v.res.Removed, RemovedRealServer{VirtualServer: v.key, RealServer: rs})
	case err == nil:
		v.cur.rs.put(rs)
	case errors.Is(err, syscall.ESRCH):
		return err
	default:
		v.errs = append(v.errs, err)
	}
	return nil
}

func (v *vsSync) add(rs RealServer) error {
	v.r.touch(v.key)
	v.res.Writes.AddRealServer++
	err := v.r.h.AddRealServer(v.key, rs)
	if errors.Is(err, syscall.EEXIST) {
		// Someone added it behind our back: set its weight.
		v.res.Writes.UpdateRealServer++
		err = v.r.h.UpdateRealServer(v.key, rs)
	}
	return v.done(rs, false, err)
}

func (v *vsSync) update(rs RealServer) error {
	v.r.touch(v.key)
	v.res.Writes.UpdateRealServer++
	err := v.r.h.UpdateRealServer(v.key, rs)
	if errors.Is(err, syscall.ENOENT) {
		// Deleted behind our back: add it again.
		v.cur.rs.remove(rs.AddrPort())
		v.res.Writes.AddRealServer++
		err = v.r.h.AddRealServer(v.key, rs)
	}
	return v.done(rs, false, err)
}

func (v *vsSync) delete(rs RealServer) error {
	v.r.touch(v.key)
	v.res.Writes.DeleteRealServer++
	err := v.r.h.DeleteRealServer(v.key, rs)
	if errors.Is(err, syscall.ENOENT) {
		err = nil // already gone
	}
	return v.done(rs, true, err)
}

// gone drops a virtual server the kernel does not have (ESRCH) from the
// cache; its real servers that are not desired any more are gone with it.
func (v *vsSync) gone(err error) (bool, []error) {
	for _, x := range v.cur.rs {
		if !v.isDesired(x.addrPort()) {
			v.res.Removed = append(v.res.Removed, RemovedRealServer{VirtualServer: v.key, RealServer: x.realServer()})
		}
	}
	delete(v.r.cache, v.key)
	return true, append(v.errs, err)
}

// delete removes a virtual server the cache has; its real servers go
// with it.
func (r *Reconciler) delete(k VSKey, res *Result) error {
	cur, ok := r.cache[k]
	if !ok {
		return nil
	}
	r.touch(k)
	res.Writes.DeleteVirtualServer++
	if err := r.h.DeleteVirtualServer(k); err != nil && !errors.Is(err, syscall.ESRCH) {
		return &VirtualServerError{Key: k, Err: err}
	}
	for _, rs := range cur.rs.all() {
		res.Removed = append(res.Removed, RemovedRealServer{VirtualServer: k, RealServer: rs})
	}
	delete(r.cache, k)
	return nil
}

// VirtualServerError is what went wrong with one virtual server; the
// others were still applied.
type VirtualServerError struct {
	Key VSKey
	Err error
}

func (e *VirtualServerError) Error() string { return e.Err.Error() }
func (e *VirtualServerError) Unwrap() error { return e.Err }

// Refused reports whether the virtual server itself was refused (invalid,
// or an answer the kernel gives for one object's content), rather than
// IPVS failing the node (no memory, no module, a broken socket): one
// refused object must not fail every other Service's sync.
func (e *VirtualServerError) Refused() bool {
	var errno syscall.Errno
	if !errors.As(e.Err, &errno) {
		return true // refused before any write: invalid, or given twice
	}
	switch errno {
	case syscall.EINVAL, syscall.ERANGE, syscall.ENOENT, syscall.EEXIST, syscall.E2BIG,
		syscall.EOVERFLOW, syscall.ESRCH, syscall.EADDRNOTAVAIL, syscall.EAFNOSUPPORT:
		return true
	}
	return false
}
