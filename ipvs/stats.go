package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// Stats are the IPVS counters of one virtual server, as `ipvsadm -Ln
// --stats` and `ipvsadm -Ln` show them.
type Stats struct {
	// Connections, PacketsIn/Out and BytesIn/Out count since the virtual
	// server was created, as the kernel's rate estimator last summed them
	// (every 2 s). moby/ipvs reads the kernel's 32-bit counters for
	// connections and packets (they wrap at 2^32) and 64-bit ones for
	// bytes.
	Connections, PacketsIn, PacketsOut, BytesIn, BytesOut uint64
	// RealServers are the connection entries of each real server now.
	RealServers []RealServerConnections
}

// RealServerConnections are one real server's connection entries.
type RealServerConnections struct {
	AddrPort netip.AddrPort
	Weight   int
	Connections
}

// Active and Inactive sum the connection entries of every real server.
func (s Stats) Active() (active, inactive int) {
	for _, r := range s.RealServers {
		active += r.Active
		inactive += r.Inactive
	}
	return active, inactive
}

// StatsReader reads the counters of every virtual server at once: a
// scrape costs the same few reads whatever the number of Services.
type StatsReader interface {
	Stats() (map[VSKey]Stats, error)
}

// ProcIPVS is where the kernel lists every virtual server with its real
// servers and their connection counts, in one read (/proc/net/ip_vs of
// the reading thread's network namespace).
const ProcIPVS = "/proc/thread-self/net/ip_vs"

// Stats reads every virtual server's counters in one netlink dump of the
// virtual servers, and their real servers' connection counts in one read
// of /proc/net/ip_vs: netlink has no call listing every real server at
// once (one round trip per virtual server, 10k at 10k Services), the
// proc file does. Use a Kernel of its own for it: the dump holds the
// handle's lock, and a scrape must not wait for a sync's writes nor
// delay them.
func (k *Kernel) Stats() (map[VSKey]Stats, error) {
	k.mu.Lock()
	svcs, err := k.h.GetServices()
	k.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("dump virtual server stats: %w", err)
	}
	out := make(map[VSKey]Stats, len(svcs))
	for _, s := range svcs {
		v, err := fromService(s)
		if err != nil {
			return nil, fmt.Errorf("dump virtual server stats: %w", err)
		}
		out[v.Key()] = Stats{Connections: uint64(s.Stats.Connections), PacketsIn: uint64(s.Stats.PacketsIn), PacketsOut: uint64(s.Stats.PacketsOut),
			BytesIn: s.Stats.BytesIn, BytesOut: s.Stats.BytesOut}
	}
	f, err := os.Open(ProcIPVS)
	if err != nil {
		return nil, fmt.Errorf("read real server connections: %w", err)
	}
	defer f.Close()
	conns, err := ParseProcIPVS(f)
	if err != nil {
		return nil, fmt.Errorf("read real server connections from %s: %w", ProcIPVS, err)
	}
	for k, rs := range conns {
		// A virtual server created between the two reads has no
		// counters yet: its connections are still worth telling.
		s := out[k]
		s.RealServers = rs
		out[k] = s
	}
	return out, nil
}

