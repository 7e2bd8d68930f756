package app

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/internal/takeover"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/nft"
	"github.com/nftvs/nftvs/proxier"
)

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
