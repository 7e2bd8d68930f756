package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/tools/events"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/clock"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/conntrack"
	"github.com/nftvs/nftvs/healthcheck"
	"github.com/nftvs/nftvs/internal/takeover"
	"github.com/nftvs/nftvs/internal/version"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

// Main runs the command with args (without the program name) and returns
// its exit code: 0 on success, 1 on any error, including bad flags or
// configuration, which are reported before anything in the kernel is
// touched.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "explain" {
		return runExplain(args[1:], stdout, stderr)
	}
	o := config.NewOptions()
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
		// kube-proxy prints "Kubernetes v1.36.3"; which program this is
		// matters more than matching it, so it says so, and what it
		// stands in for.
		fmt.Fprintf(stdout, "nftvs %s (in place of kube-proxy %s, IPVS mode)\n", version.Get(), version.Kube)
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
	config.UseClientGoFeatureGates(cfg.FeatureGate)
	if err := logsapi.ValidateAndApply(&cfg.KubeProxy.Logging, cfg.FeatureGate); err != nil {
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
		if err := config.Write(cfg.KubeProxy, cfg.WriteConfigTo); err != nil {
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
		_, err = setupKernel(cfg)
		checkIPv6Forwarding(ipvs.ProcSys, ipv6Supported() && cfg.UsesIPv6(nil, nil))
	default:
		ctx, changed := context.WithCancelCause(ctx)
		defer changed(nil)
		if cfg.File != "" {
			w, werr := watchConfigFile(ctx, cfg.File, changed)
			if werr != nil {
				klog.ErrorS(werr, "Error running ProxyServer")
				return 1
			}
			defer w.Close()
		}
		err = run(ctx, cfg)
	}
	if err != nil {
		// kube-proxy's words: runbooks grep for them.
		klog.ErrorS(err, "Error running ProxyServer")
		return 1
	}
	if cfg.InitOnly {
		klog.InfoS("System initialized and --init-only specified")
	}
	return 0
}

// setupKernel does what needs full privileges, as kube-proxy's IPVS mode
// does before it syncs anything (and all that --init-only does): kernel
// modules (ip_vs, the scheduler, what the table uses), the conntrack
// sysctls, IPVS mode's sysctls (not IPv6 forwarding: checkIPv6Forwarding),
// the IPVS timeouts, and a check that the scheduler works. A failure
// stops nftvs, as it stops kube-proxy, except for the IPVS timeouts, which
// kube-proxy only logs.
func setupKernel(cfg *config.Config) (*ipvs.Kernel, error) {
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
	if err := ipvs.EnsureSysctls(ipvs.ProcSys, ipvs.SysctlOptions{StrictARP: cfg.KubeProxy.IPVS.StrictARP}); err != nil {
		kernel.Close()
		return nil, fmt.Errorf("set IPVS sysctls: %w", err)
	}
	setIPVSTimeouts(kernel, cfg.KubeProxy.IPVS)
	if err := ipvs.ProbeScheduler(kernel, cfg.KubeProxy.IPVS.Scheduler); err != nil {
		kernel.Close()
		return nil, err
	}
	return kernel, nil
}

// checkIPv6Forwarding warns when the cluster uses IPv6 and the node does
// not forward it, and returns the warning ("" when there is none).
// kube-proxy 1.36 sets only net.ipv4.ip_forward (IPVS mode) or nothing
// (nftables mode); nftvs does the same and never turns IPv6 forwarding
// on itself: on a node that configures itself by SLAAC, that stops Router
// Advertisements being accepted (accept_ra=1), and the node loses its
// default route.
func checkIPv6Forwarding(s ipvs.Sysctl, usesIPv6 bool) string {
	if !usesIPv6 {
		return ""
	}
	switch v, err := s.Get(ipvs.SysctlIPv6Forward); {
	case errors.Is(err, os.ErrNotExist):
		return "" // IPv6 is disabled in this kernel
	case err != nil:
		klog.ErrorS(err, "Checking IPv6 forwarding")
		return ""
	case v != 0:
		return ""
	}
	w := "IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0) on a node whose cluster uses IPv6: IPv6 Services will not reach pods through this node. " +
		"nftvs, like kube-proxy, does not turn it on (on a SLAAC node that would stop Router Advertisements being accepted); " +
		"set it in the node's own configuration (with accept_ra=2 where the node relies on Router Advertisements)"
	klog.Warning(w)
	return w
}

