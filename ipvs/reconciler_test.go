package ipvs

import (
	"errors"
	"fmt"
	"github.com/nftvs/nftvs/internal/l4"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// Tiny builders, so a case reads like `ipvsadm -Ln`.

func key(proto Protocol, addrPort string) VSKey {
	ap := netip.MustParseAddrPort(addrPort)
	return VSKey{Address: ap.Addr(), Protocol: proto, Port: ap.Port()}
}

func fwmark(mark uint32, ipv6 bool) VSKey { return VSKey{FWMark: mark, IPv6: ipv6} }

func rs(addrPort string, weight int) RealServer {
	ap := netip.MustParseAddrPort(addrPort)
	return RealServer{Address: ap.Addr(), Port: ap.Port(), Weight: weight}
}

func svc(k VSKey, scheduler string, rss ...RealServer) Service {
	return Service{VirtualServer: VirtualServer{VSKey: k, Scheduler: scheduler}, RealServers: rss}
}

func sticky(s Service, timeout uint32) Service {
	s.Flags |= FlagPersistent
	s.Timeout = timeout
	return s
}

func dedent(s string) string {
	var out []string
	for _, l := range strings.Split(strings.Trim(s, "\n"), "\n") {
		out = append(out, strings.TrimPrefix(strings.TrimLeft(l, "\t"), "|"))
	}
	return strings.Join(out, "\n") + "\n"
}

func removedStrings(rs []RemovedRealServer) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}

var (
	web  = key(TCP, "10.96.0.10:80")
	dns  = key(UDP, "10.96.0.53:53")
	sctp = key(SCTP, "10.96.0.9:9")
	web6 = key(TCP, "[fd00:96::10]:80")
)

