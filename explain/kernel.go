package explain

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
)

// NodeKernel reads this node's kernel: IPVS over its own netlink socket,
// kube-ipvs0 over rtnetlink, the nftables table, conntrack, and the
// health check node ports over HTTP on the node's addresses.
type NodeKernel struct {
	ipvs  *ipvs.Kernel
	addrs *ipvs.NetlinkAddresses
	ct    *conntrack.Cleaner
	// Table is nftvs's nftables table (nft.DefaultTableName when "").
	Table string
	// HealthAddresses are tried in turn for a health check node port
	// (default: 127.0.0.1, then kube-ipvs0-less local addresses).
	HealthAddresses []netip.Addr
}

var _ Kernel = (*NodeKernel)(nil)

// NewNodeKernel opens the kernel handles (it does not load ip_vs: a node
// running nftvs has it).
func NewNodeKernel() (*NodeKernel, error) {
	k, err := ipvs.NewKernel("")
	if err != nil {
		return nil, err
	}
	a, err := ipvs.NewNetlinkAddresses("")
	if err != nil {
		k.Close()
		return nil, err
	}
	ct, err := conntrack.New()
	if err != nil {
		k.Close()
		a.Close()
		return nil, err
	}
	return &NodeKernel{ipvs: k, addrs: a, ct: ct}, nil
}

// Close closes the handles.
func (n *NodeKernel) Close() {
	n.ipvs.Close()
	n.addrs.Close()
}

func (n *NodeKernel) VirtualServers() ([]ipvs.VirtualServer, error) {
	return n.ipvs.GetVirtualServers()
}

func (n *NodeKernel) RealServers(k ipvs.VSKey) ([]ipvs.RealServer, map[netip.AddrPort]ipvs.Connections, error) {
	rss, err := n.ipvs.GetRealServers(k)
	if err != nil {
		return nil, nil, err
	}
	conns, err := n.ipvs.GetConnections(k)
	return rss, conns, err
}

func (n *NodeKernel) DummyAddresses() ([]netip.Addr, error) {
	return n.addrs.ListAddresses(ipvs.DummyName)
}

func (n *NodeKernel) Elements(want []nft.Element) ([]nft.ElementState, error) {
	return nft.ReadElements(n.Table, want)
}

func (n *NodeKernel) Conntrack(frontends []netip.AddrPort) ([]conntrack.Flow, error) {
	return n.ct.List(frontends)
}

// HealthCheck asks the health check node port what a load balancer hears:
// "200 OK {...localEndpoints: 1...}" or "503 ...".
func (n *NodeKernel) HealthCheck(port int) (string, error) {
	addrs := n.HealthAddresses
	if len(addrs) == 0 {
		addrs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	c := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for _, a := range addrs {
		resp, err := c.Get("http://" + netip.AddrPortFrom(a, uint16(port)).String() + "/")
		if err != nil {
			lastErr = err
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		return fmt.Sprintf("%s from %s: %s", resp.Status, a, strings.TrimSpace(string(b))), nil
	}
	return "", lastErr
}
