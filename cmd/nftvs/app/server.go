package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/tools/events"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/internal/takeover"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

// version is set at build time (-ldflags "-X .../app.version=v1.2.3");
// otherwise the module version is used.
var version = ""

// Version is the nftvs version.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// Main runs the command with args (without the program name) and returns
// its exit code: 0 on success, 1 on any error, including bad flags or
// configuration, which are reported before anything in the kernel is
// touched.
func Main(args []string, stdout, stderr io.Writer) int {
	o := NewOptions()
	fs := o.NewFlagSet()
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, once, only for --help
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "nftvs: %v\nRun 'nftvs --help' for the list of flags.\n", err)
		return 1
	}
	if o.Help {
		fmt.Fprintf(stdout, "nftvs: a Kubernetes service proxy in place of kube-proxy's IPVS mode (IPVS + one nftables table).\n\nUsage:\n  nftvs [flags]\n\nFlags:\n%s", fs.FlagUsages())
		return 0
	}
	if rest := fs.Args(); len(rest) > 0 {
		fmt.Fprintf(stderr, "nftvs: takes no arguments, got %q\n", rest)
		return 1
	}
	switch o.Version {
	case "raw":
		bi, _ := debug.ReadBuildInfo()
		fmt.Fprintf(stdout, "%#v\n", bi)
		return 0
	case "true":
		fmt.Fprintf(stdout, "nftvs %s\n", Version())
		return 0
	}

	cfg, err := o.Complete()
	if err != nil {
		if cfg != nil {
			for _, w := range cfg.Warnings {
				fmt.Fprintf(stderr, "nftvs: warning: %s\n", w)
			}
		}
		fmt.Fprintf(stderr, "nftvs: %v\n", err)
		return 1
	}
	if err := logsapi.ValidateAndApply(&cfg.KubeProxy.Logging, cfg.loggingGate); err != nil {
		fmt.Fprintf(stderr, "nftvs: initialize logging: %v\n", err)
		return 1
	}
	defer klog.Flush()
	if cfg.File != "" {
		klog.InfoS("Using configuration file", "file", cfg.File)
	}
	for _, w := range cfg.Warnings {
		klog.InfoS("Warning: " + w)
	}
	fs.VisitAll(func(f *pflag.Flag) {
		klog.V(1).InfoS(fmt.Sprintf("FLAG: --%s=%q", f.Name, f.Value))
	})

	if cfg.WriteConfigTo != "" {
		if err := writeConfig(cfg.KubeProxy, cfg.WriteConfigTo); err != nil {
			klog.ErrorS(err, "Writing the configuration")
			return 1
		}
		klog.InfoS("Wrote configuration", "file", cfg.WriteConfigTo)
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch {
	case cfg.Cleanup:
		err = runCleanup(cfg)
	case cfg.InitOnly:
		_, err = setupKernel(cfg, ipv6Supported())
	default:
		err = run(ctx, cfg)
	}
	if err != nil {
		klog.ErrorS(err, "nftvs failed")
		return 1
	}
	return 0
}

// writeConfig writes the effective configuration as a
// KubeProxyConfiguration file (--write-config-to).
func writeConfig(c *v1alpha1.KubeProxyConfiguration, path string) error {
	c = c.DeepCopy()
	c.APIVersion, c.Kind = configAPIVersion, configKind
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode configuration: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write configuration: %w", err)
	}
	return nil
}

// setupKernel does what needs full privileges, as kube-proxy's IPVS mode
// does before it syncs anything (and all that --init-only does): kernel
// modules (ip_vs, the scheduler, what the table uses), the conntrack
// sysctls, IPVS mode's sysctls, the IPVS timeouts, and a check that the
// scheduler works. Any failure stops nftvs, as it stops kube-proxy.
func setupKernel(cfg *Config, ipv6 bool) (*ipvs.Kernel, error) {
	// Modules first: nf_conntrack's sysctls exist only once it is loaded.
	if err := loadKernelModules(cfg.KubeProxy.IPVS.Scheduler); err != nil {
		return nil, err
	}
	if err := setConntrackSysctls(ipvs.ProcSys, cfg.KubeProxy.Conntrack, conntrackHashsizeParam); err != nil {
		return nil, err
	}
	kernel, err := ipvs.NewKernel("")
	if err != nil {
		return nil, err
	}
	if err := ipvs.EnsureSysctls(ipvs.ProcSys, ipvs.SysctlOptions{IPv6: ipv6, StrictARP: cfg.KubeProxy.IPVS.StrictARP}); err != nil {
		kernel.Close()
		return nil, fmt.Errorf("set IPVS sysctls: %w", err)
	}
	t := cfg.KubeProxy.IPVS
	if t.TCPTimeout.Duration > 0 || t.TCPFinTimeout.Duration > 0 || t.UDPTimeout.Duration > 0 {
		if err := kernel.SetTimeouts(t.TCPTimeout.Duration, t.TCPFinTimeout.Duration, t.UDPTimeout.Duration); err != nil {
			kernel.Close()
			return nil, fmt.Errorf("set IPVS timeouts: %w", err)
		}
	}
	if err := ipvs.ProbeScheduler(kernel, t.Scheduler); err != nil {
		kernel.Close()
		return nil, err
	}
	return kernel, nil
}

