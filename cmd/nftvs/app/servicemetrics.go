package app

import (
	"fmt"

	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/config"
	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/metrics"
	"github.com/nftvs/nftvs/servicemetrics"
)

// registerServiceMetrics adds the per-Service IPVS counters to the
// metrics registry when --ipvs-service-metrics asks for them, and returns
// what closes their IPVS handle (nil when off). The collector reads the
// kernel through a netlink socket of its own: the proxier's handle is
// serialised, and a scrape must neither wait for a sync's writes nor hold
// them up.
func registerServiceMetrics(cfg *config.Config, m *metrics.Metrics, owners servicemetrics.Owners) (func(), error) {
	if !cfg.ServiceMetrics {
		if cfg.ServiceMetricsRealServers {
			klog.InfoS("--ipvs-service-metrics-real-servers has no effect without --ipvs-service-metrics")
		}
		return nil, nil
	}
	k, err := ipvs.NewKernel("")
	if err != nil {
		return nil, fmt.Errorf("IPVS handle for --ipvs-service-metrics: %w", err)
	}
	if err := m.Registry.Register(servicemetrics.New(k, owners, servicemetrics.Options{RealServers: cfg.ServiceMetricsRealServers})); err != nil {
		k.Close()
		return nil, fmt.Errorf("register the per-Service IPVS metrics: %w", err)
	}
	klog.InfoS("Serving IPVS counters per Service port", "realServers", cfg.ServiceMetricsRealServers, "cachedFor", servicemetrics.DefaultTTL)
	return k.Close, nil
}
