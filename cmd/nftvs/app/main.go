package app

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/internal/version"
	"github.com/nftvs/nftvs/ipvs"
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
