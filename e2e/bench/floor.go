package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nftvs/nftvs/ipvs"
)

// Floor is the kernel floor of a first sync (issue 27): the same kernel
// objects nftvs's first sync makes for the workload — a virtual server
// per ClusterIP with its real servers, the ClusterIPs on kube-ipvs0, one
// nft element per ClusterIP and port — written as fast as netlink takes
// them, in a network namespace of their own in the same VM, with no
// API, no planning and no reading back: IPVS in batches
// (ipvs.Kernel.WriteBatch), the addresses as trains of RTM_NEWADDR per
// sendmsg with an ACK on the last only, the nft elements as one
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
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.LinkAdd(&vnl.Dummy{LinkAttrs: vnl.LinkAttrs{Name: ipvs.DummyName}}); err != nil {
		return fmt.Errorf("add %s: %w", ipvs.DummyName, err)
	}
	link, err := h.LinkByName(ipvs.DummyName)
	if err != nil {
		return err
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
	f.IPVSWrites, f.AddressWrites, f.NFTElements = len(vss)+len(rss), len(addrs), len(addrs)

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
		addrErr = addAddresses(ns, link.Attrs().Index, addrs)
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

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// addAddresses adds each address as a /32 to the link, 256 RTM_NEWADDR
// per sendmsg, only the last of each asking for an ACK (the kernel runs
// the requests of one sendmsg in order and answers failures on their
// own).
func addAddresses(ns netns.NsHandle, index int, addrs []netip.Addr) error {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = unix.SetsockoptInt(s.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	seq := uint32(0)
	rb := make([]byte, 64<<10)
	for start := 0; start < len(addrs); start += ipvs.BatchWrites {
		chunk := addrs[start:min(start+ipvs.BatchWrites, len(addrs))]
		var buf []byte
		for i, a := range chunk {
			seq++
			flags := unix.NLM_F_CREATE | unix.NLM_F_EXCL
			if i == len(chunk)-1 {
				flags |= unix.NLM_F_ACK
			}
			req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, flags)
			req.Seq = seq
			msg := nl.NewIfAddrmsg(unix.AF_INET)
			msg.Prefixlen, msg.Index = 32, uint32(index)
			req.AddData(msg)
			ip := a.AsSlice()
			req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, ip))
			req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, ip))
			buf = append(buf, req.Serialize()...)
		}
		if err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return err
		}
		for done := false; !done; {
			n, _, err := unix.Recvfrom(s.GetFd(), rb, 0)
			if err != nil {
				return err
			}
			msgs, err := syscall.ParseNetlinkMessage(rb[:n])
			if err != nil {
				return err
			}
			for _, m := range msgs {
				if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
					continue
				}
				if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
					return fmt.Errorf("add address (request %d): %w", m.Header.Seq, syscall.Errno(-code))
				}
				done = done || m.Header.Seq == seq
			}
		}
	}
	return nil
}

// addElements makes a table with a set of ClusterIP . protocol . port
// and adds an element per address, in one transaction, as nftvs's table
// holds its Services' (nft/).
func addElements(c *nftables.Conn, addrs []netip.Addr) error {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "floor"})
	set := &nftables.Set{Table: t, Name: "service-ips-v4", Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
	els := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		ip := a.As4()
		key := append(append(ip[:], unix.IPPROTO_TCP, 0, 0, 0), byte(ServicePort>>8), byte(ServicePort&0xff), 0, 0)
		els = append(els, nftables.SetElement{Key: key})
	}
	if err := c.AddSet(set, els); err != nil {
		return err
	}
	return c.Flush()
}
