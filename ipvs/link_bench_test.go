package ipvs

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nftvs/nftvs/internal/netnstest"
)

// BenchmarkKernelAddresses: kube-ipvs0 taking N Service addresses from
// none, as a first sync does, on the host kernel in a throwaway netns
// (addresses need no IPVS; a bridge stands in for the dummy). The kernel walks the link's address list on
// every add, so the cost per address grows with N: ns/addr at 1k, 10k and
// 30k shows that term. Deleting them all is timed too (the same walk).
// Adds and deletes go in trains of BatchWrites per sendmsg (batch), or
// one round trip each, side by side.
func BenchmarkKernelAddresses(b *testing.B) {
	netnstest.RequireRoot(b)
	for _, n := range []int{1000, 10000, 30000} {
		for _, mode := range []string{"batched", "one-by-one"} {
			b.Run(fmt.Sprintf("N=%d/%s", n, mode), func(b *testing.B) {
				ns := netnstest.New(b)
				a, err := NewNetlinkAddresses("/run/netns/" + ns.Name)
				if err != nil {
					b.Fatal(err)
				}
				defer a.Close()
				a.oneByOne = mode == "one-by-one"
				// A bridge stands in for the dummy link: the host kernel of
				// `make test` may lack the dummy module, and the address list
				// is the same on any link.
				ns.Run(b, "ip", "link", "add", DummyName, "type", "bridge")
				want := make([]netip.Addr, n)
				for i := range want {
					want[i] = netip.AddrFrom4([4]byte{10, 96 + byte(i>>16), byte(i >> 8), byte(i)})
				}
				var add, del time.Duration
				for range b.N {
					start := time.Now()
					if added, _, err := a.SyncAddresses(DummyName, want); err != nil || len(added) != n {
						b.Fatalf("added %d of %d: %v", len(added), n, err)
					}
					add += time.Since(start)
					start = time.Now()
					if _, removed, err := a.SyncAddresses(DummyName, nil); err != nil || len(removed) != n {
						b.Fatalf("removed %d of %d: %v", len(removed), n, err)
					}
					del += time.Since(start)
				}
				b.ReportMetric(float64(add.Nanoseconds())/float64(b.N*n), "add-ns/addr")
				b.ReportMetric(float64(del.Nanoseconds())/float64(b.N*n), "del-ns/addr")
			})
		}
	}
}

// BenchmarkKernelAddressDump reads a namespace whose kube-ipvs0 holds N
// addresses (a node with N Services), with nftvs's own dump and with the
// netlink package's AddrList it replaced, side by side: the garbage of
// every read (B/op), which every periodic sync's address check pays.
func BenchmarkKernelAddressDump(b *testing.B) {
	netnstest.RequireRoot(b)
	for _, n := range []int{1000, 10000} {
		ns := netnstest.New(b)
		a, err := NewNetlinkAddresses("/run/netns/" + ns.Name)
		if err != nil {
			b.Fatal(err)
		}
		ns.Run(b, "ip", "link", "add", DummyName, "type", "bridge")
		want := make([]netip.Addr, n)
		for i := range want {
			want[i] = netip.AddrFrom4([4]byte{10, 96 + byte(i>>16), byte(i >> 8), byte(i)})
		}
		if _, _, err := a.SyncAddresses(DummyName, want); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("N=%d/nftvs", n), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if got, err := a.addrList(); err != nil || len(got) < n {
					b.Fatalf("%d addresses: %v", len(got), err)
				}
			}
		})
		b.Run(fmt.Sprintf("N=%d/AddrList", n), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if got, err := a.h.AddrList(nil, netlink.FAMILY_ALL); err != nil || len(got) < n {
					b.Fatalf("%d addresses: %v", len(got), err)
				}
			}
		})
		a.Close()
	}
}