// ipvsTimeouts sets IPVS's connection timeouts (ipvsadm --set).
type ipvsTimeouts interface {
	SetTimeouts(tcp, tcpFin, udp time.Duration) error
}

// setIPVSTimeouts sets --ipvs-tcp-timeout, --ipvs-tcpfin-timeout and
// --ipvs-udp-timeout when one is set (0 keeps the kernel's). A failure is
// logged and nftvs goes on, as kube-proxy's IPVS mode does
// (pkg/proxy/ipvs/proxier.go: "Failed to configure IPVS timeouts").
func setIPVSTimeouts(k ipvsTimeouts, c v1alpha1.KubeProxyIPVSConfiguration) {
	if c.TCPTimeout.Duration <= 0 && c.TCPFinTimeout.Duration <= 0 && c.UDPTimeout.Duration <= 0 {
		return
	}
	if err := k.SetTimeouts(c.TCPTimeout.Duration, c.TCPFinTimeout.Duration, c.UDPTimeout.Duration); err != nil {
		klog.ErrorS(err, "Failed to configure IPVS timeouts")
	}
}

// runCleanup removes what nftvs programmed: every IPVS virtual server
// outside --ipvs-exclude-cidrs (fwmark ones only in nftvs's mark space),
// kube-ipvs0 and the nftables table; and what kube-proxy's IPVS mode left
// in iptables-nft and ipset, as --takeover-kube-proxy does.
// Nothing else (other tables, other links) is touched.
func runCleanup(cfg *config.Config) error {
	var errs []error
	exclude := cfg.ExcludeCIDRs
	if kernel, err := ipvs.NewKernel(""); err != nil {
		// No IPVS in this kernel: no virtual server to remove.
		klog.InfoS("IPVS is not available, no virtual server to remove", "err", err)
	} else {
		res, err := ipvs.NewReconciler(kernel, exclude).OwnFWMarks(proxier.OwnsFWMark(cfg.MasqueradeMark)).Resync(nil)
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
	// As kube-proxy's --cleanup removes what its IPVS mode left in
	// iptables and ipset (it also removes its IPVS state, which the
	// lines above do).
	if err := takeover.KubeProxy(takeover.Node()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// newClient builds the API client as kube-proxy does: in-cluster
// configuration unless a kubeconfig or master is given.
// The API server's addresses are those of the host in its URL, unless
// the in-cluster configuration is used: its host is the kubernetes
// Service's ClusterIP, which kube-ipvs0 holds on purpose.
func newClient(c v1alpha1.KubeProxyConfiguration, master string) (kubernetes.Interface, []netip.Addr, error) {
	var (
		rc        *rest.Config
		err       error
		inCluster bool
	)
	cc := c.ClientConnection
	if cc.Kubeconfig == "" && master == "" {
		klog.InfoS("Neither kubeconfig file nor master URL was specified, falling back to in-cluster config")
		rc, err = rest.InClusterConfig()
		inCluster = true
	} else {
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cc.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: master}}).ClientConfig()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("API server client configuration: %w", err)
	}
	var api []netip.Addr
	if !inCluster {
		api = serverAddresses(rc.Host)
	}
	rc.AcceptContentTypes = cc.AcceptContentTypes
	rc.ContentType = cc.ContentType
	rc.QPS = cc.QPS
	rc.Burst = int(cc.Burst)
	rc.UserAgent = "nftvs/" + version.Get()
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("API server client: %w", err)
	}
	return client, api, nil
}

