package app

import (
	"context"
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

// newProxier sets up the kernel and returns the proxier programming it,
// and what closes the kernel handles. Every failure stops nftvs before it
// serves.
func newProxier(ctx context.Context, cfg *config.Config, node *config.Resolved, m *metrics.Metrics, warn func(types.NamespacedName, string, string)) (*proxier.Proxier, func(), error) {
	kernel, err := setupKernel(cfg)
	if err != nil {
		return nil, nil, err
	}
	table, err := nft.New(node.NFT)
	if err != nil {
		kernel.Close()
		return nil, nil, fmt.Errorf("nftables table: %w", err)
	}
	addrs, err := ipvs.NewNetlinkAddresses("")
	if err != nil {
		kernel.Close()
		return nil, nil, err
	}
	closeKernel := func() {
		addrs.Close()
		kernel.Close()
	}
	rec := ipvs.NewReconciler(kernel, cfg.ExcludeCIDRs).OwnFWMarks(proxier.OwnsFWMark(cfg.MasqueradeMark)).Yielding(yieldCPU)
	k, err := newDataplane(cfg, rec, addrs, table, m, func() (conntrack.Interface, error) {
		return conntrack.New()
	})
	if err != nil {
		closeKernel()
		return nil, nil, err
	}
	p := proxier.New(node.Proxier(config.Runtime{
		Schedulers:    offeredSchedulers(kernel, cfg.KubeProxy.IPVS.Scheduler),
		HostAddresses: hostAddresses,
		Warn:          warn,
	}), k)
	// An address that comes or goes (a VIP failover) is served or let go
	// within a second, not at the next full sync.
	if err := ipvs.WatchAddresses(ctx, ipvs.DummyName, p.OnLocalAddressChange); err != nil {
		klog.ErrorS(err, "Not watching the node's addresses: address changes are noticed by the periodic sync only")
	}
	// Someone else's change to the table (nft flush ruleset) is repaired
	// within a second instead of at the next sync period.
	if err := table.WatchDrift(ctx, p.SyncSoon); err != nil {
		klog.ErrorS(err, "Not watching the nftables ruleset: drift is repaired by the periodic sync only")
	}
	return p, closeKernel, nil
}

// newDataplane assembles the proxier's kernel adapters. The conntrack
// cleaner is there only with --conntrack-cleaner (the default); the
// proxier then hands it, after each sync, the flows of the real servers
// the sync removed (SyncResult.Removed turned into conntrack.Stale, one
// Clean per sync), and its work is counted in m.
func newDataplane(cfg *config.Config, rec *ipvs.Reconciler, addrs ipvs.Addresses, table nft.Interface, m *metrics.Metrics, newCleaner func() (conntrack.Interface, error)) (proxier.Dataplane, error) {
	k := proxier.Dataplane{IPVS: rec, Addresses: addrs, NFT: table}
	if !cfg.ConntrackCleaner {
		klog.InfoS("Conntrack cleaner disabled (--conntrack-cleaner=false): flows to removed endpoints expire on their own")
		return k, nil
	}
	c, err := newCleaner()
	if err != nil {
		return k, fmt.Errorf("conntrack cleaner: %w", err)
	}
	k.Conntrack = metrics.NewInstrumentedConntrack(c, m)
	return k, nil
}

// nodePortSelection chooses node port and health check addresses.
type nodePortSelection struct{ config.NodePortAddresses }

// addresses are the node port addresses among the host's current ones.
func (n nodePortSelection) addresses() ([]netip.Addr, error) {
	all, err := hostAddresses()
	if err != nil {
		return nil, err
	}
	return n.Select(all), nil
}

// healthCheckAddresses are the addresses health check node ports listen
// on: nil (every address) unless --nodeport-addresses narrows them.
func (n nodePortSelection) healthCheckAddresses() func() []netip.Addr {
	if n.MatchAll() {
		return nil
	}
	return func() []netip.Addr {
		addrs, err := n.addresses()
		if err != nil {
			klog.ErrorS(err, "Listing node port addresses for health check ports")
			return nil
		}
		return addrs
	}
}
