//go:build vmtest

package proxier_test

// The cluster side: a fake clientset holding this node's Node, the
// Services and EndpointSlices the tests create through the API, and the
// real proxier watching it and programming the root namespace, as
// nftvs runs (minus the API server).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/vishvananda/netlink"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/internal/k8stest"
	"github.com/nftvs/nftvs/internal/kubeclient/clientset"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

const (
	nodeName   = "node-a"
	remoteNode = "node-b"
	namespace  = "e2e"
	// waitTimeout bounds every wait for the proxier to program a change.
	waitTimeout = 30 * time.Second
)

// detect-local-mode ClusterCIDR, as kube-proxy's default: the cluster
// CIDR holds every node's pods (spared masquerade to ClusterIPs), the
// Node's podCIDRs this node's (internal to externalTrafficPolicy Local).
var (
	clusterCIDR4 = netip.MustParsePrefix("10.244.0.0/16")
	clusterCIDR6 = netip.MustParsePrefix("fd00:244::/32")
	podCIDR4     = netip.MustParsePrefix("10.244.1.0/24")
	podCIDR6     = netip.MustParsePrefix("fd00:244:1::/64")
)

// cluster is the API (a fake clientset, or a real API server) and the
// proxier watching it (p is nil when a separate nftvs process does).
type cluster struct {
	client kubernetes.Interface
	p      *proxier.Proxier
	// ipvs is a second IPVS handle, only for reading what the proxier did.
	ipvs  *ipvs.Kernel
	syncs atomic.Int64

	mu       sync.Mutex
	syncErrs []string
	// stop stops the proxier (as nftvs exiting), leaving the kernel as
	// it is; the test's cleanup calls it too.
	stop func()
}

// startCluster programs the node the way nftvs does at start (sysctls,
// scheduler probe, kernel adapters), then runs proxier.Watch and
// proxier.Run against a fake clientset holding this node's Node.
func startCluster(t *testing.T, tb *testbed) *cluster {
	t.Helper()
	ct, err := conntrack.New()
	if err != nil {
		t.Fatal(err)
	}
	return startClusterWith(t, tb, ct, nil)
}

// startClusterWith is startCluster with the conntrack cleaner chosen (nil:
// off) and every sync result also handed to onSync (when not nil).
func startClusterWith(t *testing.T, tb *testbed, ct conntrack.Interface, onSync func(proxier.SyncResult, error)) *cluster {
	t.Helper()
	return startClusterOpts(t, tb, clusterOptions{conntrack: ct, onSync: onSync})
}

// clusterOptions are what a suite may change in the cluster nftvs would
// run.
type clusterOptions struct {
	conntrack conntrack.Interface // nil: the cleaner is off
	onSync    func(proxier.SyncResult, error)
	// exclude is --ipvs-exclude-cidrs; syncPeriod --ipvs-sync-period
	// (default 30 s).
	exclude    []netip.Prefix
	syncPeriod time.Duration
	// warn sees the Warnings the proxier reports (Events in nftvs).
	warn func(svc string, reason, message string)
	// drainCheck is how often draining real servers' connections are
	// counted (default: the proxier's, 10 s).
	drainCheck time.Duration
	// schedulers are those the kernel offers, as nftvs probes them (nil:
	// planning assumes every in-tree one).
	schedulers []string
	// maxVirtualServers is --max-virtual-servers-per-service (0: the
	// default); ipvsResync is how often IPVS is dumped and repaired (0:
	// the proxier's 5 minutes).
	maxVirtualServers int
	ipvsResync        time.Duration
	// client, when set, is the API of an earlier cluster: the proxier
	// restarts against the same objects.
	client kubernetes.Interface
}