func TestReconcilerApply(t *testing.T) {
	base := []Service{
		svc(web, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 1)),
		svc(dns, "rr", rs("10.0.1.1:53", 1)),
	}
	for _, tc := range []struct {
		name        string
		initial     []Service
		upserts     []Service
		deletes     []VSKey
		wantWrites  WriteCounts
		wantRemoved []string
		wantErr     string
		want        string      // the fake kernel, as ipvsadm -Ln
		wantAgain   WriteCounts // writes of the same Apply once more
	}{{
		name:       "create",
		upserts:    base,
		wantWrites: WriteCounts{AddVirtualServer: 2, AddRealServer: 3},
		want: `
			|TCP  10.96.0.10:80 rr
			|  -> 10.0.1.1:8080                Masq 1
			|  -> 10.0.1.2:8080                Masq 1
			|UDP  10.96.0.53:53 rr
			|  -> 10.0.1.1:53                  Masq 1`,
	}, {
		name:       "nothing changed: no writes",
		initial:    base,
		upserts:    base,
		wantWrites: WriteCounts{},
	}, {
		name:       "scheduler changed in place, real servers untouched",
		initial:    base,
		upserts:    []Service{svc(web, "wrr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 1))},
		wantWrites: WriteCounts{UpdateVirtualServer: 1},
		want: `
			|TCP  10.96.0.10:80 wrr
			|  -> 10.0.1.1:8080                Masq 1
			|  -> 10.0.1.2:8080                Masq 1
			|UDP  10.96.0.53:53 rr
			|  -> 10.0.1.1:53                  Masq 1`,
	}, {
		name:       "session affinity set in place",
		initial:    base,
		upserts:    []Service{sticky(svc(dns, "rr", rs("10.0.1.1:53", 1)), 10800)},
		wantWrites: WriteCounts{UpdateVirtualServer: 1},
		want: `
			|TCP  10.96.0.10:80 rr
			|  -> 10.0.1.1:8080                Masq 1
			|  -> 10.0.1.2:8080                Masq 1
			|UDP  10.96.0.53:53 rr persistent timeout 10800
			|  -> 10.0.1.1:53                  Masq 1`,
	}, {
		name:        "real servers added, removed, re-weighted",
		initial:     base,
		upserts:     []Service{svc(web, "rr", rs("10.0.1.2:8080", 0), rs("10.0.1.3:8080", 1))},
		wantWrites:  WriteCounts{AddRealServer: 1, UpdateRealServer: 1, DeleteRealServer: 1},
		wantRemoved: []string{"TCP  10.96.0.10:80 -> 10.0.1.1:8080"},
		want: `
			|TCP  10.96.0.10:80 rr
			|  -> 10.0.1.2:8080                Masq 0
			|  -> 10.0.1.3:8080                Masq 1
			|UDP  10.96.0.53:53 rr
			|  -> 10.0.1.1:53                  Masq 1`,
	}, {
		name:        "delete reports the real servers that went with it",
		initial:     base,
		deletes:     []VSKey{web},
		wantWrites:  WriteCounts{DeleteVirtualServer: 1},
		wantRemoved: []string{"TCP  10.96.0.10:80 -> 10.0.1.1:8080", "TCP  10.96.0.10:80 -> 10.0.1.2:8080"},
		want: `
			|UDP  10.96.0.53:53 rr
			|  -> 10.0.1.1:53                  Masq 1`,
	}, {
		name:       "delete of a virtual server never applied: no write",
		initial:    base,
		deletes:    []VSKey{key(TCP, "10.96.0.99:80"), fwmark(7, false)},
		wantWrites: WriteCounts{},
	}, {
		name:       "upsert wins over delete of the same key",
		initial:    base,
		upserts:    []Service{svc(dns, "rr", rs("10.0.1.1:53", 1))},
		deletes:    []VSKey{dns},
		wantWrites: WriteCounts{},
	}, {
		name: "IPv6, SCTP and fwmark",
		upserts: []Service{
			svc(web6, "mh", rs("[fd00:1::1]:8080", 1)),
			svc(sctp, "sh", rs("10.0.1.1:9", 1)),
			svc(fwmark(0x4001, true), "rr", rs("[fd00:1::1]:8080", 1)),
			svc(fwmark(0x4001, false), "rr", rs("10.0.1.1:8080", 1)),
		},
		wantWrites: WriteCounts{AddVirtualServer: 4, AddRealServer: 4},
		want: `
			|SCTP  10.96.0.9:9 sh
			|  -> 10.0.1.1:9                   Masq 1
			|FWM  16385 rr
			|  -> 10.0.1.1:8080                Masq 1
			|TCP  [fd00:96::10]:80 mh
			|  -> [fd00:1::1]:8080             Masq 1
			|FWM  16385 IPv6 rr
			|  -> [fd00:1::1]:8080             Masq 1`,
	}, {
		name: "invalid services are refused, the others applied",
		upserts: []Service{
			svc(key("ICMP", "10.96.0.1:1"), "rr"),
			svc(key(TCP, "10.96.0.2:80"), "rr", rs("[fd00::1]:80", 1)),
			svc(key(TCP, "10.96.0.3:80"), "rr", rs("10.0.0.1:80", -1)),
			svc(key(TCP, "10.96.0.4:80"), "rr", rs("10.0.0.1:80", 1), rs("10.0.0.1:80", 2)),
			svc(key(TCP, "10.96.0.5:80"), "rr", rs("10.0.0.1:80", 1)),
			svc(key(TCP, "10.96.0.5:80"), "wrr", rs("10.0.0.2:80", 1)),
		},
		wantWrites: WriteCounts{AddVirtualServer: 1, AddRealServer: 1},
		wantErr:    `unknown protocol "ICMP"|address family differs|weight -1 out of range|listed twice|given twice`,
		want: `
			|TCP  10.96.0.5:80 rr
			|  -> 10.0.0.1:80                  Masq 1`,
	}, {
		name:       "a scheduler the kernel lacks fails that virtual server only",
		upserts:    []Service{svc(web, "nope", rs("10.0.1.1:8080", 1)), svc(dns, "rr")},
		wantWrites: WriteCounts{AddVirtualServer: 2},
		wantErr:    `add virtual server TCP  10.96.0.10:80 nope: no such file or directory`,
		wantAgain:  WriteCounts{AddVirtualServer: 1},
		want: `
			|UDP  10.96.0.53:53 rr`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			f.MissingSchedulers = map[string]bool{"nope": true}
			r := NewReconciler(f, nil)
			if _, err := r.Apply(tc.initial, nil); err != nil {
				t.Fatalf("initial apply: %v", err)
			}
			before := f.String()
			f.ResetCounts()

			res, err := r.Apply(tc.upserts, tc.deletes)
			checkErr(t, err, tc.wantErr)
			if res.Writes != tc.wantWrites {
				t.Errorf("writes = %+v, want %+v", res.Writes, tc.wantWrites)
			}
			if res.Writes != f.Writes {
				t.Errorf("result says %+v writes, the kernel saw %+v", res.Writes, f.Writes)
			}
			if f.Reads != 0 {
				t.Errorf("Apply read the kernel %d times, want 0", f.Reads)
			}
			if got := fmt.Sprint(removedStrings(res.Removed)); got != fmt.Sprint(tc.wantRemoved) {
				t.Errorf("removed = %v, want %v", got, tc.wantRemoved)
			}
			want := before
			if tc.want != "" {
				want = dedent(tc.want)
			}
			if got := f.String(); got != want {
				t.Errorf("kernel:\n%s\nwant:\n%s", got, want)
			}
			checkCacheTruthful(t, r, f)

			// The same again sends nothing, but what failed.
			f.ResetCounts()
			if res, _ = r.Apply(tc.upserts, tc.deletes); res.Writes != tc.wantAgain {
				t.Errorf("second apply sent %+v, want %+v", res.Writes, tc.wantAgain)
			}
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	for _, w := range strings.Split(want, "|") {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

// checkCacheTruthful compares what the Reconciler believes with the kernel.
func checkCacheTruthful(t *testing.T, r *Reconciler, f *Fake) {
	t.Helper()
	var kernel []Service
	for _, s := range f.Services() {
		if _, cached := lookup(r, s.VSKey); cached || !r.Excluded(s.VSKey) {
			kernel = append(kernel, s)
		}
	}
	if got, want := Format(cached(r)), Format(kernel); got != want {
		t.Errorf("cache:\n%s\nkernel (less excluded):\n%s", got, want)
	}
}

func TestReconcilerPartialFailureAndRetry(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	desired := []Service{
		svc(web, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 1), rs("10.0.1.3:8080", 1)),
		svc(dns, "rr", rs("10.0.1.1:53", 1)),
		svc(sctp, "rr", rs("10.0.1.1:9", 1)),
	}
	// The kernel refuses one real server of web and the whole of dns.
	f.Inject = func(op Op, k VSKey, r *RealServer) error {
		switch {
		case op == OpAddRealServer && k == web && r.Address == netip.MustParseAddr("10.0.1.2"):
			return syscall.ENOMEM
		case op == OpAddVirtualServer && k == dns:
			return syscall.EPERM
		}
		return nil
	}
	res, err := r.Apply(desired, nil)
	checkErr(t, err, "add real server 10.0.1.2:8080 to TCP  10.96.0.10:80: cannot allocate memory|add virtual server UDP  10.96.0.53:53 rr: operation not permitted")
	if want := (WriteCounts{AddVirtualServer: 3, AddRealServer: 4}); res.Writes != want {
		t.Errorf("writes = %+v, want %+v", res.Writes, want)
	}
	checkCacheTruthful(t, r, f)
	if _, ok := lookup(r, dns); ok {
		t.Errorf("dns is in the cache but not in the kernel")
	}

	// The retry redoes only what failed.
	f.Inject = nil
	f.ResetCounts()
	res, err = r.Apply(desired, nil)
	checkErr(t, err, "")
	if want := (WriteCounts{AddVirtualServer: 1, AddRealServer: 2}); res.Writes != want {
		t.Errorf("retry writes = %+v, want %+v", res.Writes, want)
	}
	checkCacheTruthful(t, r, f)

	// Failed deletes and updates stay to be redone; the rest proceeds.
	f.Inject = func(op Op, k VSKey, r *RealServer) error {
		switch op {
		case OpDeleteRealServer:
			return syscall.EBUSY
		case OpUpdateVirtualServer:
			return syscall.EINVAL
		case OpDeleteVirtualServer:
			return syscall.EAGAIN
		}
		return nil
	}
	next := []Service{
		svc(web, "wrr", rs("10.0.1.1:8080", 5), rs("10.0.1.4:8080", 1)),
		svc(dns, "rr", rs("10.0.1.1:53", 1)),
	}
	f.ResetCounts()
	res, err = r.Apply(next, []VSKey{sctp})
	checkErr(t, err, "update virtual server TCP  10.96.0.10:80 wrr: invalid argument|delete real server 10.0.1.2:8080 from TCP  10.96.0.10:80: device or resource busy|delete virtual server SCTP  10.96.0.9:9: resource temporarily unavailable")
	if len(res.Removed) != 0 {
		t.Errorf("removed %v, want none (every delete failed)", res.Removed)
	}
	checkCacheTruthful(t, r, f)

	f.Inject = nil
	f.ResetCounts()
	res, err = r.Apply(next, []VSKey{sctp})
	checkErr(t, err, "")
	if want := (WriteCounts{UpdateVirtualServer: 1, DeleteRealServer: 2, DeleteVirtualServer: 1}); res.Writes != want {
		t.Errorf("retry writes = %+v, want %+v", res.Writes, want)
	}
	if got, want := fmt.Sprint(removedStrings(res.Removed)), "[SCTP  10.96.0.9:9 -> 10.0.1.1:9 TCP  10.96.0.10:80 -> 10.0.1.2:8080 TCP  10.96.0.10:80 -> 10.0.1.3:8080]"; got != want {
		t.Errorf("removed = %s, want %s", got, want)
	}
	checkCacheTruthful(t, r, f)
	f.ResetCounts()
	if res, _ := r.Apply(next, []VSKey{sctp}); res.Writes.Total() != 0 {
		t.Errorf("third apply sent %+v, want nothing", res.Writes)
	}
}

func TestReconcilerResync(t *testing.T) {
	f := NewFake()
	exclude := []netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("2001:db8::/32"),
	}
	// What others (and a previous nftvs) left in the kernel.
	other := []Service{
		svc(key(TCP, "192.0.2.10:80"), "wlc", rs("192.0.2.100:80", 3)),       // excluded: kept
		svc(key(UDP, "[2001:db8::1]:53"), "rr", rs("[2001:db8::100]:53", 1)), // excluded: kept
		svc(key(TCP, "10.96.7.7:80"), "rr", rs("10.0.9.9:80", 1)),            // stale: deleted
		svc(fwmark(0x99, false), "rr", rs("10.0.9.9:80", 1)),                 // fwmark: never excluded
		svc(key(TCP, "[fd00:96::7]:443"), "rr"),                              // stale IPv6
		svc(web, "lc", rs("10.0.1.1:8080", 7), rs("10.0.1.9:8080", 1)),       // drifted
		svc(key(TCP, "192.0.2.20:443"), "rr", rs("192.0.2.200:443", 1)),      // excluded but desired
	}
	for _, s := range other {
		if err := f.AddVirtualServer(s.VirtualServer); err != nil {
			t.Fatal(err)
		}
		for _, x := range s.RealServers {
			if err := f.AddRealServer(s.VSKey, x); err != nil {
				t.Fatal(err)
			}
		}
	}
	desired := []Service{
		svc(web, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 1)),
		svc(dns, "rr", rs("10.0.1.1:53", 1)),
		svc(key(TCP, "192.0.2.20:443"), "rr", rs("192.0.2.201:443", 1)),
	}
	r := NewReconciler(f, exclude)
	f.ResetCounts()
	res, err := r.Resync(desired)
	checkErr(t, err, "")
	want := dedent(`
		|TCP  10.96.0.10:80 rr
		|  -> 10.0.1.1:8080                Masq 1
		|  -> 10.0.1.2:8080                Masq 1
		|UDP  10.96.0.53:53 rr
		|  -> 10.0.1.1:53                  Masq 1
		|TCP  192.0.2.10:80 wlc
		|  -> 192.0.2.100:80               Masq 3
		|TCP  192.0.2.20:443 rr
		|  -> 192.0.2.201:443              Masq 1
		|UDP  [2001:db8::1]:53 rr
		|  -> [2001:db8::100]:53           Masq 1`)
	if got := f.String(); got != want {
		t.Errorf("kernel:\n%s\nwant:\n%s", got, want)
	}
	wantWrites := WriteCounts{
		AddVirtualServer:    1, // dns
		UpdateVirtualServer: 1, // web lc -> rr
		DeleteVirtualServer: 3, // 10.96.7.7:80, fwmark 0x99, [fd00:96::7]:443
		AddRealServer:       3, // web 10.0.1.2, dns, 192.0.2.201
		UpdateRealServer:    1, // web 10.0.1.1 weight 7 -> 1
		DeleteRealServer:    2, // web 10.0.1.9, 192.0.2.200
	}
	if res.Writes != wantWrites {
		t.Errorf("writes = %+v, want %+v", res.Writes, wantWrites)
	}
	wantRemoved := "[TCP  10.96.0.10:80 -> 10.0.1.9:8080 TCP  10.96.7.7:80 -> 10.0.9.9:80 TCP  192.0.2.20:443 -> 192.0.2.200:443 FWM  153 -> 10.0.9.9:80]"
	if got := fmt.Sprint(removedStrings(res.Removed)); got != wantRemoved {
		t.Errorf("removed = %s\nwant %s", got, wantRemoved)
	}
	// One dump of the virtual servers and one read of every real server:
	// no dump per virtual server.
	if want := 2; f.Reads != want {
		t.Errorf("reads = %d, want %d", f.Reads, want)
	}

	// Again: reads, but no writes (the kernel's hashed flag is masked).
	f.ResetCounts()
	res, err = r.Resync(desired)
	checkErr(t, err, "")
	if res.Writes.Total() != 0 {
		t.Errorf("second resync sent %+v, want nothing", res.Writes)
	}
	// And Apply after Resync trusts the rebuilt cache.
	f.ResetCounts()
	if res, _ := r.Apply(desired, nil); res.Writes.Total() != 0 || f.Reads != 0 {
		t.Errorf("apply after resync sent %+v with %d reads, want nothing", res.Writes, f.Reads)
	}

	// Drift behind the Reconciler's back: a virtual server deleted, a real
	// server re-weighted, one added. Apply trusts its cache; Resync
	// repairs.
	_ = f.DeleteVirtualServer(dns)
	_ = f.UpdateRealServer(web, rs("10.0.1.2:8080", 9))
	_ = f.AddRealServer(web, rs("10.0.1.5:8080", 1))
	f.ResetCounts()
	res, err = r.Resync(desired)
	checkErr(t, err, "")
	if want := (WriteCounts{AddVirtualServer: 1, AddRealServer: 1, UpdateRealServer: 1, DeleteRealServer: 1}); res.Writes != want {
		t.Errorf("repair writes = %+v, want %+v", res.Writes, want)
	}
	checkCacheTruthful(t, r, f)
}

// Resync reads every real server at once; when that read fails, or misses
// a virtual server (an IPv6 fwmark one without real servers, which
// /proc/net/ip_vs cannot tell from the IPv4 one), it dumps those one by
// one, and the result is the same.
func TestReconcilerResyncBulkReadFallsBack(t *testing.T) {
	desired := []Service{
		svc(web, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 0)),
		svc(dns, "rr", rs("10.0.1.1:53", 1)),
		svc(fwmark(0x4001, false), "rr", rs("10.0.1.1:8080", 1)),
		svc(fwmark(0x4001, true), "rr"),
	}
	for _, tc := range []struct {
		name      string
		failBulk  bool
		wantReads int
	}{
		{"bulk read", false, 1 + 1 + 1}, // virtual servers, every real server, the IPv6 fwmark one
		{"bulk read fails", true, 1 + 1 + 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			if _, err := NewReconciler(f, nil).Resync(desired); err != nil {
				t.Fatal(err)
			}
			if tc.failBulk {
				f.Inject = func(op Op, _ VSKey, _ *RealServer) error {
					if op == OpGetAllRealServers {
						return syscall.ENOENT
					}
					return nil
				}
			}
			// A restarted proxier: a new Reconciler over the same kernel.
			r := NewReconciler(f, nil)
			f.ResetCounts()
			res, err := r.Resync(desired)
			checkErr(t, err, "")
			if res.Writes.Total() != 0 {
				t.Errorf("restart wrote %+v, want nothing", res.Writes)
			}
			if f.Reads != tc.wantReads {
				t.Errorf("reads = %d, want %d", f.Reads, tc.wantReads)
			}
			checkCacheTruthful(t, r, f)
		})
	}
}

