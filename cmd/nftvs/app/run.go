package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/healthcheck"
	"github.com/nftvs/nftvs/internal/takeover"
	"github.com/nftvs/nftvs/internal/version"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/proxier"
)

var errPodCIDRsChanged = errors.New("the node's podCIDRs changed: exiting to be restarted with them")

// run is the proxy: it programs the kernel until ctx ends (SIGTERM), then
// stops, leaving IPVS, kube-ipvs0 and the nftables table in place so that
// connections survive the restart. Its steps are kube-proxy's: the node,
// the kernel, the servers, the watch, the sync loop; except that the
// health server comes first, so that a start-up on a loaded node (the
// Node read, a 10k-Service list and first sync can take minutes there)
// answers /livez from its first second.
func run(parent context.Context, cfg *config.Config) error {
	logStartup(cfg)
	cfg.FeatureGate.AddMetrics() // kubernetes_feature_enabled, as kube-proxy
	applyOOMScoreAdj(cfg.KubeProxy.OOMScoreAdj)
	name, err := nodeName(cfg.KubeProxy.HostnameOverride)
	if err != nil {
		return err
	}
	client, apiServer, err := newClient(*cfg.KubeProxy, cfg.Master)
	if err != nil {
		return err
	}
	freeAPIServerAddresses(apiServer)
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	ev := newNodeEvents(client, name)
	go ev.recorder.Run(ctx)

	health := healthcheck.NewHealthServer(2*cfg.KubeProxy.IPVS.SyncPeriod.Duration, clock.RealClock{})
	var servers sync.WaitGroup
	defer func() {
		cancel(nil) // whatever ended the run, the servers stop
		servers.Wait()
	}()
	if a := cfg.KubeProxy.HealthzBindAddress; a != "" {
		serveHTTP(ctx, &servers, "healthz", a, health.Handler(), hardFail(cfg, cancel, ev, "FailedToStartProxierHealthcheck"))
	}

	resync := cfg.KubeProxy.ConfigSyncPeriod.Duration
	// Both CIDR modes program the node's podCIDRs (NodeCIDR: all local
	// traffic; ClusterCIDR: the externalTrafficPolicy Local short-cut), so
	// both restart when they change; only NodeCIDR waits for them.
	var onPodCIDRsChange func()
	if mode := cfg.KubeProxy.DetectLocalMode; mode == "NodeCIDR" || mode == "ClusterCIDR" {
		onPodCIDRsChange = func() { cancel(errPodCIDRsChanged) }
	}
	nw, err := watchNode(ctx, client, name, resync, cfg.KubeProxy.DetectLocalMode == "NodeCIDR", onPodCIDRsChange)
	if ctx.Err() != nil {
		return stopped(ctx) // stopped while waiting for the node
	}
	if err != nil {
		return err
	}
	health.SetNode(nw.Node)
	node, err := cfg.Resolve(config.NodeFacts{Name: name, Node: nw.Node(), IPv6: ipv6Supported(), APIServer: apiServer})
	if err != nil {
		return err
	}
	m := metrics.New(node.Families)
	health.SetMetrics(m)
	p, closeKernel, err := newProxier(ctx, cfg, node, m, ev.serviceWarning)
	if err != nil {
		return err
	}
	defer closeKernel()
	if w := checkIPv6Forwarding(ipvs.ProcSys, node.UsesIPv6); w != "" {
		ev.event(v1.EventTypeWarning, "IPv6ForwardingDisabled", w)
	}
	serveExplain(ctx, cfg.ExplainSocket, p)
	if closeStats, err := registerServiceMetrics(cfg, m, p); err != nil {
		return err
	} else if closeStats != nil {
		defer closeStats()
	}

	serviceHealth := healthcheck.NewServiceHealthServers(name, ev.recorder, nodePortSelection{node.NodePorts}.healthCheckAddresses(), node.Families, func() bool { return health.Health().Healthy })
	defer serviceHealth.Close()
	var metricsServer sync.WaitGroup
	defer func() {
		cancel(nil)
		metricsServer.Wait()
	}()
	if a := cfg.KubeProxy.MetricsBindAddress; a != "" {
		serveHTTP(ctx, &metricsServer, "metrics", a, metricsHandler(m, cfg), hardFail(cfg, cancel, ev, "FailedToStartMetricServer"))
	}
	ev.event(v1.EventTypeNormal, "Starting", "")

	// As kube-proxy's sync loop: healthy while starting; changes queue
	// syncs for /healthz once the informers have synced (changeTracker).
	changes := newChangeTracker(m, health, node.Families, clock.RealClock{})
	changes.start()
	// The kernel is read back while the informers list, not after.
	p.ReadAhead()
	err = p.Watch(ctx, client, proxier.WatchOptions{Resync: resync, Node: nw.informer, OnChange: changes.observe})
	if err != nil {
		if ctx.Err() != nil {
			return stopped(ctx)
		}
		return fmt.Errorf("watch the API server: %w", err)
	}
	changes.initialize()
	takeOverKubeProxy(cfg.TakeoverKubeProxy, takeover.Node(), ev.event)
	gc := newGCTuner()
	p.Run(ctx, func(res proxier.SyncResult, err error) {
		observeSync(res, err, p, node.Families, m, health, changes, serviceHealth)
		gc.synced()
	})
	return stopped(ctx)
}

