package servicemetrics

import (
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/klog/v2"

	"github.com/nftvs/nftvs/ipvs"
	"github.com/nftvs/nftvs/proxier"
)

// Owners tells which Service port a virtual server is
// (proxier.Proxier.VirtualServerOwner).
type Owners interface {
	VirtualServerOwner(ipvs.VSKey) (proxier.ServicePortName, bool)
}

// DefaultTTL is how long one read of the kernel's counters answers
// scrapes: Prometheus servers scraping every node in HA pairs, or
// several at once, cost one read.
const DefaultTTL = 2 * time.Second

// Options configure a Collector.
type Options struct {
	// RealServers adds the per-real-server connection series.
	RealServers bool
	// TTL is how long one read answers scrapes (DefaultTTL when 0; a
	// negative TTL reads on every scrape).
	TTL time.Duration
	// Now is the clock (tests replace it).
	Now func() time.Time
}

var (
	serviceLabels    = []string{"namespace", "service", "port"}
	realServerLabels = []string{"namespace", "service", "port", "real_server"}

	descActive = prometheus.NewDesc("nftvs_service_active_connections",
		"IPVS connection entries in state ESTABLISHED (TCP) of a Service port, summed over its virtual servers and real servers (ipvsadm -Ln ActiveConn).", serviceLabels, nil)
	descInactive = prometheus.NewDesc("nftvs_service_inactive_connections",
		"Other IPVS connection entries of a Service port (TCP opening or closing, UDP, SCTP), as ipvsadm -Ln InActConn.", serviceLabels, nil)
	descConnections = prometheus.NewDesc("nftvs_service_connections_total",
		"Connections IPVS scheduled for a Service port since its virtual servers were created (ipvsadm -Ln --stats Conns).", serviceLabels, nil)
	descPacketsIn = prometheus.NewDesc("nftvs_service_packets_in_total",
		"Packets from clients to a Service port (ipvsadm --stats InPkts).", serviceLabels, nil)
	descPacketsOut = prometheus.NewDesc("nftvs_service_packets_out_total",
		"Packets from a Service port's endpoints back to clients (ipvsadm --stats OutPkts).", serviceLabels, nil)
	descBytesIn = prometheus.NewDesc("nftvs_service_bytes_in_total",
		"Bytes from clients to a Service port (ipvsadm --stats InBytes).", serviceLabels, nil)
	descBytesOut = prometheus.NewDesc("nftvs_service_bytes_out_total",
		"Bytes from a Service port's endpoints back to clients (ipvsadm --stats OutBytes).", serviceLabels, nil)
	descRSActive = prometheus.NewDesc("nftvs_service_real_server_active_connections",
		"Active IPVS connection entries of one endpoint (address:port) of a Service port, over the port's virtual servers.", realServerLabels, nil)
	descRSInactive = prometheus.NewDesc("nftvs_service_real_server_inactive_connections",
		"Inactive IPVS connection entries of one endpoint of a Service port.", realServerLabels, nil)
	descReadDuration = prometheus.NewDesc("nftvs_service_stats_read_duration_seconds",
		"How long the last read of every virtual server's IPVS counters (one netlink dump and /proc/net/ip_vs) and their summing took.", nil, nil)
	descReadErrors = prometheus.NewDesc("nftvs_service_stats_read_errors_total",
		"Reads of the IPVS counters that failed; the scrape then has no per-Service series.", nil, nil)
)

// Collector is a prometheus.Collector of per-Service IPVS counters.
type Collector struct {
	stats  ipvs.StatsReader
	owners Owners
	opts   Options

	// mu serialises reads: concurrent scrapes wait for one read rather
	// than each making their own.
	mu       sync.Mutex
	at       time.Time
	cached   []prometheus.Metric
	took     time.Duration
	failures int
	// labels are each Service port's label pairs, reused from read to
	// read.
	labels map[proxier.ServicePortName][]*dto.LabelPair
}

// sample is one series of a read: a const metric whose label pairs are
// shared with the other series of its Service port. Label pairs are in
// name order, as Prometheus keeps them.
type sample struct {
	desc    *prometheus.Desc
	labels  []*dto.LabelPair
	value   float64
	counter bool
}

func (s sample) Desc() *prometheus.Desc { return s.desc }

func (s sample) Write(m *dto.Metric) error {
	v := s.value
	m.Label = s.labels
	if s.counter {
		m.Counter = &dto.Counter{Value: &v}
	} else {
		m.Gauge = &dto.Gauge{Value: &v}
	}
	return nil
}

