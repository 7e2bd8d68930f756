package nft

import (
	"bytes"
	"cmp"
	"net/netip"

	"github.com/nftvs/nftvs/internal/l4"
)

// elemKey is an element's kernel key (the element less its Mark) packed
// for the mirror's maps: 40 bytes and no pointers, where an Element is 96
// bytes with four (two strings, two netip values). The mirror holds every
// element in four maps keyed by it (owners, programmed, dirty, and each
// owner's list): at 10k Services, 20k elements, the keys alone were
// about 8 MB, and every one was a pointer the GC had to follow.
type elemKey struct {
	addr, source         [16]byte
	port                 uint16
	set                  uint8 // index in tableSets
	proto                uint8 // IP protocol number, 0 for none
	addrKind, sourceKind uint8 // 0: none, 4: IPv4, 6: IPv6
	bits                 uint8 // the source range's prefix length
}

// compareKeys orders keys by set (tableSets' order: by name), address
// family and address, protocol number, port, then source range.
func compareKeys(a, b elemKey) int {
	if c := cmp.Compare(a.set, b.set); c != 0 {
		return c
	}
	if c := cmp.Compare(a.addrKind, b.addrKind); c != 0 {
		return c
	}
	if c := bytes.Compare(a.addr[:], b.addr[:]); c != 0 {
		return c
	}
	if c := cmp.Compare(a.proto, b.proto); c != 0 {
		return c
	}
	if c := cmp.Compare(a.port, b.port); c != 0 {
		return c
	}
	if c := cmp.Compare(a.sourceKind, b.sourceKind); c != 0 {
		return c
	}
	if c := bytes.Compare(a.source[:], b.source[:]); c != 0 {
		return c
	}
	return cmp.Compare(a.bits, b.bits)
}

// setIndex numbers the per-Service sets by their place in tableSets.
var setIndex = func() map[SetName]uint8 {
	m := map[SetName]uint8{}
	for i, s := range tableSets {
		if s.fromConfig == nil {
			m[s.name] = uint8(i)
		}
	}
	return m
}()

// packKey is e's kernel key. e's set is one of setSpecs (Validate), its
// address has no zone and its protocol a number: elemKey drops nothing
// the kernel keys on.
func packKey(e Element) elemKey {
	k := elemKey{set: setIndex[e.Set], port: e.Port, proto: e.Protocol.Number()}
	k.addrKind, k.addr = packAddr(e.Addr)
	if e.Source.IsValid() {
		k.sourceKind, k.source = packAddr(e.Source.Addr())
		k.bits = uint8(e.Source.Bits())
	}
	return k
}

func packAddr(a netip.Addr) (uint8, [16]byte) {
	var b [16]byte
	switch {
	case !a.IsValid():
		return 0, b
	case a.Is4():
		v4 := a.As4()
		copy(b[:], v4[:])
		return 4, b
	default:
		return 6, a.As16() // an IPv4-mapped address stays one
	}
}

func unpackAddr(kind uint8, b [16]byte) netip.Addr {
	switch kind {
	case 4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case 6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// element is the key as an Element, without a Mark.
func (k elemKey) element() Element {
	e := Element{Set: k.setName(), Addr: unpackAddr(k.addrKind, k.addr), Port: k.port}
	if k.proto != 0 {
		e.Protocol = l4.FromNumber(k.proto)
	}
	if k.sourceKind != 0 {
		e.Source = netip.PrefixFrom(unpackAddr(k.sourceKind, k.source), int(k.bits))
	}
	return e
}

func (k elemKey) setName() SetName { return tableSets[k.set].name }

// frontend is a source range key without its range.
func (k elemKey) frontend() elemKey {
	k.source, k.sourceKind, k.bits = [16]byte{}, 0, 0
	return k
}

// programmedAs is what the kernel holds under a key, besides the key:
// its map value and comment.
type programmedAs struct {
	mark    uint32
	comment string
}

func (p programmedAs) kernelElement(k elemKey) KernelElement {
	e := k.element()
	e.Mark = p.mark
	return KernelElement{Element: e, Comment: p.comment}
}