func startClusterOpts(t *testing.T, tb *testbed, o clusterOptions) *cluster {
	t.Helper()
	ct, onSync := o.conntrack, o.onSync
	if o.syncPeriod == 0 {
		o.syncPeriod = 30 * time.Second
	}
	k, err := ipvs.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	if err := ipvs.ProbeScheduler(k, "rr"); err != nil {
		t.Fatal(err)
	}
	// vs/conntrack=1 is what makes nft masquerade see IPVS flows.
	// IPv6 forwarding is the node's own set-up (nftvs leaves it alone).
	err = tb.node.do(func() error {
		return errors.Join(ipvs.EnsureSysctls(ipvs.ProcSys, ipvs.SysctlOptions{}), ipvs.ProcSys.Set(ipvs.SysctlIPv6Forward, 1))
	})
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := ipvs.NewNetlinkAddresses("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(addrs.Close)
	table, err := nft.New(nft.Config{
		LocalTraffic: nft.LocalTraffic{PodCIDRs: []netip.Prefix{clusterCIDR4, clusterCIDR6}, NodePodCIDRs: []netip.Prefix{podCIDR4, podCIDR6}},
		ExcludeCIDRs: o.exclude,
		DropInvalid:  true,
	})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := ipvs.NewKernel("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reader.Close)

	cfg := proxier.Config{
		PlanConfig: proxier.PlanConfig{
			Node:      proxier.Node{Name: nodeName},
			Scheduler: "rr",
			IPv4:      true, IPv6: true,
			ExcludeCIDRs:      o.exclude,
			MaxVirtualServers: o.maxVirtualServers,
			Schedulers:        o.schedulers,
		},
		MinSyncPeriod:    250 * time.Millisecond,
		SyncPeriod:       o.syncPeriod,
		DrainCheckPeriod: o.drainCheck, // drains last until idle: --ipvs-graceful-termination-period 0
		IPVSResyncPeriod: o.ipvsResync,
		HostAddresses:    hostAddresses,
		// Every address of the node but kube-ipvs0's, loopback and
		// link-local ones, as nftvs chooses them without
		// --nodeport-addresses.
		NodePortAddresses: config.LocalAddresses,
		LocalAddresses:    config.LocalAddresses,
	}
	if o.warn != nil {
		cfg.Warn = func(n types.NamespacedName, reason, msg string) { o.warn(n.String(), reason, msg) }
	}
	kern := proxier.Dataplane{IPVS: ipvs.NewReconciler(k, o.exclude).OwnFWMarks(proxier.OwnsFWMark(0)), Addresses: addrs, NFT: table}
	if ct != nil { // a nil interface, not a typed nil
		kern.Conntrack = ct
	}
	c := &cluster{ipvs: reader}
	c.p = proxier.New(cfg, kern)
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: tb.ext0IP4.String()},
			{Type: v1.NodeInternalIP, Address: tb.ext0IP6.String()},
			{Type: v1.NodeHostName, Address: nodeName},
		}},
	}
	c.client = o.client
	if c.client == nil {
		c.client = fake.NewClientset(node)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	watched := make(chan error, 1)
	c.p.ReadAhead() // as the app does: the kernel read back while the informers list
	go func() {
		watched <- c.p.Watch(ctx, clientset.New(c.client), proxier.WatchOptions{Node: proxier.NewNodeInformer(clientset.New(c.client), nodeName, 0)})
	}()
	select {
	case err := <-watched:
		if err != nil {
			cancel()
			t.Fatalf("proxier.Watch: %v", err)
		}
	case <-time.After(waitTimeout):
		cancel()
		t.Fatalf("proxier.Watch: informer caches not synced after %v", waitTimeout)
	}
	// As nftvs: someone else's change to the table asks for a sync, and
	// so does an address that comes or goes.
	if err := table.WatchDrift(ctx, c.p.SyncSoon); err != nil {
		cancel()
		t.Fatalf("watch the nftables ruleset: %v", err)
	}
	if err := ipvs.WatchAddresses(ctx, ipvs.DummyName, c.p.OnLocalAddressChange); err != nil {
		cancel()
		t.Fatalf("watch the node's addresses: %v", err)
	}
	go func() {
		defer close(done)
		c.p.Run(ctx, func(res proxier.SyncResult, err error) {
			if err != nil {
				c.mu.Lock()
				c.syncErrs = append(c.syncErrs, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
				c.mu.Unlock()
			}
			if onSync != nil {
				onSync(res, err)
			}
			c.syncs.Add(1)
		})
	}()
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(c.stop)
	// The first (full) sync: the table exists and kube-ipvs0 is there.
	c.eventually(t, "the first sync", func() error {
		if c.syncs.Load() == 0 {
			return fmt.Errorf("no sync yet")
		}
		return nil
	})
	return c
}

// hostAddresses lists the node's addresses as nftvs does: every link's
// but kube-ipvs0's. It runs in the proxier's goroutine, in the root
// namespace.
func hostAddresses() ([]netip.Addr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	as, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && names[a.LinkIndex] != ipvs.DummyName {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// eventually polls check every 100 ms until it succeeds or waitTimeout
// passes, and fails the test with check's last error then.
func (c *cluster) eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: %v%s", waitTimeout, what, err, c.syncErrors())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *cluster) syncErrors() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.syncErrs) == 0 {
		return ""
	}
	return "\nproxier sync errors:\n  " + strings.Join(c.syncErrs, "\n  ")
}

// settle waits for the sync after the one that made the kernel look
// right to have finished (or 1 s): the nftables half of a sync is
// committed in two steps around IPVS.
func (c *cluster) settle() {
	if c.p == nil { // another process syncs: give it a moment
		time.Sleep(500 * time.Millisecond)
		return
	}
	n := c.syncs.Load()
	deadline := time.Now().Add(time.Second)
	for c.syncs.Load() == n {
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rs is the real servers of a virtual server: address:port → weight.
type rs map[netip.AddrPort]int

func (r rs) String() string {
	keys := slices.SortedFunc(maps.Keys(r), netip.AddrPort.Compare)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s w%d", k, r[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// realServers reads one virtual server from the kernel; ok is false when
// it does not exist.
func (c *cluster) realServers(key ipvs.VSKey) (got rs, vs ipvs.VirtualServer, ok bool, err error) {
	vss, err := c.ipvs.GetVirtualServers()
	if err != nil {
		return nil, vs, false, err
	}
	for _, v := range vss {
		if v.Key() == key.Key() {
			vs, ok = v, true
		}
	}
	if !ok {
		return nil, vs, false, nil
	}
	rss, err := c.ipvs.GetRealServers(key)
	if err != nil {
		return nil, vs, false, err
	}
	got = rs{}
	for _, r := range rss {
		got[r.AddrPort()] = r.Weight
	}
	return got, vs, true, nil
}

// waitIPVS waits until the kernel has the virtual server key with exactly
// the real servers want.
func (c *cluster) waitIPVS(t *testing.T, key ipvs.VSKey, want rs) ipvs.VirtualServer {
	t.Helper()
	var vs ipvs.VirtualServer
	c.eventually(t, "IPVS "+key.String()+" with real servers "+want.String(), func() error {
		got, v, ok, err := c.realServers(key)
		switch {
		case err != nil:
			return err
		case !ok:
			return fmt.Errorf("no such virtual server")
		case !maps.Equal(got, want):
			return fmt.Errorf("real servers %s", got)
		}
		vs = v
		return nil
	})
	c.settle()
	return vs
}

// apply creates or updates svc and its EndpointSlices through the API.
// An update carries the stored object's resourceVersion, as a real API
// server requires.
func (c *cluster) apply(t *testing.T, svc *v1.Service, slices ...*discovery.EndpointSlice) {
	t.Helper()
	ctx := context.Background()
	svc = svc.DeepCopy()
	old, err := c.client.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = c.client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	case err == nil:
		svc.ResourceVersion = old.ResourceVersion
		_, err = c.client.CoreV1().Services(svc.Namespace).Update(ctx, svc, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatalf("service %s: %v", svc.Name, err)
	}
	for _, s := range slices {
		s = s.DeepCopy()
		old, err := c.client.DiscoveryV1().EndpointSlices(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = c.client.DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
		case err == nil:
			s.ResourceVersion = old.ResourceVersion
			_, err = c.client.DiscoveryV1().EndpointSlices(s.Namespace).Update(ctx, s, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatalf("endpointslice %s: %v", s.Name, err)
		}
	}
}

// nodeSources are the addresses the node may masquerade to: ips, and
// the VM's eth0 address when the VM has one (NFTVS_VM_APISERVER=1). A
// pod's veth has no IPv4 address, so the kernel picks the first suitable
// address of the node, in link order, and eth0 comes first.
func nodeSources(t *testing.T, ips ...netip.Addr) []netip.Addr {
	t.Helper()
	out := slices.Clone(ips)
	if l, err := netlink.LinkByName("eth0"); err == nil {
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			t.Fatalf("addresses of eth0: %v", err)
		}
		for _, a := range as {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// setNodeIPs replaces the InternalIP addresses of this node's Node
// object through the API.
func (c *cluster) setNodeIPs(t *testing.T, ips ...netip.Addr) {
	t.Helper()
	ctx := context.Background()
	n, err := c.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeHostName, Address: nodeName}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip.String()})
	}
	if _, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update node %s: %v", nodeName, err)
	}
}

func (c *cluster) deleteSlice(t *testing.T, name string) {
	t.Helper()
	if err := c.client.DiscoveryV1().EndpointSlices(namespace).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete endpointslice %s: %v", name, err)
	}
}

func (c *cluster) deleteService(t *testing.T, name string) {
	t.Helper()
	if err := c.client.CoreV1().Services(namespace).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete service %s: %v", name, err)
	}
}

