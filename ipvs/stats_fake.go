package ipvs

import "slices"

var _ StatsReader = (*Fake)(nil)

// SetCounters sets the counters Stats reports for key (its connection,
// packet and byte counts; RealServers is ignored: those come from the
// real servers and SetConnections). Counters go with the virtual server.
func (f *Fake) SetCounters(key VSKey, s Stats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if svc, ok := f.services[key.Key()]; ok {
		s.RealServers = nil
		svc.counters = s
	}
}

// Stats reports every virtual server's counters and its real servers'
// connections, in one read as the kernel's does (Reads counts one).
func (f *Fake) Stats() (map[VSKey]Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Reads++
	if err := f.inject(OpGetVirtualServers, VSKey{}, nil); err != nil {
		return nil, err
	}
	out := make(map[VSKey]Stats, len(f.services))
	for k, svc := range f.services {
		s := svc.counters
		for ap, r := range svc.rs {
			s.RealServers = append(s.RealServers, RealServerConnections{AddrPort: ap, Weight: r.Weight, Connections: svc.conns[ap]})
		}
		slices.SortFunc(s.RealServers, func(a, b RealServerConnections) int { return a.AddrPort.Compare(b.AddrPort) })
		out[k] = s
	}
	return out, nil
}