// ParseProcIPVS reads /proc/net/ip_vs:
//
//	IP Virtual Server version 1.2.1 (size=4096)
//	Prot LocalAddress:Port Scheduler Flags
//	  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
//	TCP  0A60000A:0050 rr
//	  -> 0AF4010B:1F90      Masq    1      0          0
//	TCP  [fd00:0096:0000:0000:0000:0000:0000:000a]:0050 rr
//	FWM  00005008 rr
//
// Ports are hexadecimal, and IPv4 addresses too (%08X of the address read
// as a big-endian number: "0A60000A" is 10.96.0.10); IPv6 ones are
// written out in brackets.
func ParseProcIPVS(r io.Reader) (map[VSKey][]RealServerConnections, error) {
	// Byte by byte, without a string or a slice of fields per line: at 10k
	// virtual servers the file has 110k lines, read at every restart
	// (under emulation, seconds of a restart went to their garbage).
	out := map[VSKey][]RealServerConnections{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	var cur VSKey
	var rss []RealServerConnections // cur's, filed (copied) when the next begins
	have, fwmarks := false, false
	file := func() {
		if have {
			out[cur] = append(out[cur], rss...)
		}
	}
	var f [8][]byte
	for n := 1; s.Scan(); n++ {
		line := s.Bytes()
		nf := fields(line, &f)
		if nf == 0 || n <= 3 {
			continue // the three header lines
		}
		if string(f[0]) == "->" {
			if !have || nf < 6 {
				return nil, fmt.Errorf("line %d: %q: real server without a virtual server", n, line)
			}
			ap, err := parseProcAddrPort(f[1])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			w, ok1 := atoi(f[3])
			a, ok2 := atoi(f[4])
			i, ok3 := atoi(f[5])
			if !ok1 || !ok2 || !ok3 {
				return nil, fmt.Errorf("line %d: %q: weight and connection counts are not numbers", n, line)
			}
			rss = append(rss, RealServerConnections{AddrPort: ap, Weight: w, Connections: Connections{Active: a, Inactive: i}})
			continue
		}
		if nf < 2 {
			return nil, fmt.Errorf("line %d: %q: not a virtual server", n, line)
		}
		k, err := parseProcVirtualServer(f[0], f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		file()
		cur, have, rss = k, true, rss[:0]
		fwmarks = fwmarks || k.FWMark != 0
		if _, ok := out[cur]; !ok {
			out[cur] = nil
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	file()
	if !fwmarks {
		return out, nil
	}
	return splitFWMarkFamilies(out), nil
}

// fields splits line at spaces into f, as strings.Fields would the first
// len(f) fields, and returns how many it found.
func fields(line []byte, f *[8][]byte) int {
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '\t' {
			j++
		}
		if j > i {
			f[n] = line[i:j]
			n++
		}
		i = j
	}
	return n
}

// atoi reads a non-negative decimal number.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// hexUint reads len(b) hexadecimal digits.
func hexUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(c)
	}
	return n, true
}

// splitFWMarkFamilies files the real servers of a fwmark virtual server
// under the family of their addresses: the proc file prints an IPv4 and
// an IPv6 fwmark virtual server of one mark alike.
func splitFWMarkFamilies(m map[VSKey][]RealServerConnections) map[VSKey][]RealServerConnections {
	out := make(map[VSKey][]RealServerConnections, len(m))
	for k, rs := range m {
		if k.FWMark == 0 || len(rs) == 0 {
			out[k] = append(out[k], rs...)
			continue
		}
		for _, r := range rs {
			fk := VSKey{FWMark: k.FWMark, IPv6: r.AddrPort.Addr().Is6()}
			out[fk] = append(out[fk], r)
		}
	}
	return out
}

func parseProcVirtualServer(proto, addr []byte) (VSKey, error) {
	if string(proto) == "FWM" {
		// The family of a fwmark virtual server is not printed; its real
		// servers' addresses tell it (splitFWMarkFamilies).
		m, ok := hexUint(addr)
		if !ok || len(addr) > 8 {
			return VSKey{}, fmt.Errorf("fwmark %q is not hexadecimal", addr)
		}
		return VSKey{FWMark: uint32(m)}, nil
	}
	p, err := parseProcProtocol(proto)
	if err != nil {
		return VSKey{}, err
	}
	ap, err := parseProcAddrPort(addr)
	if err != nil {
		return VSKey{}, err
	}
	return VSKey{Address: ap.Addr(), Protocol: p, Port: ap.Port()}.Key(), nil
}

func parseProcProtocol(b []byte) (Protocol, error) {
	for _, p := range []Protocol{TCP, UDP, SCTP} {
		if string(p) == string(b) {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown protocol %q", b)
}

// parseProcAddrPort reads "0A60000A:0050" or "[fd00:...:000a]:0050".
func parseProcAddrPort(s []byte) (netip.AddrPort, error) {
	i := bytes.LastIndexByte(s, ':')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q has no port", s)
	}
	port, ok := hexUint(s[i+1:])
	if !ok || len(s[i+1:]) > 4 {
		return netip.AddrPort{}, fmt.Errorf("address %q: port is not 4 hex digits", s)
	}
	a := s[:i]
	if len(a) > 0 && a[0] == '[' {
		ip, err := netip.ParseAddr(strings.Trim(string(a), "[]"))
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
		}
		return netip.AddrPortFrom(ip, uint16(port)), nil
	}
	v, ok := hexUint(a)
	if !ok || len(a) != 8 {
		return netip.AddrPort{}, fmt.Errorf("address %q is not 8 hex digits", s)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), uint16(port)), nil
}
