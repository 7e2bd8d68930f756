package proxier

import (
	"fmt"
	"testing"
	"unsafe"

	discovery "k8s.io/api/discovery/v1"
)

// TestEpSlice: the compact form keeps what planning and `nftvs explain`
// read of every endpoint, odd ones included, and gives it back.
func TestEpSlice(t *testing.T) {
	yes, no := true, false
	node, zone := "node-b", "zone-a"
	s := &discovery.EndpointSlice{AddressType: discovery.AddressTypeIPv6, Endpoints: []discovery.Endpoint{
		{Addresses: []string{"fd00::1"}, NodeName: &node, Zone: &zone},
		{Addresses: []string{"fd00::2", "fd00::3"}, Conditions: discovery.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
		{Addresses: []string{"not-an-ip"}},
		{Addresses: nil},
		{Addresses: []string{"fe80::1%eth0"}},
		{Addresses: []string{"::ffff:10.0.0.1"}, Hints: &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-a"}}, ForNodes: []discovery.ForNode{{Name: "node-b"}}}},
	}}
	c := newEpSlice(s)
	want := []struct {
		addrs                     string
		ready, serving, terminate bool
		valid                     bool
	}{
		{"[fd00::1]", true, true, false, true},
		{"[fd00::2 fd00::3]", false, true, true, true},
		{"[not-an-ip]", true, true, false, false},
		{"[]", true, true, false, false},
		{"[fe80::1%eth0]", true, true, false, true},
		{"[::ffff:10.0.0.1]", true, true, false, true},
	}
	back := c.apiSlice()
	for i, w := range want {
		e := &c.endpoints[i]
		if got := fmt.Sprint(e.addresses()); got != w.addrs || e.ready() != w.ready || e.serving() != w.serving || e.terminating() != w.terminate || e.addr.IsValid() != w.valid {
			t.Errorf("endpoint %d: %s ready %v serving %v terminating %v valid %v, want %+v", i, got, e.ready(), e.serving(), e.terminating(), e.addr.IsValid(), w)
		}
		b := back.Endpoints[i]
		if fmt.Sprint(b.Addresses) != w.addrs || *b.Conditions.Ready != w.ready || *b.Conditions.Serving != w.serving || *b.Conditions.Terminating != w.terminate {
			t.Errorf("endpoint %d given back as %+v", i, b)
		}
	}
	if back.Endpoints[0].NodeName == nil || *back.Endpoints[0].NodeName != node || *back.Endpoints[0].Zone != zone {
		t.Errorf("node and zone given back as %v %v", back.Endpoints[0].NodeName, back.Endpoints[0].Zone)
	}
	if h := back.Endpoints[5].Hints; h == nil || h.ForZones[0].Name != "zone-a" || h.ForNodes[0].Name != "node-b" {
		t.Errorf("hints given back as %+v", h)
	}
	// Planning takes only the usable ones: a plain address of the slice's
	// family (the mapped IPv4 address, unmapped, as before).
	eps := endpointsForPort(nil, []*epSlice{c}, "", "TCP", true)
	if len(eps) != 0 {
		t.Errorf("no port in the slice, yet endpoints %v", eps)
	}
	port := int32(80)
	c.ports = []discovery.EndpointPort{{Port: &port}}
	eps = endpointsForPort(nil, []*epSlice{c}, "", "TCP", true)
	var got []string
	for _, e := range eps {
		got = append(got, e.AddrPort().String())
	}
	if fmt.Sprint(got) != "[10.0.0.1:80 [fd00::1]:80 [fd00::2]:80]" {
		t.Errorf("endpoints planned: %v", got)
	}
	// The size the memory figures are made of.
	if n := unsafe.Sizeof(sliceEndpoint{}); n != 56 {
		t.Errorf("sliceEndpoint is %d bytes, the comments say 56", n)
	}
}
