package conntrack

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nftvs/nftvs/internal/netnstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Benchmarks against the real kernel in a throwaway netns holding a
// realistic table: 5,000 Services of 20 endpoints each (all on target port
// 8080: the worst case for a kernel-side port filter), one TCP entry per
// client, a fifth of them through the Service's NodePort (masqueraded) and
// the rest through its ClusterIP; one "hot" Service carries a tenth of all
// entries, the others share the rest evenly. Each Clean names both
// frontends of the Service:
//
//	cold-10: 10 of an ordinary Service's 20 endpoints go
//	hot-10:  10 of the hot Service's 20 endpoints go (N/20 entries)
//	hot-1:   one endpoint of the hot Service goes (N/200 entries)
//
// impl=nftvs is this package (kernel-side filter on, which for hot-1
// narrows the dump to the endpoint's entries; nftvs-nofilter without it),
// impl=netlink-lib vishvananda/netlink's ConntrackDeleteFilters with the
// same matching. dump-only is an unfiltered Clean that matches nothing
// (dump and parse alone), kernel-walk a dump the kernel filters down to
// nothing (its walk alone, nothing copied). Deleted entries are
// re-created, untimed, after every iteration.
const (
	benchServices  = 5000
	benchEndpoints = 20
	benchNodeIP    = "172.18.0.2"
)

var benchSizes = []int{100_000, 500_000}

func benchClusterIP(svc int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(svc >> 8), byte(svc)}), 80)
}

func benchNodePort(svc int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(benchNodeIP), uint16(30000+svc))
}

func benchEndpoint(svc, ep int) netip.AddrPort {
	i := svc*benchEndpoints + ep
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(128 + i>>16), byte(i >> 8), byte(i)}), 8080)
}

// benchFlow is entry k of a table of n: the first n/10 go to the hot
// Service 0, the rest round-robin over Services 1..4999.
func benchFlow(k, n int) ctFlow {
	var svc, ep int
	if hot := n / 10; k < hot {
		svc, ep = 0, k%benchEndpoints
	} else {
		r := k - hot
		svc = 1 + r%(benchServices-1)
		ep = (r / (benchServices - 1)) % benchEndpoints
	}
	client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, byte(64 + k>>16), byte(k >> 8), byte(k)}), uint16(10000+k%50000))
	f := ctFlow{Flow: Flow{Protocol: ProtocolTCP, OrigSrc: client, OrigDst: benchClusterIP(svc), ReplySrc: benchEndpoint(svc, ep)}}
	if k%5 == 0 {
		f.OrigDst = benchNodePort(svc)
		f.ReplyDst = netip.AddrPortFrom(netip.MustParseAddr(benchNodeIP), uint16(1024+k%60000))
	}
	return f
}

func benchStale(svc, endpoints int) []Stale {
	out := make([]Stale, endpoints)
	for ep := range endpoints {
		out[ep] = Stale{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{benchClusterIP(svc), benchNodePort(svc)}, Endpoint: benchEndpoint(svc, ep)}
	}
	return out
}

func sysctl(name string) string {
	v, err := os.ReadFile("/proc/sys/net/netfilter/" + name)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(v))
}

// libFilter is this package's matching behind vishvananda/netlink's filter
// interface, so the comparison measures the library's plumbing (dump,
// parse, one delete round trip per entry), not a different match.
type libFilter struct{ ix *index }

