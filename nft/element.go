package nft

import (
	"encoding/binary"
	"fmt"
	"github.com/nftvs/nftvs/internal/l4"
	"net/netip"
	"strings"
)

// Protocol is a Service port protocol: one type for every kernel package
// (internal/l4).
type Protocol = l4.Protocol

const (
	TCP  = l4.TCP
	UDP  = l4.UDP
	SCTP = l4.SCTP
)

// protocolNumber is the IP protocol number the kernel matches (meta
// l4proto).
func protocolNumber(p Protocol) (byte, error) {
	if !p.Known() {
		return 0, fmt.Errorf("unsupported protocol %q", string(p))
	}
	return p.Number(), nil
}

// protocolText is the protocol as nft prints it.
func protocolText(p Protocol) string { return strings.ToLower(string(p)) }

// SetName names one of the table's per-Service sets or maps, without the
// family suffix ("-v4"/"-v6") that address-keyed sets carry in the kernel.
type SetName string

// The per-Service sets and maps. Their upstream ipset equivalents are named
// in the comments, for people coming from kube-proxy's IPVS mode.
const (
	// ClusterIPs holds ClusterIP . protocol . port (KUBE-CLUSTER-IP).
	ClusterIPs SetName = "cluster-ips"
	// ExternalIPs holds externalIP . protocol . port of Services with
	// externalTrafficPolicy Cluster: masqueraded (KUBE-EXTERNAL-IP).
	ExternalIPs SetName = "external-ips"
	// ExternalIPsLocal is the same for externalTrafficPolicy Local: the
	// client source is kept (KUBE-EXTERNAL-IP-LOCAL).
	ExternalIPsLocal SetName = "external-ips-local"
	// LoadBalancerIPs holds ingress IP . protocol . port, ETP Cluster
	// (KUBE-LOAD-BALANCER).
	LoadBalancerIPs SetName = "load-balancer-ips"
	// LoadBalancerIPsLocal is the same for ETP Local (KUBE-LOAD-BALANCER-LOCAL).
	LoadBalancerIPsLocal SetName = "load-balancer-ips-local"
	// LoadBalancerFirewall holds the ingress IP . protocol . port of
	// Services with loadBalancerSourceRanges (KUBE-LOAD-BALANCER-FW).
	LoadBalancerFirewall SetName = "load-balancer-firewall"
	// LoadBalancerSourceRanges holds ingress IP . protocol . port . source
	// range allowed through the firewall (KUBE-LOAD-BALANCER-SOURCE-CIDR and
	// -SOURCE-IP). Concatenated and interval-typed: the kernel rebuilds it on
	// every change, so only source ranges live here.
	LoadBalancerSourceRanges SetName = "load-balancer-source-ranges"
	// NodePorts holds protocol . node port, ETP Cluster (KUBE-NODE-PORT-*).
	NodePorts SetName = "node-ports"
	// NodePortsLocal holds protocol . node port, ETP Local
	// (KUBE-NODE-PORT-LOCAL-*).
	NodePortsLocal SetName = "node-ports-local"
	// Hairpin holds endpoint IP . protocol . port . endpoint IP: a pod that
	// reaches itself through a Service is masqueraded (KUBE-LOOP-BACK).
	Hairpin SetName = "hairpin"
	// HealthCheckNodePorts holds the health check node ports of ETP Local
	// LoadBalancers (KUBE-HEALTH-CHECK-NODE-PORT).
	HealthCheckNodePorts SetName = "health-check-node-ports"
	// IPVSAddresses holds every address bound to kube-ipvs0 (KUBE-IPVS-IPS):
	// new connections to them on a port that is no Service port are rejected.
	IPVSAddresses SetName = "ipvs-addresses"
	// LocalPolicyFWMarks maps the external IP / load-balancer IP . protocol
	// . port of an ETP Local Service to the firewall mark of an IPVS fwmark
	// virtual server holding all endpoints: traffic from this node and its
	// pods is marked so that it reaches every endpoint, while external
	// clients hit the ip:port virtual server with local endpoints only.
	LocalPolicyFWMarks SetName = "local-policy-fwmarks"
	// NodePortAddresses holds the node's addresses that node ports are
	// served on (the local addresses within --nodeport-addresses, never
	// kube-ipvs0's): every node port rule matches only these, so that a
	// node port never takes another Service's ClusterIP, external or
	// load-balancer IP on the same port.
	NodePortAddresses SetName = "node-port-addresses"
	// NodePortFWMarks is LocalPolicyFWMarks for node ports: protocol . port
	// to firewall mark.
	NodePortFWMarks SetName = "node-port-fwmarks"
	// NoLocalEndpoints holds external IP / load-balancer IP . protocol .
	// port of ETP Local Services without a local endpoint: traffic from
	// outside is dropped, as the Service API says (the IPVS virtual server
	// has no real server and would refuse it instead).
	NoLocalEndpoints SetName = "no-local-endpoints"
	// NodePortsNoLocalEndpoints is NoLocalEndpoints for node ports.
	NodePortsNoLocalEndpoints SetName = "node-ports-no-local-endpoints"
)

// Element is one set or map element. Which fields form the key depends on
// the set (see setSpecs); the zero value of an unused field is ignored.
// Element is comparable so it can key maps; two elements are the same
// kernel element when their keys are equal, whatever their Mark.
type Element struct {
	Set      SetName
	Addr     netip.Addr   // address key (ClusterIP, external IP, endpoint IP, ...)
	Protocol Protocol     // protocol key
	Port     uint16       // port key (Service port, node port, endpoint port)
	Source   netip.Prefix // source range key (LoadBalancerSourceRanges)
	Mark     uint32       // map value (firewall mark maps)
}

