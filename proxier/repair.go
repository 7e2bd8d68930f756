package proxier

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/ipvs"
)

// kernelRead is what a periodic repair reads of the kernel before it
// takes syncMu (readKernel): at 10k Services, the IPVS dump and the
// address lists take most of a second under emulation, and a change
// arriving meanwhile must not wait for them. The repair then compares
// under syncMu. The virtual servers written between the read and the
// compare are judged by what nftvs applied, not by the read: the IPVS
// Reconciler keeps track (ipvs.Snapshot). Addresses need no such record
// (addressesRead). A part that could not be read is read again under the
// lock, as a sync without a kernelRead does.
type kernelRead struct {
	ipvs    *ipvs.Snapshot
	ipvsErr error
	// resync: an IPVS resync was due, and ipvs holds every real server.
	resync bool
	// ipvsTook is how long the IPVS read took.
	ipvsTook time.Duration
	addrs    *ipvs.AddressSnapshot
	addrsErr error
	// host are the node's addresses, listed while hostGen was current.
	host    hostAddresses
	hostGen uint64
}

// hostAddresses are the node's addresses as listed (err: not listed),
// chosen as node port addresses and local ones.
type hostAddresses struct {
	nodePort, local []netip.Addr
	err             error
}

// readForRepair reads what a periodic repair compares, without syncMu
// but for a moment to see whether an IPVS resync is due.
func (p *Proxier) readForRepair() *kernelRead {
	p.syncMu.Lock()
	now := p.cfg.Clock.Now()
	resync := p.lastIPVSResync.IsZero() || now.Sub(p.lastIPVSResync) >= p.cfg.IPVSResyncPeriod
	p.syncMu.Unlock()
	return p.readKernel(resync)
}

// ReadAhead reads the kernel for the first sync on a goroutine of its
// own, to be called before the informers list: on a restart at 10k
// Services, reading back IPVS (a resync: every real server), the nft
// table and the addresses takes several seconds under emulation, which
// are then spent while the Services and EndpointSlices are listed
// instead of after. Nothing writes the kernel before the first sync,
// which waits for the read to end and compares against it.
func (p *Proxier) ReadAhead() {
	ahead := make(chan *kernelRead, 1)
	p.syncMu.Lock()
	p.ahead = ahead
	p.syncMu.Unlock()
	go func() {
		// The nft table and IPVS are read at once, on two sockets: at 10k
		// Services under emulation 1.9 s and 3.5 s, which one after the
		// other outlasted the informers' LIST.
		start := time.Now()
		var nftTook time.Duration
		nftDone := make(chan struct{})
		go func() {
			defer close(nftDone)
			p.k.NFT.ReadAhead()
			nftTook = time.Since(start)
		}()
		r := p.readKernel(true)
		kernelTook := time.Since(start)
		<-nftDone
		// Where a restart's time goes, with the first sync's "Full sync".
		klog.InfoS("Read the kernel ahead of the first sync", "took", time.Since(start), "nft", nftTook, "ipvsAndAddresses", kernelTook,
			"ipvs", r.ipvsTook, "virtualServers", r.ipvs.Len())
		ahead <- r
	}()
}

// readAhead is ReadAhead's read, waited for, once; syncMu is held.
func (p *Proxier) readAhead() *kernelRead {
	if p.ahead == nil {
		return nil
	}
	r := <-p.ahead
	p.ahead = nil
	return r
}

// readKernel reads what a repair compares, with every real server if
// resync; it takes no lock of the proxier's.
func (p *Proxier) readKernel(resync bool) *kernelRead {
	r := &kernelRead{resync: resync, hostGen: p.hostGen.Load()}
	// The addresses beside IPVS: two sockets, and at 10k Services a list
	// of 10k addresses (most of a second under emulation).
	var wg sync.WaitGroup
	wg.Go(func() {
		if p.k.Addresses != nil {
			r.addrs, r.addrsErr = p.k.Addresses.ReadAddresses(p.cfg.DummyName)
		}
		if r.addrs != nil {
			r.host = p.chooseHostAddresses(r.addrs.Elsewhere(), nil)
		} else {
			r.host = p.listHostAddresses()
		}
	})
	start := time.Now()
	r.ipvs, r.ipvsErr = p.k.IPVS.Read(resync)
	r.ipvsTook = time.Since(start)
	wg.Wait()
	return r
}