// waitGone waits until none of the virtual servers keys exists.
func (c *cluster) waitGone(t *testing.T, keys ...ipvs.VSKey) {
	t.Helper()
	for _, k := range keys {
		c.eventually(t, "IPVS "+k.String()+" to be deleted", func() error {
			got, _, ok, err := c.realServers(k)
			switch {
			case err != nil:
				return err
			case ok:
				return fmt.Errorf("still there, real servers %s", got)
			}
			return nil
		})
	}
	c.settle()
}

// service is a ClusterIP Service in the test namespace with port "http"
// 80/TCP (target 8080) and the given tweaks.
// The Service tweaks shared with the proxier's unit tests.
var (
	nodePort         = k8stest.NodePort
	loadBalancer     = k8stest.LoadBalancer
	etpLocal         = k8stest.ETPLocal
	itpLocal         = k8stest.ITPLocal
	externalIPs      = k8stest.ExternalIPs
	sourceRanges     = k8stest.SourceRanges
	clientIPAffinity = k8stest.ClientIPAffinity
)

func service(name, clusterIP string, tweaks ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
			Ports:      []v1.ServicePort{httpPort()},
		},
	}
	for _, tw := range tweaks {
		tw(svc)
	}
	return svc
}

func httpPort() v1.ServicePort {
	return v1.ServicePort{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}
}