// runCleanup removes what nftvs programmed: every IPVS virtual server
// outside --ipvs-exclude-cidrs, kube-ipvs0 and the nftables table.
// Nothing else (other tables, other links) is touched.
func runCleanup(cfg *Config) error {
	var errs []error
	exclude, err := cfg.excludeCIDRs()
	if err != nil {
		return err
	}
	if kernel, err := ipvs.NewKernel(""); err != nil {
		// No IPVS in this kernel: no virtual server to remove.
		klog.InfoS("IPVS is not available, no virtual server to remove", "err", err)
	} else {
		res, err := ipvs.NewReconciler(kernel, exclude).Resync(nil)
		kernel.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("remove IPVS virtual servers: %w", err))
		}
		klog.InfoS("Removed IPVS virtual servers", "virtualServers", res.Writes.DeleteVirtualServer, "excludeCIDRs", exclude)
	}
	addrs, err := ipvs.NewNetlinkAddresses("")
	if err != nil {
		errs = append(errs, err)
	} else {
		if err := addrs.DeleteDummy(ipvs.DummyName); err != nil {
			errs = append(errs, err)
		}
		addrs.Close()
	}
	table, err := nft.New(nft.Config{})
	if err != nil {
		errs = append(errs, err)
	} else if err := table.Cleanup(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// newClient builds the API client as kube-proxy does: in-cluster
// configuration unless a kubeconfig or master is given.
func newClient(c v1alpha1.KubeProxyConfiguration, master string) (kubernetes.Interface, error) {
	var (
		rc  *rest.Config
		err error
	)
	cc := c.ClientConnection
	if cc.Kubeconfig == "" && master == "" {
		klog.InfoS("Neither kubeconfig file nor master URL was specified, falling back to in-cluster config")
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cc.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: master}}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("API server client configuration: %w", err)
	}
	rc.AcceptContentTypes = cc.AcceptContentTypes
	rc.ContentType = cc.ContentType
	rc.QPS = cc.QPS
	rc.Burst = int(cc.Burst)
	rc.UserAgent = "nftvs/" + Version()
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("API server client: %w", err)
	}
	return client, nil
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

// proxierKernel assembles the proxier's kernel adapters. The conntrack
// cleaner is there only with --conntrack-cleaner (the default); the
// proxier then hands it, after each sync, the flows of the real servers
// the sync removed (SyncResult.Removed turned into conntrack.Stale, one
// Clean per sync), and its work is counted in m.
func proxierKernel(cfg *Config, rec *ipvs.Reconciler, addrs ipvs.Addresses, table nft.Interface, m *Metrics, newCleaner func() (conntrack.Interface, error)) (proxier.Kernel, error) {
	k := proxier.Kernel{IPVS: rec, Addresses: addrs, NFT: table}
	if !cfg.ConntrackCleaner {
		klog.InfoS("Conntrack cleaner disabled (--conntrack-cleaner=false): flows to removed endpoints expire on their own")
		return k, nil
	}
	c, err := newCleaner()
	if err != nil {
		return k, fmt.Errorf("conntrack cleaner: %w", err)
	}
	k.Conntrack = instrumentedConntrack{inner: c, metrics: m}
	return k, nil
}

var errPodCIDRsChanged = errors.New("the node's podCIDRs changed (detect-local-mode NodeCIDR): exiting to be restarted with them")

