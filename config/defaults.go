package config

import (
	"net"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
	"k8s.io/utils/ptr"
)

// SetDefaults fills in what kube-proxy 1.36 defaults in a v1alpha1
// KubeProxyConfiguration (k8s.io/kubernetes pkg/proxy/apis/config/v1alpha1
// defaults.go), field by field. Note that it leaves ipvs.minSyncPeriod,
// the IPVS timeouts, the conntrack UDP timeouts and ipvs.scheduler alone:
// kube-proxy does not default them (0 and "" mean "immediately", "as the
// kernel has it" and rr).
func SetDefaults(obj *v1alpha1.KubeProxyConfiguration) {
	if obj.BindAddress == "" {
		obj.BindAddress = "0.0.0.0"
	}
	healthzHost, metricsHost := defaultAddresses(obj.BindAddress)
	if obj.HealthzBindAddress == "" {
		obj.HealthzBindAddress = net.JoinHostPort(healthzHost, strconv.Itoa(ProxyHealthzPort))
	} else {
		obj.HealthzBindAddress = appendPortIfNeeded(obj.HealthzBindAddress, ProxyHealthzPort)
	}
	if obj.MetricsBindAddress == "" {
		obj.MetricsBindAddress = net.JoinHostPort(metricsHost, strconv.Itoa(ProxyStatusPort))
	} else {
		obj.MetricsBindAddress = appendPortIfNeeded(obj.MetricsBindAddress, ProxyStatusPort)
	}
	if obj.OOMScoreAdj == nil {
		obj.OOMScoreAdj = ptr.To[int32](kubeProxyOOMScoreAdj)
	}
	if obj.IPTables.SyncPeriod.Duration == 0 {
		obj.IPTables.SyncPeriod = metav1.Duration{Duration: 30 * time.Second}
	}
	if obj.IPTables.MinSyncPeriod.Duration == 0 {
		obj.IPTables.MinSyncPeriod = metav1.Duration{Duration: time.Second}
	}
	if obj.IPTables.LocalhostNodePorts == nil {
		obj.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	if obj.IPVS.SyncPeriod.Duration == 0 {
		obj.IPVS.SyncPeriod = metav1.Duration{Duration: 30 * time.Second}
	}
	if obj.NFTables.SyncPeriod.Duration == 0 {
		obj.NFTables.SyncPeriod = metav1.Duration{Duration: 30 * time.Second}
	}
	if obj.NFTables.MinSyncPeriod.Duration == 0 {
		obj.NFTables.MinSyncPeriod = metav1.Duration{Duration: time.Second}
	}
	if obj.Conntrack.MaxPerCore == nil {
		obj.Conntrack.MaxPerCore = ptr.To[int32](32 * 1024)
	}
	if obj.Conntrack.Min == nil {
		obj.Conntrack.Min = ptr.To[int32](128 * 1024)
	}
	if obj.IPTables.MasqueradeBit == nil {
		obj.IPTables.MasqueradeBit = ptr.To[int32](14)
	}
	if obj.NFTables.MasqueradeBit == nil {
		obj.NFTables.MasqueradeBit = ptr.To[int32](14)
	}
	if obj.Conntrack.TCPEstablishedTimeout == nil {
		obj.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: 24 * time.Hour}
	}
	if obj.Conntrack.TCPCloseWaitTimeout == nil {
		// kubernetes#32551: one hour matches typical server timeouts.
		obj.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: time.Hour}
	}
	if obj.ConfigSyncPeriod.Duration == 0 {
		obj.ConfigSyncPeriod.Duration = 15 * time.Minute
	}
	if obj.ClientConnection.ContentType == "" {
		obj.ClientConnection.ContentType = "application/vnd.kubernetes.protobuf"
	}
	if obj.ClientConnection.QPS == 0 {
		obj.ClientConnection.QPS = 5
	}
	if obj.ClientConnection.Burst == 0 {
		obj.ClientConnection.Burst = 10
	}
	if obj.FeatureGates == nil {
		obj.FeatureGates = map[string]bool{}
	}
	logsapi.SetRecommendedLoggingConfiguration(&obj.Logging)
}

// platformDefaults is kube-proxy's platformApplyDefaults for nftvs: an
// empty mode is ipvs (kube-proxy's would be iptables), an empty
// detectLocalMode is ClusterCIDR.
func platformDefaults(c *v1alpha1.KubeProxyConfiguration) {
	if c.Mode == "" {
		c.Mode = "ipvs"
	}
	if c.DetectLocalMode == "" {
		c.DetectLocalMode = "ClusterCIDR"
	}
}

// defaultAddresses are the default health and metrics hosts for a bind
// address: IPv4 ones unless the bind address is IPv6.
func defaultAddresses(bindAddress string) (healthz, metrics string) {
	if ip := netutils.ParseIPSloppy(bindAddress); ip != nil && ip.To4() == nil {
		return "::", "::1"
	}
	return "0.0.0.0", "127.0.0.1"
}

// appendPortIfNeeded is kube-proxy's proxyutil.AppendPortIfNeeded.
func appendPortIfNeeded(addr string, port int32) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if netutils.ParseIPSloppy(addr) == nil {
		return addr // validation reports it
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}
