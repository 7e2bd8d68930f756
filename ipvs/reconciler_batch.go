package ipvs

import (
	"errors"
	"net/netip"
	"syscall"
)

// The Reconciler's writes go out in batches (WriteBatch): a group of up
// to YieldBatch Services costs two round trips of many requests each, not
// one round trip per request. The answers are then taken one by one
// exactly as the one-at-a-time path (sync, delete) takes them: a refused
// request is handed to the same code, which sees the kernel's answer as
// if it had just sent the request itself (knownAnswer), so errors, retries
// (adopt on EEXIST, re-add on ENOENT, re-create on ESRCH), the cache and
// the write counts are those of the one-at-a-time path. One exception: a
// virtual server that vanished behind our back (ESRCH) had the rest of its
// group's real server requests sent all the same; they are counted.

// syncAll syncs services (sorted, valid) in groups that end where pace
// may yield (every YieldBatch), so a Yield never waits inside a group;
// base is the pace index of the first one.
func (r *Reconciler) syncAll(services []Service, base int, res *Result) []error {
	var errs []error
	start := 0
	for i := range services {
		if (base+i)%YieldBatch == 0 && i > start {
			errs = append(errs, r.syncGroup(services[start:i], res)...)
			start = i
		}
		r.pace(base + i)
	}
	if start < len(services) {
		errs = append(errs, r.syncGroup(services[start:], res)...)
	}
	return errs
}

func (r *Reconciler) syncGroup(group []Service, res *Result) []error {
	var errs []error
	// First the virtual servers themselves.
	var reqs []Request
	for _, s := range group {
		want := s.VirtualServer
		switch cur, ok := r.cache[want.VSKey]; {
		case !ok:
			reqs = append(reqs, Request{Op: OpAddVirtualServer, VirtualServer: want})
		case cur.vs != want:
			reqs = append(reqs, Request{Op: OpUpdateVirtualServer, VirtualServer: want})
		}
	}
	refused := map[VSKey]bool{}
	for i, err := range WriteBatch(r.h, reqs) {
		req := reqs[i]
		key := req.VirtualServer.VSKey
		if err != nil {
			// sync redoes the Service from the kernel's answer.
			refused[key] = true
			r.withAnswer(req, err, func() { errs = append(errs, r.sync(r.service(group, key), res)...) })
			continue
		}
		res.Writes.count(req.Op)
		if req.Op == OpAddVirtualServer {
			r.cache[key] = &applied{vs: req.VirtualServer, rs: map[netip.AddrPort]RealServer{}}
		} else {
			r.cache[key].vs = req.VirtualServer
		}
	}

	// Then the real servers of the others, in the order sync writes them.
	type span struct {
		vs       vsSync
		s        Service
		first, n int
	}
	var spans []span
	reqs = reqs[:0]
	for _, s := range group {
		if refused[s.VSKey] {
			continue
		}
		vs := vsSync{r: r, key: s.VSKey, cur: r.cache[s.VSKey], res: res, desired: desiredRealServers(s)}
		sp := span{vs: vs, s: s, first: len(reqs)}
		adds, updates, dels := vs.diff()
		for _, step := range []struct {
			op  Op
			rss []RealServer
		}{{OpAddRealServer, adds}, {OpUpdateRealServer, updates}, {OpDeleteRealServer, dels}} {
			for _, rs := range step.rss {
				reqs = append(reqs, Request{Op: step.op, VirtualServer: s.VirtualServer, RealServer: rs})
			}
		}
		sp.n = len(reqs) - sp.first
		spans = append(spans, sp)
	}
	werrs := WriteBatch(r.h, reqs)
	for _, sp := range spans {
		vs := &sp.vs
		var gone error
		for j := sp.first; j < sp.first+sp.n; j++ {
			req, err := reqs[j], werrs[j]
			if gone != nil {
				res.Writes.count(req.Op) // sent before we knew
				continue
			}
			if err == nil {
				res.Writes.count(req.Op)
				err = vs.done(req.RealServer, req.Op == OpDeleteRealServer, nil)
			} else {
				r.withAnswer(req, err, func() {
					switch req.Op {
					case OpAddRealServer:
						err = vs.add(req.RealServer)
					case OpUpdateRealServer:
						err = vs.update(req.RealServer)
					default:
						err = vs.delete(req.RealServer)
					}
				})
			}
			if errors.Is(err, syscall.ESRCH) {
				gone = err
			}
		}
		serrs := vs.errs
		if gone != nil {
			vs.gone(gone)
			_, serrs = r.syncOnce(sp.s, res)
		}
		for _, err := range serrs {
			errs = append(errs, &VirtualServerError{Key: sp.s.Key(), Err: err})
		}
	}
	return errs
}