func TestReconcilerInvalidServiceIsNotDeleted(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	good := svc(web, "rr", rs("10.0.1.1:8080", 1))
	if _, err := r.Apply([]Service{good}, nil); err != nil {
		t.Fatal(err)
	}
	bad := svc(web, "rr", rs("10.0.1.1:8080", -5))
	f.ResetCounts()
	if _, err := r.Apply([]Service{bad}, []VSKey{web}); err == nil {
		t.Errorf("no error for a negative weight")
	}
	if _, err := r.Resync([]Service{bad}); err == nil {
		t.Errorf("no error for a negative weight")
	}
	if f.Writes.Total() != 0 || f.String() != Format([]Service{good}) {
		t.Errorf("an invalid Service changed the kernel (%+v):\n%s", f.Writes, f)
	}
}

func TestReconcilerResyncDumpFails(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	desired := []Service{svc(web, "rr", rs("10.0.1.1:8080", 1))}
	if _, err := r.Apply(desired, nil); err != nil {
		t.Fatal(err)
	}
	f.Inject = func(op Op, _ VSKey, _ *RealServer) error {
		if op == OpGetVirtualServers {
			return syscall.ENOBUFS
		}
		return nil
	}
	res, err := r.Resync(nil)
	checkErr(t, err, "resync: list virtual servers: no buffer space available")
	if res.Writes.Total() != 0 {
		t.Errorf("a resync without a dump wrote %+v", res.Writes)
	}
	if _, ok := lookup(r, web); !ok {
		t.Errorf("a failed dump emptied the cache")
	}

	// A real-server dump that fails leaves that virtual server to be
	// adopted: it is desired, so it is kept and synced through EEXIST.
	f.ResetCounts()
	failed := false
	f.Inject = func(op Op, _ VSKey, _ *RealServer) error {
		// The read of every real server fails, and so does the first
		// dump of the virtual server's own.
		if op == OpGetAllRealServers || (op == OpGetRealServers && !failed) {
			failed = failed || op == OpGetRealServers
			return syscall.EINTR
		}
		return nil
	}
	desired = []Service{svc(web, "rr", rs("10.0.1.1:8080", 2))}
	res, err = r.Resync(desired)
	checkErr(t, err, "resync: list real servers of TCP  10.96.0.10:80: interrupted system call")
	if got := f.String(); !strings.Contains(got, "10.0.1.1:8080                Masq 2") {
		t.Errorf("kernel:\n%s", got)
	}
	checkCacheTruthful(t, r, f)
}