func withDNS(s *v1.Service) {
	s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP})
}

func dualStack(clusterIP6 string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, clusterIP6)
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		p := v1.IPFamilyPolicyRequireDualStack
		s.Spec.IPFamilyPolicy = &p
	}
}

// endpoint is one pod in an EndpointSlice, with its conditions.
type endpoint struct {
	pod                         *pod
	ready, serving, terminating bool
}

func readyEP(p *pod) endpoint { return endpoint{pod: p, ready: true, serving: true} }

func notReadyEP(p *pod) endpoint { return endpoint{pod: p} }

func servingTerminatingEP(p *pod) endpoint {
	return endpoint{pod: p, serving: true, terminating: true}
}

// slice is the EndpointSlice of svc for one family, with ports "http"
// 8080/TCP and "dns" 8053/UDP (every pod serves both).
func slice(svc *v1.Service, family discovery.AddressType, eps ...endpoint) *discovery.EndpointSlice {
	http, dns := "http", "dns"
	tcp, udp := v1.ProtocolTCP, v1.ProtocolUDP
	tp, up := int32(podTCPPort), int32(podUDPPort)
	suffix := "-v4"
	if family == discovery.AddressTypeIPv6 {
		suffix = "-v6"
	}
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: svc.Name + suffix,
			Labels: map[string]string{discovery.LabelServiceName: svc.Name},
		},
		AddressType: family,
		Ports: []discovery.EndpointPort{
			{Name: &http, Port: &tp, Protocol: &tcp},
			{Name: &dns, Port: &up, Protocol: &udp},
		},
	}
	for _, e := range eps {
		addr := e.pod.v4
		if family == discovery.AddressTypeIPv6 {
			addr = e.pod.v6
		}
		node := e.pod.node
		ready, serving, terminating := e.ready, e.serving, e.terminating
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses: []string{addr.String()},
			NodeName:  &node,
			Conditions: discovery.EndpointConditions{
				Ready: &ready, Serving: &serving, Terminating: &terminating,
			},
		})
	}
	return s
}

func slice4(svc *v1.Service, eps ...endpoint) *discovery.EndpointSlice {
	return slice(svc, discovery.AddressTypeIPv4, eps...)
}

// echoSlice4 is slice4 with one port, "http" on port/TCP: the pods'
// echoServer.
func echoSlice4(svc *v1.Service, port int32, eps ...endpoint) *discovery.EndpointSlice {
	s := slice4(svc, eps...)
	s.Ports = s.Ports[:1]
	s.Ports[0].Port = &port
	return s
}

// tcpKey and udpKey name an address:port virtual server.
func tcpKey(addr string, port uint16) ipvs.VSKey {
	return ipvs.VSKey{Address: netip.MustParseAddr(addr), Protocol: ipvs.TCP, Port: port}
}

func udpKey(addr string, port uint16) ipvs.VSKey {
	return ipvs.VSKey{Address: netip.MustParseAddr(addr), Protocol: ipvs.UDP, Port: port}
}

// fwmarkKey is the fwmark virtual server of an ETP=Local TCP node port:
// node port << 16 | protocol (TCP 1) << 12 | the masquerade bit 0x4000,
// as docs/architecture.md describes.
func fwmarkKey(nodePort uint16, ipv6 bool) ipvs.VSKey {
	return ipvs.VSKey{FWMark: uint32(nodePort)<<16 | 1<<12 | 0x4000, IPv6: ipv6}
}

// weights builds an rs of pods' IPv4 (or IPv6) addresses on port.
func weights(port uint16, ipv6 bool, w int, pods ...*pod) rs {
	out := rs{}
	for _, p := range pods {
		a := p.v4
		if ipv6 {
			a = p.v6
		}
		out[netip.AddrPortFrom(a, port)] = w
	}
	return out
}

func (r rs) with(o rs) rs {
	out := maps.Clone(r)
	maps.Copy(out, o)
	return out
}

// command runs a tool in the node namespace (this process's) and returns
// its output, errors included.
func command(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s%s %s: %v", out, name, strings.Join(args, " "), err)
	}
	return string(out)
}
