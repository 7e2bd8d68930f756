package app

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/explain"
)

// serveExplain serves the proxier's view on the explain socket. A socket
// that cannot be served is logged, not fatal: it only feeds a debugging
// command.
func serveExplain(ctx context.Context, path string, src explain.Source) {
	if path == "" {
		return
	}
	if err := explain.Serve(ctx, path, explain.Handler(src)); err != nil {
		klog.ErrorS(err, "Not serving `nftvs explain`", "socket", path)
		return
	}
	klog.InfoS("Serving `nftvs explain`", "socket", path)
}

// runExplain is `nftvs explain ...`.
func runExplain(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := explain.Run(ctx, args, stdout, func() (explain.Kernel, error) {
		k, err := explain.NewNodeKernel()
		if err != nil {
			return nil, err
		}
		// Health check node ports listen on the node port addresses:
		// loopback first, then every local address.
		k.HealthAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
		if local, err := localAddresses(); err == nil {
			k.HealthAddresses = append(k.HealthAddresses, local...)
		}
		return k, nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "nftvs %v\n", err)
		return 1
	}
	return 0
}