func TestReconcilerAdoptsWhatTheKernelHas(t *testing.T) {
	// A restarted nftvs that Applies before any Resync finds its virtual
	// servers already there.
	f := NewFake()
	_ = f.AddVirtualServer(VirtualServer{VSKey: web, Scheduler: "rr"})
	_ = f.AddRealServer(web, rs("10.0.1.1:8080", 1))
	_ = f.AddRealServer(web, rs("10.0.1.7:8080", 1))
	r := NewReconciler(f, nil)
	f.ResetCounts()
	res, err := r.Apply([]Service{svc(web, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 1))}, nil)
	checkErr(t, err, "")
	want := WriteCounts{AddVirtualServer: 1, UpdateVirtualServer: 1, AddRealServer: 1, DeleteRealServer: 1}
	if res.Writes != want {
		t.Errorf("writes = %+v, want %+v", res.Writes, want)
	}
	checkCacheTruthful(t, r, f)
}

func TestReconcilerRecreatesVanishedVirtualServer(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	if _, err := r.Apply([]Service{svc(web, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.2:8080", 1))}, nil); err != nil {
		t.Fatal(err)
	}
	_ = f.DeleteVirtualServer(web) // behind its back
	f.ResetCounts()
	res, err := r.Apply([]Service{svc(web, "rr", rs("10.0.1.1:8080", 1), rs("10.0.1.3:8080", 1))}, nil)
	checkErr(t, err, "")
	if got, want := f.String(), dedent(`
		|TCP  10.96.0.10:80 rr
		|  -> 10.0.1.1:8080                Masq 1
		|  -> 10.0.1.3:8080                Masq 1`); got != want {
		t.Errorf("kernel:\n%s\nwant:\n%s", got, want)
	}
	if got, want := fmt.Sprint(removedStrings(res.Removed)), "[TCP  10.96.0.10:80 -> 10.0.1.2:8080]"; got != want {
		t.Errorf("removed = %s, want %s", got, want)
	}
	checkCacheTruthful(t, r, f)

	// A virtual server that keeps vanishing is an error, not a loop.
	f.Inject = func(op Op, _ VSKey, _ *RealServer) error {
		if op == OpAddRealServer {
			return syscall.ESRCH
		}
		return nil
	}
	_, err = r.Apply([]Service{svc(web, "rr", rs("10.0.1.4:8080", 1))}, nil)
	if !errors.Is(err, syscall.ESRCH) {
		t.Errorf("err = %v, want ESRCH", err)
	}
}

func TestVSKey(t *testing.T) {
	mapped := VSKey{Address: netip.MustParseAddr("::ffff:10.0.0.1"), Protocol: TCP, Port: 80}
	if got := mapped.Key(); got != key(TCP, "10.0.0.1:80") {
		t.Errorf("mapped key = %+v", got)
	}
	fw := VSKey{Address: netip.MustParseAddr("10.0.0.1"), Protocol: TCP, Port: 80, FWMark: 5}
	if got := fw.Key(); got != fwmark(5, false) {
		t.Errorf("fwmark key = %+v", got)
	}
	if got := (VirtualServer{VSKey: web, Flags: FlagPersistent | FlagHashed | FlagMHPort, Timeout: 30}).String(); got != "TCP  10.96.0.10:80 rr persistent|flag-2 timeout 30" {
		t.Errorf("String = %q", got)
	}
	if !(VirtualServer{VSKey: web, Scheduler: "rr", Flags: FlagHashed}).Equal(VirtualServer{VSKey: web}) {
		t.Errorf("hashed flag or default scheduler not ignored")
	}
	if p := Protocol("50"); p.Number() != 50 || l4.FromNumber(50) != p {
		t.Errorf("protocol numbers do not round-trip")
	}
	if SchedulerFlags("mh") != FlagMHPort || SchedulerFlags("rr") != 0 {
		t.Errorf("SchedulerFlags")
	}
}

func TestCounting(t *testing.T) {
	f := NewFake()
	c := NewCounting(f)
	r := NewReconciler(c, nil)
	res, err := r.Resync([]Service{svc(web, "rr", rs("10.0.1.1:8080", 1))})
	checkErr(t, err, "")
	// Two reads: the virtual servers, and every real server.
	if c.Writes() != res.Writes || c.Writes() != f.Writes || c.Reads() != 2 {
		t.Errorf("counting %+v/%d, result %+v, fake %+v", c.Writes(), c.Reads(), res.Writes, f.Writes)
	}
	c.Reset()
	if c.Writes().Total() != 0 || c.Reads() != 0 {
		t.Errorf("reset did not reset")
	}
}

// TestReconcilerRepair: virtual servers deleted (ipvsadm -D, -C) or
// changed (ipvsadm -E) behind the Reconciler's back come back from the
// cache, real servers and all, for one dump of the virtual servers and no
// real server read; strangers are left to Resync.
func TestReconcilerRepair(t *testing.T) {
	f := NewFake()
	c := NewCounting(f)
	r := NewReconciler(c, nil)
	a := svc(key(TCP, "10.96.0.10:80"), "rr", rs("10.244.1.1:8080", 1), rs("10.244.1.2:8080", 0))
	b := svc(key(UDP, "10.96.0.11:53"), "rr", rs("10.244.1.3:53", 1))
	if _, err := r.Apply([]Service{a, b}, nil); err != nil {
		t.Fatal(err)
	}
	want := f.String()
	c.Reset()
	if res, err := r.Repair(); err != nil || res.Writes.Total() != 0 || c.Reads() != 1 {
		t.Fatalf("idle repair: %v, writes %+v, reads %d; want none and one dump", err, res.Writes, c.Reads())
	}
	// ipvsadm -C, a stranger, and ipvsadm -E on what comes back.
	for _, s := range f.Services() {
		_ = f.DeleteVirtualServer(s.VSKey)
	}
	_ = f.AddVirtualServer(VirtualServer{VSKey: key(TCP, "10.99.0.1:1"), Scheduler: "rr"})
	c.Reset()
	if _, err := r.Repair(); err != nil {
		t.Fatal(err)
	}
	if reads := c.Reads(); reads != 1 {
		t.Errorf("%d reads, want the one dump of virtual servers", reads)
	}
	if got := f.String(); !strings.Contains(got, strings.TrimSpace(want)) || !strings.Contains(got, "10.99.0.1:1") {
		t.Errorf("after ipvsadm -C and a repair:\n%s\nwant ours back (and the stranger kept):\n%s", got, want)
	}
	_ = f.UpdateVirtualServer(VirtualServer{VSKey: key(TCP, "10.96.0.10:80"), Scheduler: "wlc"})
	if _, err := r.Repair(); err != nil {
		t.Fatal(err)
	}
	if got := f.String(); !strings.Contains(got, "TCP  10.96.0.10:80 rr") {
		t.Errorf("a changed scheduler was not restored:\n%s", got)
	}
}

// TestReconcilerKeepsForeignFWMarks: with OwnFWMarks, Resync deletes only
// the fwmark virtual servers in the proxier's mark space; keepalived's
// (mark 7 here) stay, real servers and all (issue 26).
func TestReconcilerKeepsForeignFWMarks(t *testing.T) {
	f := NewFake()
	for _, s := range []Service{
		svc(fwmark(7, false), "wrr", rs("10.0.9.7:80", 3)),
		svc(fwmark(0x75324000|1<<12, false), "rr", rs("10.0.9.9:80", 1)),
	} {
		if err := f.AddVirtualServer(s.VirtualServer); err != nil {
			t.Fatal(err)
		}
		for _, x := range s.RealServers {
			if err := f.AddRealServer(s.VSKey, x); err != nil {
				t.Fatal(err)
			}
		}
	}
	own := func(mark uint32) bool { return mark&0x4000 != 0 }
	res, err := NewReconciler(f, nil).OwnFWMarks(own).Resync(nil)
	checkErr(t, err, "")
	want := dedent(`
		|FWM  7 wrr
		|  -> 10.0.9.7:80                  Masq 3`)
	if got := f.String(); got != want {
		t.Errorf("kernel:\n%s\nwant:\n%s", got, want)
	}
	if res.Writes.DeleteVirtualServer != 1 {
		t.Errorf("writes %+v, want the own fwmark deleted only", res.Writes)
	}
}

// A large sync gives way between batches of YieldBatch virtual servers,
// and only between them: the Yielding hook sees how many virtual servers the
// kernel had been written for when it ran.
func TestReconcilerYieldsBetweenBatches(t *testing.T) {
	const n = 2*YieldBatch + 50
	var all []Service
	for i := range n {
		all = append(all, svc(key(TCP, fmt.Sprintf("10.96.%d.%d:80", i/250, i%250+1)), "rr", rs("10.244.0.2:8080", 1)))
	}
	f := NewFake()
	r := NewReconciler(f, nil)
	var seen []int
	r.Yielding(func() {
		vss, _ := f.GetVirtualServers()
		seen = append(seen, len(vss))
	})
	if _, err := r.Apply(all, nil); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != fmt.Sprint([]int{YieldBatch, 2 * YieldBatch}) {
		t.Errorf("Apply of %d: yielded with %v virtual servers written, want [%d %d]", n, seen, YieldBatch, 2*YieldBatch)
	}

	// Resync goes through the n virtual servers read (two yields), and
	// has nothing to write for them nor to delete: no more.
	seen = nil
	if _, err := r.Resync(all); err != nil {
		t.Fatal(err)
	}
	if len(seen) != (n-1)/YieldBatch {
		t.Errorf("Resync of %d: %d yields, want %d", n, len(seen), (n-1)/YieldBatch)
	}

	// Deleting them all is a batch loop too.
	seen = nil
	if _, err := r.Resync(nil); err != nil {
		t.Fatal(err)
	}
	if len(seen) != (2*n-1)/YieldBatch || seen[len(seen)-1] >= n {
		t.Errorf("Resync deleting %d: yielded with %v virtual servers left, want %d yields, the last with fewer than %d left", n, seen, (2*n-1)/YieldBatch, n)
	}
}

// lookup returns what r last applied for k, real servers sorted.
func lookup(r *Reconciler, k VSKey) (Service, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.cache[k.Key()]
	if !ok {
		return Service{}, false
	}
	return a.service(k.Key()), true
}

// cached returns everything r believes is in the kernel, sorted.
func cached(r *Reconciler) []Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Service, 0, len(r.cache))
	for k, a := range r.cache {
		out = append(out, a.service(k))
	}
	slices.SortFunc(out, func(a, b Service) int { return a.VSKey.Compare(b.VSKey) })
	return out
}