// labelPairs builds label pairs from name, value, ... given in name order.
func labelPairs(kv ...string) []*dto.LabelPair {
	out := make([]*dto.LabelPair, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &dto.LabelPair{Name: &kv[i], Value: &kv[i+1]})
	}
	return out
}

var _ prometheus.Collector = (*Collector)(nil)

// New returns a Collector reading stats and naming virtual servers by
// owners. stats should be an IPVS handle of its own, so that a scrape
// never waits for the proxier's writes nor delays them.
func New(stats ipvs.StatsReader, owners Owners, opts Options) *Collector {
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Collector{stats: stats, owners: owners, opts: opts}
}

func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descInactive, descConnections, descPacketsIn, descPacketsOut,
		descBytesIn, descBytesOut, descReadDuration, descReadErrors} {
		ch <- d
	}
	if c.opts.RealServers {
		ch <- descRSActive
		ch <- descRSInactive
	}
}

func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.opts.Now(); c.cached == nil || c.opts.TTL < 0 || now.Sub(c.at) >= c.opts.TTL {
		c.refresh(now)
	}
	for _, m := range c.cached {
		ch <- m
	}
	ch <- prometheus.MustNewConstMetric(descReadDuration, prometheus.GaugeValue, c.took.Seconds())
	ch <- prometheus.MustNewConstMetric(descReadErrors, prometheus.CounterValue, float64(c.failures))
}

// portTotals are a Service port's counters, summed.
type portTotals struct {
	active, inactive                                      int
	connections, packetsIn, packetsOut, bytesIn, bytesOut uint64
}

type realServerKey struct {
	port proxier.ServicePortName
	rs   netip.AddrPort
}

// refresh reads the kernel once and builds every series; c.mu is held.
func (c *Collector) refresh(now time.Time) {
	start := time.Now()
	stats, err := c.stats.Stats()
	if err != nil {
		c.failures++
		klog.ErrorS(err, "Reading IPVS counters for the per-Service metrics")
		c.cached, c.at = []prometheus.Metric{}, now
		return
	}
	ports := map[proxier.ServicePortName]*portTotals{}
	var rss map[realServerKey]ipvs.Connections
	if c.opts.RealServers {
		rss = map[realServerKey]ipvs.Connections{}
	}
	for k, s := range stats {
		owner, ok := c.owners.VirtualServerOwner(k)
		if !ok {
			continue // not a Service's (excluded, someone else's, or just removed)
		}
		t := ports[owner]
		if t == nil {
			t = &portTotals{}
			ports[owner] = t
		}
		a, i := s.Active()
		t.active += a
		t.inactive += i
		t.connections += s.Connections
		t.packetsIn += s.PacketsIn
		t.packetsOut += s.PacketsOut
		t.bytesIn += s.BytesIn
		t.bytesOut += s.BytesOut
		for _, r := range s.RealServers {
			if rss == nil {
				break
			}
			rk := realServerKey{owner, r.AddrPort}
			sum := rss[rk]
			sum.Active += r.Active
			sum.Inactive += r.Inactive
			rss[rk] = sum
		}
	}
	out := make([]prometheus.Metric, 0, 7*len(ports)+2*len(rss))
	labels := make(map[proxier.ServicePortName][]*dto.LabelPair, len(ports))
	for n, t := range ports {
		// One set of label pairs for the port's seven series, kept from
		// the last read: building label pairs was most of a scrape's
		// own cost at 10k Services.
		l := c.labels[n]
		if l == nil {
			l = labelPairs("namespace", n.Namespace, "port", n.Port, "service", n.Name)
		}
		labels[n] = l
		out = append(out,
			sample{descActive, l, float64(t.active), false},
			sample{descInactive, l, float64(t.inactive), false},
			sample{descConnections, l, float64(t.connections), true},
			sample{descPacketsIn, l, float64(t.packetsIn), true},
			sample{descPacketsOut, l, float64(t.packetsOut), true},
			sample{descBytesIn, l, float64(t.bytesIn), true},
			sample{descBytesOut, l, float64(t.bytesOut), true})
	}
	c.labels = labels
	for k, conns := range rss {
		l := labelPairs("namespace", k.port.Namespace, "port", k.port.Port, "real_server", k.rs.String(), "service", k.port.Name)
		out = append(out, sample{descRSActive, l, float64(conns.Active), false}, sample{descRSInactive, l, float64(conns.Inactive), false})
	}
	c.cached, c.at, c.took = out, now, time.Since(start)
}