// listHostAddresses lists the node's addresses (no lock needed).
func (p *Proxier) listHostAddresses() hostAddresses {
	if p.cfg.HostAddresses == nil {
		return hostAddresses{}
	}
	return p.chooseHostAddresses(p.cfg.HostAddresses())
}

// chooseHostAddresses chooses node port and local addresses among host.
func (p *Proxier) chooseHostAddresses(host []netip.Addr, err error) hostAddresses {
	if err != nil {
		return hostAddresses{err: err}
	}
	var h hostAddresses
	if p.cfg.NodePortAddresses != nil {
		h.nodePort = p.cfg.NodePortAddresses(host)
	}
	if p.cfg.LocalAddresses != nil {
		h.local = p.cfg.LocalAddresses(host)
	}
	return h
}

// setHostAddresses takes listed addresses as the node's, and reports
// whether they changed; syncMu is held. A list that failed keeps the
// previous one.
func (p *Proxier) setHostAddresses(h hostAddresses) bool {
	if p.cfg.HostAddresses == nil {
		return false
	}
	defer p.hostGen.Add(1)
	if h.err != nil {
		klog.ErrorS(h.err, "Listing the node's addresses; keeping the previous ones")
		return false
	}
	changed := false
	for _, a := range []struct {
		list []netip.Addr
		set  bool
		into *[]netip.Addr
		what string
	}{{h.nodePort, p.cfg.NodePortAddresses != nil, &p.nodePortAddresses, "node port"},
		{h.local, p.cfg.LocalAddresses != nil, &p.localAddresses, "local"}} {
		if !a.set {
			continue
		}
		addrs := uniqueAddrs(a.list)
		if !slices.Equal(addrs, *a.into) {
			klog.V(2).InfoS("The node's addresses changed", "addresses", a.what, "now", addrs)
			changed = true
		}
		*a.into = addrs
	}
	return changed
}

// refreshHostAddresses lists the node's addresses again and reports
// whether they changed. A read taken earlier (r) is used unless a sync
// has listed them since, which makes r's list older than what is held.
func (p *Proxier) refreshHostAddresses(r *kernelRead) bool {
	if r != nil && r.hostGen == p.hostGen.Load() {
		return p.setHostAddresses(r.host)
	}
	return p.setHostAddresses(p.listHostAddresses())
}

// addressesRead is r's read of kube-ipvs0's addresses, if it has one.
// Unlike IPVS's, it needs no record of the writes since: the diff is
// against the addresses wanted now, and writing what a sync wrote since
// (adding an address held, deleting one gone) is a no-op, not an error.
func addressesRead(r *kernelRead) *ipvs.AddressSnapshot {
	if r == nil {
		return nil
	}
	if r.addrsErr != nil {
		klog.V(2).InfoS("Reading kube-ipvs0's addresses off the sync path failed; reading them again", "err", r.addrsErr)
	}
	return r.addrs
}

// repairIPVS repairs IPVS from r (Repair, without r), before Apply.
func (p *Proxier) repairIPVS(r *kernelRead) (ipvs.Result, error) {
	return fromRead(r, r != nil, p.k.IPVS.Repair, p.k.IPVS.RepairFrom)
}

// resyncIPVS resyncs IPVS from r (Resync, without r or when r has no
// real servers).
func (p *Proxier) resyncIPVS(all []ipvs.Service, r *kernelRead) (ipvs.Result, error) {
	return fromRead(r, r != nil && r.resync,
		func() (ipvs.Result, error) { return p.k.IPVS.Resync(all) },
		func(s *ipvs.Snapshot) (ipvs.Result, error) { return p.k.IPVS.ResyncFrom(all, s) })
}

// fromRead runs from on r's IPVS read when usable (r has what is needed
// and read it), else now, which reads under the lock; also when a newer
// read superseded r's.
func fromRead(r *kernelRead, usable bool, now func() (ipvs.Result, error), from func(*ipvs.Snapshot) (ipvs.Result, error)) (ipvs.Result, error) {
	if !usable || r.ipvsErr != nil {
		return now()
	}
	res, err := from(r.ipvs)
	if errors.Is(err, ipvs.ErrSnapshotSuperseded) {
		klog.V(2).InfoS("IPVS read again: a newer read superseded the periodic one")
		return now()
	}
	return res, err
}