// TestReconcilerRepairFromAnEarlierRead: a periodic repair reads the
// kernel without the lock (Read) while Apply goes on, and compares after
// (RepairFrom). Drift the read saw is repaired; the virtual servers Apply
// wrote in between are judged by the cache, which is newer: one created
// since is not taken for lost (no second add), one deleted since is not
// brought back.
func TestReconcilerRepairFromAnEarlierRead(t *testing.T) {
	f := NewFake()
	c := NewCounting(f)
	r := NewReconciler(c, nil)
	a := svc(key(TCP, "10.96.0.10:80"), "rr", rs("10.244.1.1:8080", 1))
	b := svc(key(TCP, "10.96.0.11:80"), "rr", rs("10.244.1.2:8080", 1))
	if _, err := r.Apply([]Service{a, b}, nil); err != nil {
		t.Fatal(err)
	}
	_ = f.DeleteVirtualServer(b.VSKey) // drift, before the read
	snap, err := r.Read(false)
	if err != nil {
		t.Fatal(err)
	}
	// Changes applied between the read and the compare.
	n := svc(key(TCP, "10.96.0.12:80"), "rr", rs("10.244.1.3:8080", 1))
	if _, err := r.Apply([]Service{n}, []VSKey{a.VSKey}); err != nil {
		t.Fatal(err)
	}
	c.Reset()
	res, err := r.RepairFrom(snap)
	if err != nil {
		t.Fatal(err)
	}
	want := WriteCounts{AddVirtualServer: 1, AddRealServer: 1} // b, back with its real server
	if res.Writes != want || c.Writes() != want {
		t.Errorf("repair from the earlier read wrote %+v (counted %+v), want only b back: %+v", res.Writes, c.Writes(), want)
	}
	got := f.String()
	for _, s := range []string{"10.96.0.11:80", "10.244.1.2:8080", "10.96.0.12:80"} {
		if !strings.Contains(got, s) {
			t.Errorf("after the repair IPVS lacks %s:\n%s", s, got)
		}
	}
	if strings.Contains(got, "10.96.0.10:80") {
		t.Errorf("the virtual server deleted after the read came back:\n%s", got)
	}
	checkCacheTruthful(t, r, f)

	// A newer read supersedes an older one: its writes since are unknown.
	old, _ := r.Read(false)
	if _, err := r.Read(false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RepairFrom(old); !errors.Is(err, ErrSnapshotSuperseded) {
		t.Errorf("repair from a superseded read: %v, want ErrSnapshotSuperseded", err)
	}
}

// TestReconcilerResyncFromAnEarlierRead: the same for the resync, which
// also reads every real server and deletes what nobody wants. A stranger
// the read saw is deleted; a real server Apply removed since the read is
// not removed again (nor reported removed twice, which would clean its
// flows twice), and a virtual server Apply deleted since is not deleted
// again.
func TestReconcilerResyncFromAnEarlierRead(t *testing.T) {
	f := NewFake()
	c := NewCounting(f)
	r := NewReconciler(c, nil)
	a := svc(key(TCP, "10.96.0.10:80"), "rr", rs("10.244.1.1:8080", 1), rs("10.244.1.2:8080", 1))
	d := svc(key(TCP, "10.96.0.13:80"), "rr", rs("10.244.1.4:8080", 1))
	if _, err := r.Apply([]Service{a, d}, nil); err != nil {
		t.Fatal(err)
	}
	_ = f.AddVirtualServer(VirtualServer{VSKey: key(TCP, "10.99.0.1:1"), Scheduler: "rr"}) // a stranger
	snap, err := r.Read(true)
	if err != nil {
		t.Fatal(err)
	}
	a2 := svc(a.VSKey, "rr", rs("10.244.1.1:8080", 1))
	if _, err := r.Apply([]Service{a2}, []VSKey{d.VSKey}); err != nil {
		t.Fatal(err)
	}
	c.Reset()
	res, err := r.ResyncFrom([]Service{a2}, snap)
	if err != nil {
		t.Fatal(err)
	}
	want := WriteCounts{DeleteVirtualServer: 1} // the stranger
	if res.Writes != want || c.Writes() != want {
		t.Errorf("resync from the earlier read wrote %+v (counted %+v), want only the stranger deleted: %+v", res.Writes, c.Writes(), want)
	}
	if len(res.Removed) != 0 {
		t.Errorf("resync reported removed real servers %v; they were removed (and reported) by Apply", removedStrings(res.Removed))
	}
	if got := f.String(); strings.Contains(got, "10.99.0.1:1") || strings.Contains(got, "10.96.0.13:80") || strings.Contains(got, "10.244.1.2:8080") ||
		!strings.Contains(got, "10.244.1.1:8080") {
		t.Errorf("after the resync:\n%s\nwant only 10.96.0.10:80 -> 10.244.1.1:8080", got)
	}
	checkCacheTruthful(t, r, f)
}

// TestReconcilerResyncFromSettledVerdicts: Read compares what it read
// with the cache as it reads (settle), before later Applies. A virtual
// server drifted behind nftvs's back before the read and not written
// since is repaired from the read's verdict; one held at the read and
// changed by an Apply since keeps what the Apply wrote; one held and
// untouched costs nothing.
func TestReconcilerResyncFromSettledVerdicts(t *testing.T) {
	f := NewFake()
	c := NewCounting(f)
	r := NewReconciler(c, nil)
	a := svc(key(TCP, "10.96.0.10:80"), "rr", rs("10.244.1.1:8080", 1))
	drifted := svc(key(TCP, "10.96.0.11:80"), "rr", rs("10.244.1.2:8080", 1), rs("10.244.1.3:8080", 1))
	same := svc(key(TCP, "10.96.0.12:80"), "rr", rs("10.244.1.4:8080", 1))
	if _, err := r.Apply([]Service{a, drifted, same}, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteRealServer(drifted.VSKey, rs("10.244.1.3:8080", 1)); err != nil { // ipvsadm -d
		t.Fatal(err)
	}
	snap, err := r.Read(true)
	if err != nil {
		t.Fatal(err)
	}
	a2 := svc(a.VSKey, "rr", rs("10.244.1.1:8080", 1), rs("10.244.1.9:8080", 1))
	if _, err := r.Apply([]Service{a2}, nil); err != nil {
		t.Fatal(err)
	}
	c.Reset()
	res, err := r.ResyncFrom([]Service{a2, drifted, same}, snap)
	if err != nil {
		t.Fatal(err)
	}
	if want := (WriteCounts{AddRealServer: 1}); res.Writes != want || c.Writes() != want {
		t.Errorf("resync wrote %+v (counted %+v), want only the drifted real server back: %+v", res.Writes, c.Writes(), want)
	}
	if got, want := f.String(), Format([]Service{a2, drifted, same}); got != want {
		t.Errorf("after the resync:\n%s\nwant\n%s", got, want)
	}
	checkCacheTruthful(t, r, f)
}

// BenchmarkReconcilerResyncFromUnchanged is the part of a resync that a
// periodic repair does under the sync lock: the compare of 10k virtual
// servers × 10 real servers, read already (Read is not timed), with
// nothing to write.
func BenchmarkReconcilerResyncFromUnchanged(b *testing.B) {
	var all []Service
	for i := range 10000 {
		s := svc(VSKey{Address: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Protocol: TCP, Port: 80}, "rr")
		for j := range 10 {
			s.RealServers = append(s.RealServers, RealServer{Address: netip.AddrFrom4([4]byte{10, byte(128 + j), byte(i >> 8), byte(i)}), Port: 8080, Weight: 1})
		}
		all = append(all, s)
	}
	f := NewFake()
	r := NewReconciler(f, nil)
	if _, err := r.Apply(all, nil); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		snap, err := r.Read(true)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if res, err := r.ResyncFrom(all, snap); err != nil || res.Writes.Total() != 0 {
			b.Fatalf("resync: %v, writes %+v", err, res.Writes)
		}
	}
}

// TestReconcilerCreatesInBatches: a first sync's new virtual servers go
// out in batches, two per YieldBatch (virtual servers, then their real
// servers), with the writes and the table of a sync without batches.
func TestReconcilerCreatesInBatches(t *testing.T) {
	services := manyServices(250, 3)
	batched, plain := NewFake(), NewFake()
	rb, rp := NewReconciler(batched, nil), NewReconciler(unbatched{plain}, nil)
	resB, errB := rb.Apply(services, nil)
	resP, errP := rp.Apply(services, nil)
	if errB != nil || errP != nil {
		t.Fatalf("apply: batched %v, one by one %v", errB, errP)
	}
	if batched.Batches != 6 || plain.Batches != 0 {
		t.Errorf("batches: %d and %d, want 6 (2 per 100 virtual servers) and 0", batched.Batches, plain.Batches)
	}
	if resB.Writes != resP.Writes || resB.Writes != (WriteCounts{AddVirtualServer: 250, AddRealServer: 750}) {
		t.Errorf("writes: batched %+v, one by one %+v", resB.Writes, resP.Writes)
	}
	if batched.String() != plain.String() {
		t.Errorf("tables differ:\n%s\n---\n%s", batched, plain)
	}
	// Nothing to create: no batch.
	batched.Batches = 0
	if res, err := rb.Apply(services, nil); err != nil || res.Writes.Total() != 0 || batched.Batches != 0 {
		t.Errorf("second apply: %+v, %v, %d batches", res.Writes, err, batched.Batches)
	}
}

// manyServices builds n Services of r real servers each, cycling through
// families and protocols, with a fwmark one every 10.
func manyServices(n, r int) []Service {
	out := make([]Service, 0, n)
	for i := range n {
		var k VSKey
		switch {
		case i%10 == 9:
			k = VSKey{FWMark: uint32(0x4000 + i), IPv6: i%20 == 19}
		case i%2 == 0:
			k = VSKey{Address: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Protocol: []Protocol{TCP, UDP, SCTP}[i%3], Port: uint16(80 + i%7)}
		default:
			k = VSKey{Address: netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x96, 14: byte(i >> 8), 15: byte(i)}), Protocol: []Protocol{TCP, UDP, SCTP}[i%3], Port: uint16(80 + i%7)}
		}
		s := Service{VirtualServer: VirtualServer{VSKey: k, Scheduler: "rr"}}
		for j := range r {
			var a netip.Addr
			if k.Key().IPv6 {
				a = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 12: byte(j), 14: byte(i >> 8), 15: byte(i)})
			} else {
				a = netip.AddrFrom4([4]byte{10, byte(j), byte(i >> 8), byte(i)})
			}
			s.RealServers = append(s.RealServers, RealServer{Address: a, Port: 8080, Weight: 1})
		}
		out = append(out, s)
	}
	return out
}