func (f libFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool {
	dst, _ := netip.AddrFromSlice(fl.Forward.DstIP)
	src, _ := netip.AddrFromSlice(fl.Reverse.SrcIP)
	return f.ix.match(fl.Forward.Protocol, netip.AddrPortFrom(dst.Unmap(), fl.Forward.DstPort), netip.AddrPortFrom(src.Unmap(), fl.Reverse.SrcPort))
}

func BenchmarkKernelClean(b *testing.B) {
	netnstest.RequireRoot(b)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("entries=%dk", n/1000), func(b *testing.B) {
			netnstest.RaiseConntrackMax(b, n+n/4)
			ns := netnstest.New(b)
			flows := make([]ctFlow, n)
			for k := range flows {
				flows[k] = benchFlow(k, n)
			}
			start := time.Now()
			createFlows(b, ns, flows)
			b.Logf("created %d entries in %v; nf_conntrack_buckets=%s nf_conntrack_max=%s, entries in the initial netns=%s",
				n, time.Since(start).Round(time.Millisecond), sysctl("nf_conntrack_buckets"), sysctl("nf_conntrack_max"), sysctl("nf_conntrack_count"))
			filtered := newKernelCleaner(b, ns)
			unfiltered, err := New(WithNetNS(ns.FD()), WithKernelFilter(false))
			if err != nil {
				b.Fatal(err)
			}
			lib, err := netlink.NewHandleAt(ns.Handle, unix.NETLINK_NETFILTER)
			if err != nil {
				b.Fatal(err)
			}
			defer lib.Close()

			for _, sc := range []struct {
				name           string
				svc, endpoints int
				nofilter       bool
			}{{"cold-10", 1, 10, false}, {"hot-10", 0, 10, false}, {"hot-1", 0, 1, true}} {
				stale := benchStale(sc.svc, sc.endpoints)
				ix, _ := newIndex(stale)
				var doomed []ctFlow
				for _, f := range flows {
					if ix.match(protoTCP, f.OrigDst, f.ReplySrc) {
						doomed = append(doomed, f)
					}
				}
				impls := []struct {
					name string
					c    *Cleaner
				}{{"nftvs", filtered}}
				if sc.nofilter {
					impls = append(impls, struct {
						name string
						c    *Cleaner
					}{"nftvs-nofilter", unfiltered})
				}
				for _, impl := range impls {
					b.Run("case="+sc.name+"/impl="+impl.name, func(b *testing.B) {
						var dump, del time.Duration
						var scanned int
						for range b.N {
							res, err := impl.c.Clean(stale)
							if err != nil || res.Deleted != len(doomed) {
								b.Fatalf("Clean: %+v, %v; want %d deleted", res, err, len(doomed))
							}
							dump += res.DumpDuration
							del += res.Duration - res.DumpDuration
							scanned = res.Scanned
							b.StopTimer()
							createFlows(b, ns, doomed)
							b.StartTimer()
						}
						b.ReportMetric(float64(scanned), "scanned/op")
						b.ReportMetric(float64(len(doomed)), "deleted/op")
						b.ReportMetric(float64(dump.Microseconds())/1000/float64(b.N), "dump-ms/op")
						b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "delete-ms/op")
					})
				}
				if sc.nofilter {
					continue // the library's cost does not depend on the case
				}
				b.Run("case="+sc.name+"/impl=netlink-lib", func(b *testing.B) {
					for range b.N {
						deleted, err := lib.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, libFilter{ix})
						if err != nil || int(deleted) != len(doomed) {
							b.Fatalf("ConntrackDeleteFilters: %d, %v; want %d deleted", deleted, err, len(doomed))
						}
						b.StopTimer()
						createFlows(b, ns, doomed)
						b.StartTimer()
					}
					b.ReportMetric(float64(len(doomed)), "deleted/op")
				})
			}
			b.Run("dump-only", func(b *testing.B) {
				nothing := []Stale{{Protocol: ProtocolTCP, Frontends: []netip.AddrPort{ap("10.95.0.1:80")}}}
				for range b.N {
					res, err := unfiltered.Clean(nothing)
					if err != nil || res.Scanned != n || res.Deleted != 0 {
						b.Fatalf("Clean: %+v, %v", res, err)
					}
				}
				b.ReportMetric(float64(n), "scanned/op")
			})
			b.Run("kernel-walk", func(b *testing.B) {
				// CTA_MARK/CTA_MARK_MASK that no entry carries: the kernel
				// walks every bucket but copies nothing out.
				var attrs []byte
				attrs = appendAttr(attrs, ctaMark, binary.BigEndian.AppendUint32(nil, 0x5eed5eed))
				attrs = appendAttr(attrs, ctaMarkMask, binary.BigEndian.AppendUint32(nil, 0xffffffff))
				for range b.N {
					s, err := openSocket(ns.FD(), defaultTimeout)
					if err != nil {
						b.Fatal(err)
					}
					got, err := s.dump(unix.AF_INET, attrs, func(*entry) {})
					s.close()
					if err != nil || got != 0 {
						b.Fatalf("filtered dump: %d entries, %v", got, err)
					}
				}
			})
		})
	}
}

// BenchmarkParseEntry is the Go side's cost per dumped entry.
func BenchmarkParseEntry(b *testing.B) {
	var p []byte
	p = append(p, 2, 0, 0, 0)
	p = appendTuple(p, ctaTupleOrig, ProtocolTCP, ap("192.0.2.1:1000"), ap("10.96.0.10:80"))
	p = appendTuple(p, ctaTupleReply, ProtocolTCP, ap("10.244.1.5:8080"), ap("192.0.2.1:1000"))
	p = appendAttr(p, ctaID, []byte{1, 2, 3, 4})
	ix, _ := newIndex(benchStale(1, 10))
	b.ReportAllocs()
	b.ResetTimer()
	var e entry
	for range b.N {
		if err := parseEntry(&e, p); err != nil {
			b.Fatal(err)
		}
		if ix.match(e.proto, e.origDst, e.replySrc) {
			b.Fatal("matched")
		}
	}
}
