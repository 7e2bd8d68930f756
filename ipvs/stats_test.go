package ipvs

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// procIPVS is /proc/net/ip_vs as a 6.1 kernel wrote it in the VM.
const procIPVS = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A60000A:0050 rr
  -> 0AF4010B:1F90      Masq    1      2          3
  -> 0AF4010C:1F90      Masq    0      0          1
UDP  0A60000A:0035 sh persistent 300 FFFFFFFF
TCP  [fd00:0096:0000:0000:0000:0000:0000:000a]:0050 mh
  -> [fd00:0244:0001:0000:0000:0000:0000:000b]:1F90      Masq    1      1          0
FWM  75801008 rr
  -> 0AF4010B:1F90      Masq    1      4          0
FWM  75801008 rr
  -> [fd00:0244:0001:0000:0000:0000:0000:000b]:1F90      Masq    1      5          0
`

func TestParseProcIPVS(t *testing.T) {
	got, err := ParseProcIPVS(strings.NewReader(procIPVS))
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	want := map[VSKey][]RealServerConnections{
		{Address: netip.MustParseAddr("10.96.0.10"), Protocol: TCP, Port: 80}: {
			{AddrPort: ap("10.244.1.11:8080"), Weight: 1, Connections: Connections{2, 3}},
			{AddrPort: ap("10.244.1.12:8080"), Weight: 0, Connections: Connections{0, 1}},
		},
		{Address: netip.MustParseAddr("10.96.0.10"), Protocol: UDP, Port: 53}: nil,
		{Address: netip.MustParseAddr("fd00:96::a"), Protocol: TCP, Port: 80, IPv6: true}: {
			{AddrPort: ap("[fd00:244:1::b]:8080"), Weight: 1, Connections: Connections{1, 0}},
		},
		{FWMark: 0x75801008}:             {{AddrPort: ap("10.244.1.11:8080"), Weight: 1, Connections: Connections{4, 0}}},
		{FWMark: 0x75801008, IPv6: true}: {{AddrPort: ap("[fd00:244:1::b]:8080"), Weight: 1, Connections: Connections{5, 0}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	s := Stats{RealServers: want[VSKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: TCP, Port: 80}]}
	if a, i := s.Active(); a != 2 || i != 4 {
		t.Errorf("Active() = %d, %d", a, i)
	}

	for _, bad := range []string{
		"h\nh\nh\n  -> 0AF4010B:1F90 Masq 1 0 0\n",
		"h\nh\nh\nTCP  0A60000A rr\n",
		"h\nh\nh\nTCP  0A6000:0050 rr\n",
		"h\nh\nh\nICMP  0A60000A:0050 rr\n",
		"h\nh\nh\nTCP  0A60000A:0050 rr\n  -> 0AF4010B:1F90 Masq x 0 0\n",
	} {
		if _, err := ParseProcIPVS(strings.NewReader(bad)); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

// BenchmarkParseProcIPVS is a restart's read of every real server: the
// file at 10k virtual servers with 10 real servers each.
func BenchmarkParseProcIPVS(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n")
	for i := range 10000 {
		fmt.Fprintf(&sb, "TCP  0A60%04X:0050 rr\n", i)
		for j := range 10 {
			fmt.Fprintf(&sb, "  -> 0A%02X%04X:1F90      Masq    1      %d          0\n", 128+j, i, j)
		}
	}
	file := sb.String()
	b.ReportAllocs()
	for range b.N {
		m, err := ParseProcIPVS(strings.NewReader(file))
		if err != nil || len(m) != 10000 {
			b.Fatalf("%d virtual servers, %v", len(m), err)
		}
	}
}
