package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/metrics"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/component-base/metrics/prometheus/slis"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// serverRetryPeriod is how long kube-proxy waits before trying again to
// serve on an address it could not bind.
const serverRetryPeriod = 5 * time.Second

// serveHTTP serves handler on addr until ctx ends. A server that cannot
// listen is retried every 5 s, unless hardFail is set
// (--bind-address-hard-fail), which is then told why and the server gives
// up.
func serveHTTP(ctx context.Context, wg *sync.WaitGroup, name, addr string, handler http.Handler, hardFail func(error)) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			err := serveOnce(ctx, addr, handler)
			if err == nil || ctx.Err() != nil {
				return
			}
			klog.ErrorS(err, "Server failed", "server", name, "address", addr)
			if hardFail != nil {
				hardFail(fmt.Errorf("%s server failed: %w", name, err))
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(serverRetryPeriod):
			}
		}
	}()
}

func serveOnce(ctx context.Context, addr string, handler http.Handler) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = srv.Close()
		case <-done:
		}
	}()
	klog.V(3).InfoS("Serving", "address", l.Addr())
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// metricsHandler is kube-proxy's metrics server: /metrics, /healthz (the
// process answers: its one check, ping), /metrics/slis (that check's
// results, component-base's kubernetes_healthcheck and
// kubernetes_healthchecks_total, reset on each scrape as kube-proxy's),
// /proxyMode, /configz, and /debug/pprof with --profiling. /flagz and
// /statusz are not served (the feature gates ComponentFlagz and
// ComponentStatusz are refused): they need k8s.io/apiserver.
func metricsHandler(m *metrics.Metrics, cfg *config.Config) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Gatherer(), promhttp.HandlerOpts{}))
	slis.SLIMetricsWithReset{}.Install(mux)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_ = slis.ObserveHealthcheck(r.Context(), "ping", "healthz", slis.Success)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fmt.Fprint(w, cfg.KubeProxy.Mode)
	})
	mux.Handle("/configz", configzHandler(cfg.KubeProxy))
	if cfg.KubeProxy.EnableProfiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// configzHandler serves the effective configuration as kube-proxy's
// /configz does: {"kubeproxy.config.k8s.io": {...}}.
func configzHandler(c *v1alpha1.KubeProxyConfiguration) http.Handler {
	c = c.DeepCopy()
	c.APIVersion, c.Kind = config.APIVersion, config.Kind
	body, err := json.Marshal(map[string]any{v1alpha1.GroupName: c})
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body)
	})
}
