package app

import (
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/internal/kmod"
)

// companionModules are what the nftables table and the conntrack cleaner
// use beyond nf_tables' core (which has cmp, lookup, bitwise, byteorder,
// payload, meta, immediate, counter on 5.13+, and every set type): ct
// state, fib daddr type, masquerade, reject, the nat chain type, conntrack
// over netlink, and the dummy link kube-ipvs0. Each is optional here: a
// missing one makes the table, the cleaner or the link fail later with
// the kernel's own error, and most are autoloaded by the kernel on first
// use when the host has modprobe.
var companionModules = []string{
	"nf_conntrack", "nf_conntrack_netlink", "nf_nat",
	"nf_tables", "nft_ct", "nft_fib_inet", "nft_masq", "nft_reject_inet", "nft_chain_nat", "nft_counter",
	"dummy",
}

// loadKernelModules loads ip_vs (an error when it cannot: nothing works
// without it), the scheduler's module and companionModules (logged when
// they cannot) with finit_module, because moby/ipvs only execs modprobe,
// which nftvs's image does not have.
func loadKernelModules(scheduler string) error {
	if scheduler == "" {
		scheduler = "rr"
	}
	l, err := kmod.New()
	if err != nil {
		return fmt.Errorf("kernel modules: %w", err)
	}
	if err := l.Load("ip_vs"); err != nil {
		return fmt.Errorf("IPVS: %w", err)
	}
	for _, m := range append([]string{"ip_vs_" + scheduler}, companionModules...) {
		switch err := l.Load(m); {
		case err == nil:
		case errors.Is(err, kmod.ErrNotFound):
			// Built into another module (nft_counter into nf_tables
			// since 5.13) or not built at all.
			klog.V(2).InfoS("Kernel module not in the module tree, assuming it is built in", "module", m, "err", err)
		default:
			klog.InfoS("Could not load kernel module, continuing: what needs it will fail if the kernel lacks it", "module", m, "err", err)
		}
	}
	return nil
}