// logStartup writes the first lines of a run: kube-proxy's, which
// runbooks grep for ("Version info", "Golang settings", "Using ipvs
// Proxier"), with nftvs's version, and nftvs's own ("Starting nftvs"),
// which says which program this is.
func logStartup(cfg *config.Config) {
	klog.InfoS("Starting nftvs", "version", version.Get(), "companion", cfg.Companion)
	klog.InfoS("Version info", "version", version.Get(), "kubeProxyVersion", version.Kube.String())
	klog.InfoS("Golang settings", "GOGC", os.Getenv("GOGC"), "GOMAXPROCS", os.Getenv("GOMAXPROCS"), "GOTRACEBACK", os.Getenv("GOTRACEBACK"))
	klog.InfoS("Using ipvs Proxier", "companion", cfg.Companion)
}

// observeSync reports one sync: metrics, the changes it took, health,
// and the per-Service health check servers.
func observeSync(res proxier.SyncResult, err error, p *proxier.Proxier, families []v1.IPFamily, m *metrics.Metrics, health *healthcheck.HealthServer, changes *changeTracker, serviceHealth *healthcheck.ServiceHealthServers) {
	now := changes.clock.Now()
	changes.synced(now.Add(-res.Duration))
	if err == nil {
		for _, f := range families {
			health.Updated(f)
		}
	}
	m.ObserveSync(res, err, now)
	m.ObserveNoLocalEndpoints(p.NoLocalEndpoints())
	serviceHealth.Sync(p.HealthChecks())
	klog.V(2).InfoS("Synced", "full", res.Full, "servicesReplanned", res.ServicesReplanned, "ipvs", res.IPVS.String(),
		"realServersRemoved", len(res.Removed), "staleFlowsQueued", len(res.Stale), "duration", res.Duration, "err", err)
}

// stopped is the outcome of a run whose context ended: a signal is a
// clean stop, anything else (a server that could not bind with
// --bind-address-hard-fail, podCIDRs that changed) an error.
func stopped(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	klog.InfoS("Stopping nftvs; IPVS, kube-ipvs0 and the nftables table are left in place")
	return nil
}

// applyOOMScoreAdj writes /proc/self/oom_score_adj; failure is logged
// only, as in kube-proxy (an unprivileged container cannot lower it).
func applyOOMScoreAdj(v *int32) {
	if v == nil {
		return
	}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(*v))), 0o644); err != nil {
		klog.V(2).InfoS("Failed to apply OOMScore", "err", err)
	}
}