// service is the Service of group with key k.
func (r *Reconciler) service(group []Service, k VSKey) Service {
	for _, s := range group {
		if s.VSKey == k {
			return s
		}
	}
	return Service{}
}

// withAnswer runs fn with r.h answering req with err, once, without
// sending it: the batch sent it already.
func (r *Reconciler) withAnswer(req Request, err error, fn func()) {
	h := r.h
	r.h = &knownAnswer{Interface: h, req: req, err: err}
	defer func() { r.h = h }()
	fn()
}

func desiredRealServers(s Service) map[netip.AddrPort]RealServer {
	m := make(map[netip.AddrPort]RealServer, len(s.RealServers))
	for _, rs := range s.RealServers {
		rs.Address = rs.Address.Unmap()
		m[rs.AddrPort()] = rs
	}
	return m
}

// deleteAll deletes the cached virtual servers of keys (sorted) as delete
// does one by one, in batches that end where pace may yield; base is the
// pace index of the first key.
func (r *Reconciler) deleteAll(keys []VSKey, base int, res *Result) []error {
	var errs []error
	var reqs []Request
	flush := func() {
		for i, err := range WriteBatch(r.h, reqs) {
			k := reqs[i].VirtualServer.VSKey
			res.Writes.DeleteVirtualServer++
			if err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, &VirtualServerError{Key: k, Err: err})
				continue
			}
			for _, rs := range r.cache[k].rs {
				res.Removed = append(res.Removed, RemovedRealServer{VirtualServer: k, RealServer: rs})
			}
			delete(r.cache, k)
		}
		reqs = reqs[:0]
	}
	for i, k := range keys {
		if (base+i)%YieldBatch == 0 && len(reqs) > 0 {
			flush()
		}
		r.pace(base + i)
		if _, ok := r.cache[k]; ok {
			reqs = append(reqs, Request{Op: OpDeleteVirtualServer, VirtualServer: VirtualServer{VSKey: k}})
		}
	}
	if len(reqs) > 0 {
		flush()
	}
	return errs
}

// knownAnswer is an Interface that answers the first call matching req
// with err, without sending it, and passes every other call on.
type knownAnswer struct {
	Interface
	req  Request
	err  error
	used bool
}

func (k *knownAnswer) take(op Op, key VSKey, rs RealServer) (error, bool) {
	if k.used || op != k.req.Op || key != k.req.VirtualServer.VSKey || rs != k.req.RealServer {
		return nil, false
	}
	k.used = true
	return k.err, true
}

func (k *knownAnswer) AddVirtualServer(v VirtualServer) error {
	if err, ok := k.take(OpAddVirtualServer, v.VSKey, RealServer{}); ok {
		return err
	}
	return k.Interface.AddVirtualServer(v)
}

func (k *knownAnswer) UpdateVirtualServer(v VirtualServer) error {
	if err, ok := k.take(OpUpdateVirtualServer, v.VSKey, RealServer{}); ok {
		return err
	}
	return k.Interface.UpdateVirtualServer(v)
}

func (k *knownAnswer) AddRealServer(key VSKey, rs RealServer) error {
	if err, ok := k.take(OpAddRealServer, key, rs); ok {
		return err
	}
	return k.Interface.AddRealServer(key, rs)
}

func (k *knownAnswer) UpdateRealServer(key VSKey, rs RealServer) error {
	if err, ok := k.take(OpUpdateRealServer, key, rs); ok {
		return err
	}
	return k.Interface.UpdateRealServer(key, rs)
}

func (k *knownAnswer) DeleteRealServer(key VSKey, rs RealServer) error {
	if err, ok := k.take(OpDeleteRealServer, key, rs); ok {
		return err
	}
	return k.Interface.DeleteRealServer(key, rs)
}