// kernelKey is the element with its map value cleared: the identity the
// kernel uses.
func (e Element) kernelKey() Element {
	e.Mark = 0
	return e
}

// family is IPv4 or IPv6 for address-keyed elements, 0 for others.
func (e Element) family() Family {
	if !setSpecs[e.Set].perFamily {
		return 0
	}
	if e.Addr.Is4() {
		return IPv4
	}
	return IPv6
}

// kernelSet is the name of the kernel set the element lives in.
func (e Element) kernelSet() string {
	return kernelSetName(e.Set, e.family())
}

func kernelSetName(s SetName, f Family) string {
	if names, ok := kernelSetNames[s]; ok {
		switch f {
		case 0:
			return names[0]
		case IPv4:
			return names[1]
		case IPv6:
			return names[2]
		}
	}
	switch f {
	case IPv4:
		return string(s) + "-v4"
	case IPv6:
		return string(s) + "-v6"
	}
	return string(s)
}

// kernelSetNames are every set's kernel names by family, made once: a
// first sync names the set of each of its 20k elements twice.
var kernelSetNames = func() map[SetName][3]string {
	m := map[SetName][3]string{}
	for _, s := range tableSets {
		m[s.name] = [3]string{string(s.name), string(s.name) + "-v4", string(s.name) + "-v6"}
	}
	return m
}()

// String renders the key (and map value) the way `nft list` prints it.
func (e Element) String() string {
	spec := setSpecs[e.Set]
	var parts []string
	for _, f := range spec.fields {
		switch f {
		case fieldAddr, fieldAddr2:
			parts = append(parts, e.Addr.String())
		case fieldProto:
			parts = append(parts, protocolText(e.Protocol))
		case fieldPort:
			parts = append(parts, fmt.Sprint(e.Port))
		case fieldSource:
			parts = append(parts, e.Source.String())
		}
	}
	s := strings.Join(parts, " . ")
	if spec.isMap {
		s += fmt.Sprintf(" : 0x%08x", e.Mark)
	}
	return s
}

// text renders the element with its comment as `nft list` does: the
// comment goes between a map element's key and its value.
func (e KernelElement) text() string {
	key := e.Element
	key.Mark = 0
	s := key.String()
	if setSpecs[e.Set].isMap {
		s = strings.TrimSuffix(s, " : 0x00000000")
	}
	if e.Comment != "" {
		s += fmt.Sprintf(" comment %q", e.Comment)
	}
	if setSpecs[e.Set].isMap {
		s += fmt.Sprintf(" : 0x%08x", e.Mark)
	}
	return s
}

// Validate reports why the element cannot be programmed, or nil. Callers
// hand elements built from API objects: a bad one must be refused here, not
// fail the whole transaction in the kernel.
func (e Element) Validate() error {
	spec, ok := setSpecs[e.Set]
	if !ok {
		return fmt.Errorf("unknown set %q", e.Set)
	}
	for _, f := range spec.fields {
		switch f {
		case fieldAddr:
			if !e.Addr.IsValid() || e.Addr.Zone() != "" || e.Addr.Is4In6() {
				return fmt.Errorf("%s: invalid address %v", e.Set, e.Addr)
			}
		case fieldProto:
			if _, err := protocolNumber(e.Protocol); err != nil {
				return fmt.Errorf("%s: %w", e.Set, err)
			}
		case fieldPort:
			if e.Port == 0 {
				return fmt.Errorf("%s: port 0", e.Set)
			}
		case fieldSource:
			if !e.Source.IsValid() || e.Source.Masked() != e.Source {
				return fmt.Errorf("%s: invalid source range %v", e.Set, e.Source)
			}
			if e.Source.Addr().Is4() != e.Addr.Is4() {
				return fmt.Errorf("%s: source range %v and address %v differ in family", e.Set, e.Source, e.Addr)
			}
		}
	}
	if spec.isMap && e.Mark == 0 {
		return fmt.Errorf("%s: map element %s needs a non-zero mark", e.Set, e)
	}
	return nil
}

// key encodes the element's key as the kernel stores it: fields in network
// byte order, each padded to 4 bytes in a concatenation. For the interval
// set it returns the first and last keys of the range.
func (e Element) key() (key, keyEnd []byte) {
	spec := setSpecs[e.Set]
	concat := len(spec.fields) > 1
	pad := func(b []byte) []byte {
		if concat && len(b)%4 != 0 {
			b = append(b, make([]byte, 4-len(b)%4)...)
		}
		return b
	}
	for _, f := range spec.fields {
		switch f {
		case fieldAddr, fieldAddr2:
			key = append(key, e.Addr.AsSlice()...)
		case fieldProto:
			n, _ := protocolNumber(e.Protocol)
			key = append(key, pad([]byte{n})...)
		case fieldPort:
			key = append(key, pad(binary.BigEndian.AppendUint16(nil, e.Port))...)
		case fieldSource:
			first, last := prefixRange(e.Source)
			keyEnd = append(append([]byte{}, key...), last.AsSlice()...)
			key = append(key, first.AsSlice()...)
		}
	}
	return key, keyEnd
}

// value encodes a map element's value: a mark, in network byte order (the
// rule converts it to host order before setting meta mark).
func (e Element) value() []byte {
	return binary.BigEndian.AppendUint32(nil, e.Mark)
}

// prefixRange returns the first and last address of p.
func prefixRange(p netip.Prefix) (first, last netip.Addr) {
	p = p.Masked()
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		hostBits := 8*(i+1) - bits
		switch {
		case hostBits >= 8:
			b[i] = 0xff
		case hostBits > 0:
			b[i] |= byte(1<<hostBits) - 1
		}
	}
	last, _ = netip.AddrFromSlice(b)
	return p.Addr(), last
}