// TestWeightsSorted: the cache's real servers stay sorted and unique
// whatever the order they are put in, removed or reweighed.
func TestWeightsSorted(t *testing.T) {
	rs := func(last byte, port uint16, weight int) RealServer {
		return RealServer{Address: netip.AddrFrom4([4]byte{10, 0, 0, last}), Port: port, Weight: weight}
	}
	var w weights
	for _, r := range []RealServer{rs(5, 80, 1), rs(1, 80, 1), rs(3, 80, 1), rs(3, 79, 1), rs(9, 80, 1), rs(1, 80, 0)} {
		w.put(r)
	}
	w.remove(rs(9, 80, 0).AddrPort())
	w.remove(rs(7, 80, 0).AddrPort()) // not held: nothing
	want := []RealServer{rs(1, 80, 0), rs(3, 79, 1), rs(3, 80, 1), rs(5, 80, 1)}
	if got := w.all(); !slices.Equal(got, want) {
		t.Fatalf("weights %v, want %v", got, want)
	}
	if got, ok := w.get(rs(3, 79, 0).AddrPort()); !ok || got != rs(3, 79, 1) {
		t.Errorf("get 10.0.0.3:79 = %v %v", got, ok)
	}
	if _, ok := w.get(rs(3, 81, 0).AddrPort()); ok {
		t.Errorf("get 10.0.0.3:81 found a real server never put")
	}
	if !newWeights(want).sameAs([]RealServerConnections{
		{AddrPort: rs(5, 80, 0).AddrPort(), Weight: 1}, {AddrPort: rs(1, 80, 0).AddrPort(), Weight: 0},
		{AddrPort: rs(3, 80, 0).AddrPort(), Weight: 1}, {AddrPort: rs(3, 79, 0).AddrPort(), Weight: 1},
	}) {
		t.Errorf("sameAs: the same real servers read in another order differ")
	}

	// IPv6 and IPv4-mapped addresses: packed, they come back as put
	// (mapped ones unmapped, as AddrPort gives them), in AddrPort order.
	v6 := RealServer{Address: netip.MustParseAddr("fd00::1"), Port: 80, Weight: maxWeight}
	mapped := RealServer{Address: netip.MustParseAddr("::ffff:10.0.0.4"), Port: 80, Weight: 2}
	w.put(v6)
	w.put(mapped)
	want = []RealServer{rs(1, 80, 0), rs(3, 79, 1), rs(3, 80, 1), rs(4, 80, 2), rs(5, 80, 1), v6}
	if got := w.all(); !slices.Equal(got, want) {
		t.Fatalf("weights %v, want %v", got, want)
	}

	// The packed order is AddrPort's, pair by pair: the search and the
	// diff's merge rely on it.
	var aps []netip.AddrPort
	for _, a := range []string{"0.0.0.0", "10.0.0.1", "10.0.0.2", "255.255.255.255", "::", "::1", "::ffff:10.0.0.1", "fd00::1", "fd00::1:0", "ffff::"} {
		for _, port := range []uint16{0, 79, 80, 65535} {
			aps = append(aps, netip.AddrPortFrom(netip.MustParseAddr(a), port))
		}
	}
	for _, a := range aps {
		for _, b := range aps {
			if got, want := newWeighted(a, 1).compare(newWeighted(b, 2)), a.Compare(b); got != want {
				t.Errorf("compare(%v, %v) = %d, AddrPort.Compare says %d", a, b, got, want)
			}
		}
	}
}
