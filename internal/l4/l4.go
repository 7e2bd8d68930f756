// Package l4 names the transport protocols of Service ports once, for
// every kernel package (ipvs, nft, conntrack) and the proxier: spelled as
// the Kubernetes API spells them, numbered as the kernel numbers them.
package l4

import "strconv"

// Protocol is a Service port's protocol ("TCP", "UDP", "SCTP"). A protocol
// Kubernetes has no name for (IPVS also balances AH and ESP) is spelled as
// its number, so that what a kernel reports can be named and deleted.
type Protocol string

const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// IANA protocol numbers (IPPROTO_*).
const (
	numTCP  = 6
	numUDP  = 17
	numSCTP = 132
)

// Number is the IP protocol number, or 0 for a protocol that is neither
// one of Kubernetes' nor spelled as a number.
func (p Protocol) Number() uint8 {
	switch p {
	case TCP:
		return numTCP
	case UDP:
		return numUDP
	case SCTP:
		return numSCTP
	case "":
		return 0 // an element keyed by address alone: no error to make
	}
	if n, err := strconv.ParseUint(string(p), 10, 8); err == nil {
		return uint8(n)
	}
	return 0
}

// Known reports whether p is one of the protocols a Service port can have.
func (p Protocol) Known() bool { return p == TCP || p == UDP || p == SCTP }

// FromNumber names IP protocol n.
func FromNumber(n uint8) Protocol {
	switch n {
	case numTCP:
		return TCP
	case numUDP:
		return UDP
	case numSCTP:
		return SCTP
	}
	return Protocol(strconv.Itoa(int(n)))
}