// serverAddresses are the addresses of the host of an API server URL: the
// host itself when it is an IP, else what it resolves to (within 2 s).
func serverAddresses(server string) []netip.Addr {
	u, err := url.Parse(server)
	if err != nil || u.Hostname() == "" {
		return nil
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
		return []netip.Addr{ip.Unmap()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", u.Hostname())
	if err != nil {
		klog.InfoS("Could not resolve the API server's host; its addresses are not protected from Services", "host", u.Hostname(), "err", err)
		return nil
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips
}

// freeAPIServerAddresses removes the API server's addresses from
// kube-ipvs0 before nftvs first connects to it. A Service that claimed
// one (before nftvs refused such Services) left the node unable to reach
// its API server, and so nftvs unable to undo it.
func freeAPIServerAddresses(api []netip.Addr) {
	if len(api) == 0 {
		return
	}
	addrs, err := ipvs.NewNetlinkAddresses("")
	if err != nil {
		klog.ErrorS(err, "Checking kube-ipvs0 for the API server's address")
		return
	}
	defer addrs.Close()
	removed, err := addrs.RemoveAddresses(ipvs.DummyName, api)
	if err != nil {
		klog.ErrorS(err, "Removing the API server's address from kube-ipvs0")
	}
	if len(removed) > 0 {
		klog.InfoS("Removed the API server's address from kube-ipvs0, where a Service had put it", "addresses", removed)
	}
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
func proxierKernel(cfg *config.Config, rec *ipvs.Reconciler, addrs ipvs.Addresses, table nft.Interface, m *metrics.Metrics, newCleaner func() (conntrack.Interface, error)) (proxier.Kernel, error) {
	k := proxier.Kernel{IPVS: rec, Addresses: addrs, NFT: table}
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

var errPodCIDRsChanged = errors.New("the node's podCIDRs changed (detect-local-mode NodeCIDR): exiting to be restarted with them")

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
	defer ev.broadcaster.Shutdown()
	ev.broadcaster.StartRecordingToSink(ctx.Done())

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
	nw, err := watchNode(ctx, client, name, resync, cfg.KubeProxy.DetectLocalMode == "NodeCIDR", func() { cancel(errPodCIDRsChanged) })
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
	err = p.WatchWith(ctx, client, proxier.WatchOptions{Resync: resync, Node: nw.informer, OnChange: changes.observe})
	if err != nil {
		if ctx.Err() != nil {
			return stopped(ctx)
		}
		return fmt.Errorf("watch the API server: %w", err)
	}
	changes.initialize()
	takeOverKubeProxy(cfg.TakeoverKubeProxy, takeover.Node(), ev.event)
	p.Run(ctx, func(res proxier.SyncResult, err error) {
		observeSync(res, err, p, node.Families, m, health, changes, serviceHealth)
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

// nodeEvents records Events on this Node.
type nodeEvents struct {
	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder
	node        *v1.ObjectReference
}

func newNodeEvents(client kubernetes.Interface, name string) *nodeEvents {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	return &nodeEvents{broadcaster: b, recorder: b.NewRecorder(scheme.Scheme, "nftvs"),
		node: &v1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: name}}
}

// event records an Event on the Node with kube-proxy's action
// (StartKubeProxy); the reporting controller is nftvs (newNodeEvents).
func (e *nodeEvents) event(eventType, reason, note string) {
	e.recorder.Eventf(e.node, nil, eventType, reason, "StartKubeProxy", "%s", eventNote(note))
}

// maxEventNote is the longest note the API server accepts
// (events.k8s.io/v1 validation); a longer Event is dropped whole.
const maxEventNote = 1024

// eventNote cuts a note to maxEventNote bytes, at a rune boundary.
func eventNote(s string) string {
	if len(s) <= maxEventNote {
		return s
	}
	const more = "…"
	s = s[:maxEventNote-len(more)]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + more
}

// serviceWarning is a Warning Event on a Service that nftvs does not
// program as asked (a refused address, an unusable source range, a
// frontend another Service owns, a kernel refusal).
func (e *nodeEvents) serviceWarning(svc types.NamespacedName, reason, note string) {
	ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: svc.Namespace, Name: svc.Name}
	e.recorder.Eventf(ref, e.node, v1.EventTypeWarning, reason, "SyncProxyRules", "%s", eventNote(note))
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
	rec := ipvs.NewReconciler(kernel, cfg.ExcludeCIDRs).OwnFWMarks(proxier.OwnsFWMark(cfg.MasqueradeMark))
	rec.Yield = yieldCPU
	k, err := proxierKernel(cfg, rec, addrs, table, m, func() (conntrack.Interface, error) {
		return conntrack.New()
	})
	if err != nil {
		closeKernel()
		return nil, nil, err
	}
	p := proxier.New(node.Proxier(config.Runtime{
		Schedulers:     offeredSchedulers(kernel, cfg.KubeProxy.IPVS.Scheduler),
		HostAddresses:  hostAddresses,
		LocalAddresses: localAddresses,
		Warn:           warn,
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

// yieldCPU gives way, between two batches of a large IPVS sync, to what
// waits for the CPU: nftvs's other goroutines (runtime.Gosched), then the
// node's other tasks on this CPU (sched_yield(2): the scheduler runs
// whatever is runnable here before the sync goes on). On an idle node
// nothing waits and the sync goes straight on, so a cold start costs one
// system call per batch. A pause (a sleep) would do no more for a loaded
// node, whose scheduler already shares the CPU fairly with nftvs's one
// sync thread, and would only lengthen a start-up on an idle one.
func yieldCPU() {
	runtime.Gosched()
	_, _, _ = unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
}

// localAddresses are the addresses of this node's links but kube-ipvs0's:
// an external or load-balancer IP among them is the node's own. Loopback
// and link-local ones are left out: such Service addresses are refused
// anyway, and pods' veths come and go with link-local addresses.
func localAddresses() ([]netip.Addr, error) {
	all, err := hostAddresses()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, ia := range all {
		a := ia.Addr.Unmap()
		if ia.Link != ipvs.DummyName && a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out, nil
}

// hardFail is what a server that cannot serve does with
// --bind-address-hard-fail: an Event, and the run ends. Without it (nil),
// the server retries.
func hardFail(cfg *config.Config, cancel context.CancelCauseFunc, ev *nodeEvents, reason string) func(error) {
	if !cfg.KubeProxy.BindAddressHardFail {
		return nil
	}
	return func(err error) {
		ev.event(v1.EventTypeWarning, reason, err.Error())
		cancel(err)
	}
}

// takeOverKubeProxy runs right before the first sync, which adopts
// kube-proxy's IPVS state. With take (--takeover-kube-proxy, the
// default) it removes kube-proxy IPVS mode's iptables chains and ipsets: a
// failure is reported, and nftvs serves anyway, since stopping would
// leave the node with no proxy at all. Without, it only looks, and names
// what it leaves in a log line and a Warning Event: kube-proxy's
// KUBE-IPVS-FILTER goes on rejecting new Service ports on kube-ipvs0's
// addresses.
func takeOverKubeProxy(take bool, k takeover.Kernel, event func(eventType, reason, note string)) {
	if take {
		if err := takeover.KubeProxy(k); err != nil {
			klog.ErrorS(err, "Taking over from kube-proxy left some of its iptables rules or ipsets in place; serving anyway")
			event(v1.EventTypeWarning, "FailedTakeoverKubeProxy", err.Error())
		}
		return
	}
	left, err := takeover.Find(k)
	if err != nil {
		klog.ErrorS(err, "Looking for kube-proxy's IPVS-mode iptables rules and ipsets")
	}
	if !left.Found() {
		return
	}
	const why = " in place (--takeover-kube-proxy=false): its KUBE-IPVS-FILTER rejects new Service ports on kube-ipvs0's addresses; " +
		"restart nftvs without --takeover-kube-proxy=false, or run nftvs --cleanup, to remove them"
	klog.Warning("kube-proxy's IPVS mode left " + left.String() + why)
	event(v1.EventTypeWarning, "KubeProxyLeftovers", "kube-proxy's IPVS mode left "+left.Summary(3)+why+" (the nftvs log names them all)")
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
		"realServersRemoved", len(res.Removed), "conntrackDeleted", res.Conntrack.Deleted, "duration", res.Duration, "err", err)
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
