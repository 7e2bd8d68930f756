package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftvs/nftvs/ipvs"
)

// Floor is the kernel floor of a first sync (issue 27): the same kernel
// objects nftvs's first sync makes for the workload — a virtual server
// per ClusterIP with its real servers, the ClusterIPs on kube-ipvs0, the
// nft elements of each ClusterIP (its address and port, its address on
// kube-ipvs0) — written as fast as netlink takes
// them, in a network namespace of their own in the same VM, with no
// API, no planning and no reading back: IPVS in batches
// (ipvs.Kernel.WriteBatch), the addresses as trains of RTM_NEWADDR per
// sendmsg with an ACK on the last only (nftvs's own NetlinkAddresses.batch), the nft elements as one
// transaction; the three at once, as nftvs's full sync writes addresses
// beside IPVS.
type Floor struct {
	// Seconds is the whole floor, from the first write to the last
	// answer; the others each part's own time (they overlap).
	Seconds        float64 `json:"seconds"`
	IPVSSeconds    float64 `json:"ipvsSeconds"`
	AddressSeconds float64 `json:"addressSeconds"`
	NFTSeconds     float64 `json:"nftSeconds"`
	// Writes are the netlink requests sent (IPVS, addresses, nft
	// elements).
	IPVSWrites, AddressWrites, NFTElements int
	Error                                  string `json:"error,omitempty"`
}

// RunFloor writes n Services × eps endpoints (the workload's addresses)
// in a fresh network namespace, and deletes the namespace.
func RunFloor(n, eps int) *Floor {
	f := &Floor{}
	runtime.LockOSThread() // NewNamed enters the new namespace; Set leaves it
	orig, err := netns.Get()
	if err != nil {
		f.Error = err.Error()
		return f
	}
	defer orig.Close()
	ns, err := netns.NewNamed("bench-floor")
	if err != nil {
		f.Error = fmt.Sprintf("new netns: %v", err)
		return f
	}
	defer func() {
		ns.Close()
		_ = netns.DeleteNamed("bench-floor")
	}()
	if err := netns.Set(orig); err != nil {
		f.Error = err.Error()
		return f
	}
	runtime.UnlockOSThread() // back in its own namespace
	const path = "/run/netns/bench-floor"
	if err := f.write(path, ns, n, eps); err != nil {
		f.Error = err.Error()
	}
	return f
}

func (f *Floor) write(path string, ns netns.NsHandle, n, eps int) error {
	k, err := ipvs.NewKernel(path)
	if err != nil {
		return err
	}
	defer k.Close()
	a, err := ipvs.NewNetlinkAddresses(path)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.EnsureDummy(ipvs.DummyName); err != nil {
		return err
	}
	// A node's namespace has its loopback up, hence a local routing
	// table. A new namespace has none until an address comes up, and
	// until then IPVS refuses every real server (EINVAL: it checks that
	// the address is unicast in the local table), which raced with the
	// address writes beside it (TestRunFloor failed so on 7 December).
	if err := loopbackUp(ns); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	nft, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}

	vss := make([]ipvs.Write, 0, n)
	rss := make([]ipvs.Write, 0, n*eps)
	addrs := make([]netip.Addr, 0, n)
	for i := range n {
		vs := ipvs.VirtualServer{VSKey: ipvs.VSKey{Address: ClusterIP(i), Protocol: ipvs.TCP, Port: ServicePort}, Scheduler: "rr"}
		vss = append(vss, ipvs.Write{Op: ipvs.OpAddVirtualServer, VirtualServer: vs})
		for j := range eps {
			rss = append(rss, ipvs.Write{Op: ipvs.OpAddRealServer, VirtualServer: vs,
				RealServer: ipvs.RealServer{Address: EndpointIP(i, j, eps), Port: TargetPort, Weight: 1}})
		}
		addrs = append(addrs, ClusterIP(i))
	}
	f.IPVSWrites, f.AddressWrites, f.NFTElements = len(vss)+len(rss), len(addrs), 2*len(addrs)

	var wg sync.WaitGroup
	var ipvsErr, addrErr, nftErr error
	start := time.Now()
	wg.Add(3)
	go func() {
		defer wg.Done()
		t := time.Now()
		ipvsErr = firstError(k.WriteBatch(vss))
		if ipvsErr == nil {
			ipvsErr = firstError(k.WriteBatch(rss))
		}
		f.IPVSSeconds = time.Since(t).Seconds()
	}()
	go func() {
		defer wg.Done()
		t := time.Now()
		// nftvs's own trains of RTM_NEWADDR (after a dump of the empty
		// link): one ACK per sendmsg, as fast as the kernel's walk of
		// the link's list allows.
		_, _, addrErr = a.SyncAddresses(ipvs.DummyName, addrs)
		f.AddressSeconds = time.Since(t).Seconds()
	}()
	go func() {
		defer wg.Done()
		t := time.Now()
		nftErr = addElements(nft, addrs)
		f.NFTSeconds = time.Since(t).Seconds()
	}()
	wg.Wait()
	f.Seconds = time.Since(start).Seconds()
	return errors.Join(ipvsErr, addrErr, nftErr)
}

// loopbackUp sets lo up in ns.
func loopbackUp(ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// addElements makes a table with the two sets nftvs fills for a
// ClusterIP Service (nft/: cluster-ips-v4, ClusterIP . protocol . port,
// and ipvs-addresses-v4, the addresses on kube-ipvs0) and adds an element
// per address to each, in one transaction.
func addElements(c *nftables.Conn, addrs []netip.Addr) error {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "floor"})
	fronts := &nftables.Set{Table: t, Name: "cluster-ips-v4", Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
	onLink := &nftables.Set{Table: t, Name: "ipvs-addresses-v4", KeyType: nftables.TypeIPAddr}
	frontEls := make([]nftables.SetElement, 0, len(addrs))
	linkEls := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		ip := a.As4()
		key := append(append(ip[:], unix.IPPROTO_TCP, 0, 0, 0), byte(ServicePort>>8), byte(ServicePort&0xff), 0, 0)
		frontEls = append(frontEls, nftables.SetElement{Key: key})
		linkEls = append(linkEls, nftables.SetElement{Key: ip[:]})
	}
	if err := c.AddSet(fronts, frontEls); err != nil {
		return err
	}
	if err := c.AddSet(onLink, linkEls); err != nil {
		return err
	}
	return c.Flush()
}