// run is the proxy: it programs the kernel until ctx ends (SIGTERM), then
// stops, leaving IPVS, kube-ipvs0 and the nftables table in place so that
// connections survive the restart.
func run(parent context.Context, cfg *Config) error {
	klog.InfoS("Starting nftvs", "version", Version(), "companion", cfg.Companion)
	applyOOMScoreAdj(cfg.KubeProxy.OOMScoreAdj)

	name, err := nodeName(cfg.KubeProxy.HostnameOverride)
	if err != nil {
		return err
	}
	client, err := newClient(*cfg.KubeProxy, cfg.Master)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	recorder := broadcaster.NewRecorder(scheme.Scheme, "nftvs")
	defer broadcaster.Shutdown()
	nodeRef := &v1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: name}

	resync := cfg.KubeProxy.ConfigSyncPeriod.Duration
	nodeCIDR := cfg.KubeProxy.DetectLocalMode == "NodeCIDR"
	nw, err := watchNode(ctx, client, name, resync, nodeCIDR, func() { cancel(errPodCIDRsChanged) })
	if ctx.Err() != nil {
		return stopped(ctx) // stopped while waiting for the node
	}
	if err != nil {
		return err
	}
	node := nw.Node()
	rawIPs := NodeHostIPs(node)
	if len(rawIPs) > 0 {
		klog.InfoS("Successfully retrieved NodeIPs", "NodeIPs", rawIPs)
	}
	primaryIPv6, ip4, ip6 := NodeIPs(rawIPs, cfg.KubeProxy.BindAddress)
	if primaryIPv6 && ip6.IsLoopback() || !primaryIPv6 && ip4.IsLoopback() {
		klog.InfoS("Can't determine this node's IP, assuming loopback; if this is incorrect, please set the --bind-address flag")
	}
	ipv6 := ipv6Supported()
	if primaryIPv6 && !ipv6 {
		return errors.New("no support for primary IP family IPv6 (IPv6 is disabled in this kernel)")
	}
	families := []v1.IPFamily{v1.IPv4Protocol}
	if ipv6 {
		families = append(families, v1.IPv6Protocol)
	}
	if primaryIPv6 {
		slices.Reverse(families)
	}
	klog.InfoS("IP families", "primary", families[0], "dualStack", len(families) == 2)

	var podCIDRs []string
	if node != nil {
		podCIDRs = node.Spec.PodCIDRs
	}
	nftCfg, err := cfg.nftConfig(podCIDRs)
	if err != nil {
		return err
	}
	if nftCfg.LocalTraffic.Interface == "" && len(nftCfg.LocalTraffic.PodCIDRs) == 0 {
		klog.InfoS("No local traffic detection: traffic from pods to ClusterIPs is masqueraded only with --masquerade-all",
			"detectLocalMode", cfg.KubeProxy.DetectLocalMode, "clusterCIDR", cfg.KubeProxy.ClusterCIDR, "podCIDRs", podCIDRs)
	}
	npCIDRs, primary, err := cfg.nodePortCIDRs()
	if err != nil {
		return err
	}
	if primary {
		npCIDRs = primaryNodePortCIDRs([]netip.Addr{ip4, ip6})
	}
	if len(npCIDRs) == 0 {
		klog.InfoS("nodePortAddresses is unset; NodePort connections will be accepted on all local IPs. Consider using `--nodeport-addresses primary`")
	}
	nodePorts := NodePortAddresses{Dummy: ipvs.DummyName, CIDRs: npCIDRs, IPv4: true, IPv6: ipv6}
	exclude, err := cfg.excludeCIDRs()
	if err != nil {
		return err
	}

	// The kernel: every failure here stops nftvs before it serves.
	kernel, err := setupKernel(cfg, ipv6)
	if err != nil {
		return err
	}
	defer kernel.Close()
	table, err := nft.New(nftCfg)
	if err != nil {
		return fmt.Errorf("nftables table: %w", err)
	}
	addrs, err := ipvs.NewNetlinkAddresses("")
	if err != nil {
		return err
	}
	defer addrs.Close()
	metrics := NewMetrics(families)
	k, err := proxierKernel(cfg, ipvs.NewReconciler(kernel, exclude), addrs, table, metrics, func() (conntrack.Interface, error) {
		return conntrack.New()
	})
	if err != nil {
		return err
	}

	pcfg := cfg.proxierConfig(name, true, ipv6)
	for _, ip := range []netip.Addr{ip4, ip6} {
		if !ip.IsLoopback() {
			pcfg.Node.IPs = append(pcfg.Node.IPs, ip)
		}
	}
	pcfg.NodePortAddresses = func() ([]netip.Addr, error) {
		all, err := hostAddresses()
		if err != nil {
			return nil, err
		}
		return nodePorts.Select(all), nil
	}
	p := proxier.New(pcfg, k)

	health := NewHealthServer(2*cfg.KubeProxy.IPVS.SyncPeriod.Duration, nw.Node, metrics)
	var hcAddrs func() []netip.Addr
	if !nodePorts.MatchAll() {
		hcAddrs = func() []netip.Addr {
			all, err := hostAddresses()
			if err != nil {
				klog.ErrorS(err, "Listing node port addresses for health check ports")
				return nil
			}
			return nodePorts.Select(all)
		}
	}
	serviceHealth := NewServiceHealthServers(name, recorder, hcAddrs, ipv6, func() bool { return health.Health().Healthy })
	defer serviceHealth.Close()

	broadcaster.StartRecordingToSink(ctx.Done())
	hardFail := func(event string) func(error) {
		if !cfg.KubeProxy.BindAddressHardFail {
			return nil
		}
		return func(err error) {
			recorder.Eventf(nodeRef, nil, v1.EventTypeWarning, event, "StartNftvs", "%s", err.Error())
			cancel(err)
		}
	}
	var servers sync.WaitGroup
	defer func() {
		cancel(nil) // whatever ended the run, the servers stop
		servers.Wait()
	}()
	if a := cfg.KubeProxy.HealthzBindAddress; a != "" {
		serveHTTP(ctx, &servers, "healthz", a, health.Handler(), hardFail("FailedToStartProxierHealthcheck"))
	}
	if a := cfg.KubeProxy.MetricsBindAddress; a != "" {
		serveHTTP(ctx, &servers, "metrics", a, metricsHandler(metrics, cfg), hardFail("FailedToStartMetricServer"))
	}

	recorder.Eventf(nodeRef, nil, v1.EventTypeNormal, "Starting", "StartNftvs", "Starting nftvs")

	// As kube-proxy's sync loop: healthy while starting; the informers'
	// initial lists are the first queued change.
	for _, f := range families {
		health.Updated(f)
		health.QueuedUpdate(f)
	}
	metrics.SetLastQueued(time.Now())
	pending := &pendingTracker{}
	go pending.poll(ctx, p, health, metrics, families)

	if err := p.Watch(ctx, client, name, resync); err != nil {
		if ctx.Err() != nil {
			return stopped(ctx)
		}
		return fmt.Errorf("watch the API server: %w", err)
	}
	// Right before the first sync, which adopts kube-proxy's IPVS state:
	// a failure is reported, and nftvs serves anyway, since stopping
	// would leave the node with no proxy at all.
	if cfg.TakeoverKubeProxy {
		if err := takeover.KubeProxy(); err != nil {
			klog.ErrorS(err, "Taking over from kube-proxy left some of its iptables rules or ipsets in place; serving anyway")
			recorder.Eventf(nodeRef, nil, v1.EventTypeWarning, "FailedTakeoverKubeProxy", "StartNftvs", "%s", err.Error())
		}
	}
	p.Run(ctx, func(res proxier.SyncResult, err error) {
		now := time.Now()
		var since time.Time // a failed sync leaves its changes pending
		if err == nil {
			// The proxier knows when the oldest change it programmed
			// arrived; the 1 s poller misses changes synced faster.
			since = res.PendingSince
			if polled := pending.take(); since.IsZero() {
				since = polled
			}
		}
		metrics.ObserveSync(res, err, now, since)
		if err == nil {
			for _, f := range families {
				health.Updated(f)
			}
		}
		metrics.ObserveNoLocalEndpoints(p.NoLocalEndpoints())
		serviceHealth.Sync(p.HealthChecks())
		klog.V(2).InfoS("Synced", "full", res.Full, "services", res.ServicesSeen, "ipvs", res.IPVS.String(),
			"realServersRemoved", len(res.Removed), "conntrackDeleted", res.Conntrack.Deleted, "duration", res.Duration, "err", err)
	})
	return stopped(ctx)
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

// pendingTracker polls the proxier for changes waiting to be synced, for
// /healthz (a change waiting longer than 2 × the sync period makes the
// proxy unhealthy), the *_changes_pending gauges and the network
// programming latency.
type pendingTracker struct {
	mu    sync.Mutex
	since time.Time // when a change was first seen waiting; zero: none
}

const pendingPollPeriod = time.Second

func (t *pendingTracker) poll(ctx context.Context, p *proxier.Proxier, health *HealthServer, metrics *Metrics, families []v1.IPFamily) {
	tick := time.NewTicker(pendingPollPeriod)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			n := p.Pending()
			metrics.ObservePending(n, now)
			if n == 0 {
				continue
			}
			for _, f := range families {
				health.QueuedUpdate(f)
			}
			t.mu.Lock()
			if t.since.IsZero() {
				t.since = now
			}
			t.mu.Unlock()
		}
	}
}

// take returns when the oldest waiting change was seen, and forgets it.
func (t *pendingTracker) take() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.since
	t.since = time.Time{}
	return s
}
