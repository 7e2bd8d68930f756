//go:build vmtest

package proxier_test

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

// TestRestartWritesNothing: nftvs restarted on a node it programmed finds
// IPVS, kube-ipvs0 and its nft table as it left them, and its first sync
// writes no IPVS object, no address and no nft element: it reads IPVS in
// a few reads (not one per virtual server) and diffs the nft table
// against a dump instead of rebuilding it. Services of every kind the
// table has sets for are programmed first (ClusterIPs of both families,
// node ports, ETP=Local load balancers with source ranges, external IPs
// with session affinity, UDP), so each set and each kind of virtual
// server is read back.
func TestRestartWritesNothing(t *testing.T) {
	requireVM(t)
	tb := newTestbed(t)
	const n = 30
	var mu sync.Mutex
	var results []proxier.SyncResult
	record := func(res proxier.SyncResult, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			results = append(results, res)
		}
	}
	c := startClusterOpts(t, tb, clusterOptions{onSync: record})
	for i := range n {
		ip4, ip6 := fmt.Sprintf("10.96.3.%d", i), fmt.Sprintf("fd00:96::3:%d", i)
		var tweaks []func(*v1.Service)
		switch i % 5 {
		case 1:
			tweaks = append(tweaks, nodePort(int32(30100+i)))
		case 2:
			tweaks = append(tweaks, loadBalancer(int32(30100+i), fmt.Sprintf("192.0.2.%d", i)), etpLocal(int32(31100+i)),
				sourceRanges("203.0.113.0/24", "198.18.0.0/15"))
		case 3:
			tweaks = append(tweaks, externalIPs(fmt.Sprintf("198.51.100.%d", i)), clientIPAffinity(600))
		case 4:
			tweaks = append(tweaks, withDNS)
		}
		tweaks = append(tweaks, dualStack(ip6))
		svc := service(fmt.Sprintf("r%d", i), ip4, tweaks...)
		local := &pod{node: nodeName, v4: netip.MustParseAddr(fmt.Sprintf("10.244.1.%d", 100+i%100)), v6: netip.MustParseAddr(fmt.Sprintf("fd00:244:1::%x", 0x100+i))}
		remote := &pod{node: remoteNode, v4: netip.MustParseAddr(fmt.Sprintf("10.244.2.%d", 100+i%100)), v6: netip.MustParseAddr(fmt.Sprintf("fd00:244:2::%x", 0x100+i))}
		c.apply(t, svc, slice4(svc, readyEP(local), readyEP(remote)), slice(svc, discovery.AddressTypeIPv6, readyEP(local), readyEP(remote)))
	}
	last := tcpKey(fmt.Sprintf("10.96.3.%d", n-1), 80)
	c.eventually(t, "every Service programmed", func() error {
		if got, _, ok, err := c.realServers(last); err != nil || !ok || len(got) != 2 {
			return fmt.Errorf("%v: %v (%v, %v)", last, got, ok, err)
		}
		return nil
	})
	c.settle()
	before := kernelState(t, c)
	c.stop()

	mu.Lock()
	results = nil
	mu.Unlock()
	c2 := startClusterOpts(t, tb, clusterOptions{onSync: record, client: c.client})
	c2.settle()
	mu.Lock()
	first := results[0]
	mu.Unlock()
	if !first.Full || !first.IPVSResync || first.ServicesReplanned < n {
		t.Fatalf("the first sync after the restart: full %v, IPVS resync %v, %d Services; want a full sync of every Service with IPVS read",
			first.Full, first.IPVSResync, first.ServicesReplanned)
	}
	if w := first.IPVS.Writes; w.Total() != 0 {
		t.Errorf("restart wrote IPVS: %s", first.IPVS)
	}
	if first.AddressesAdded+first.AddressesRemoved != 0 {
		t.Errorf("restart wrote kube-ipvs0 addresses: +%d -%d", first.AddressesAdded, first.AddressesRemoved)
	}
	for i, r := range first.NFT {
		if r.Added+r.Deleted != 0 || r.Rebuilt {
			t.Errorf("restart nft sync %d: %+v, want no element written", i, r)
		}
	}
	if len(first.NFT) == 0 || !first.NFT[0].Adopted {
		t.Errorf("restart did not adopt the nft table: %+v", first.NFT)
	}
	if after := kernelState(t, c2); after != before {
		t.Errorf("the kernel changed across the restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// kernelState is IPVS, kube-ipvs0's addresses and the nft table, as
// text: what a restart must leave as it found it.
func kernelState(t *testing.T, c *cluster) string {
	t.Helper()
	vss, err := c.ipvs.GetVirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	var services []ipvs.Service
	for _, v := range vss {
		rss, err := c.ipvs.GetRealServers(v.VSKey)
		if err != nil {
			t.Fatal(err)
		}
		services = append(services, ipvs.Service{VirtualServer: v, RealServers: rss})
	}
	table := counterRE.ReplaceAllString(command("nft", "list", "table", "inet", "nftvs"), "counter")
	return strings.Join([]string{ipvs.Format(services), command("ip", "-br", "addr", "show", "dev", ipvs.DummyName), table}, "\n")
}

var counterRE = regexp.MustCompile(`counter packets \d+ bytes \d+`)
