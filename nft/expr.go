package nft

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// A rule is a list of matches and one statement, each carrying both its
// netlink expressions and its nft text. Keeping the two side by side means
// the fake can print exactly what the kernel is sent, and a kernel test can
// check that `nft list table` reads back the same text.
type rule struct {
	parts   []part
	comment string
}

type part struct {
	text  string
	exprs func(setRefs) []expr.Any
}

// setRefs resolves a kernel set name to the set object of the transaction
// being built (lookups of sets created in the same batch need the set ID).
type setRefs func(name string) *nftables.Set

func (r rule) text() string {
	var t []string
	for _, p := range r.parts {
		t = append(t, p.text)
	}
	s := strings.Join(t, " ")
	if r.comment != "" {
		s += fmt.Sprintf(" comment %q", r.comment)
	}
	return s
}

func (r rule) exprs(refs setRefs) []expr.Any {
	var out []expr.Any
	for _, p := range r.parts {
		out = append(out, p.exprs(refs)...)
	}
	return out
}

func fixed(text string, e ...expr.Any) part {
	return part{text: text, exprs: func(setRefs) []expr.Any { return e }}
}

// Registers: single values go to the 16-byte register 1; concatenations
// start at the 4-byte register 8 (NFT_REG32_00), each field padded to 4
// bytes, the way nft itself lays them out.
const (
	reg1      = 1
	reg32base = 8
)

// matchField is one component of a concatenated match.
type matchField struct {
	text string
	load func(reg uint32) expr.Any
	size uint32 // bytes
}

func familyProto(f Family) string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

func addrLen(f Family) uint32 {
	if f == IPv6 {
		return 16
	}
	return 4
}

func daddrField(f Family) matchField {
	off := uint32(16)
	if f == IPv6 {
		off = 24
	}
	return matchField{familyProto(f) + " daddr", func(r uint32) expr.Any {
		return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen(f)}
	}, addrLen(f)}
}

func saddrField(f Family) matchField {
	off := uint32(12)
	if f == IPv6 {
		off = 8
	}
	return matchField{familyProto(f) + " saddr", func(r uint32) expr.Any {
		return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen(f)}
	}, addrLen(f)}
}

var l4protoField = matchField{"meta l4proto", func(r uint32) expr.Any {
	return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r}
}, 1}

var dportField = matchField{"th dport", func(r uint32) expr.Any {
	return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}, 2}

// loadFields loads fields into registers for a lookup and returns the
// source register of the lookup.
func loadFields(fields []matchField) ([]expr.Any, uint32, string) {
	var out []expr.Any
	var texts []string
	if len(fields) == 1 {
		return []expr.Any{fields[0].load(reg1)}, reg1, fields[0].text
	}
	words := uint32(0)
	for _, f := range fields {
		out = append(out, f.load(reg32base+words))
		words += (f.size + 3) / 4
		texts = append(texts, f.text)
	}
	return out, reg32base, strings.Join(texts, " . ")
}

// nfproto guards a family-specific match in the inet table. nft adds the
// same dependency itself and hides it when listing.
func nfproto(f Family) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if f == IPv6 {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}},
	}
}

// inSet matches fields against a set ("fields @set" or "fields != @set").
func inSet(f Family, set string, invert bool, fields ...matchField) part {
	loads, reg, text := loadFields(fields)
	op := ""
	if invert {
		op = "!= "
	}
	return part{
		text: fmt.Sprintf("%s %s@%s", text, op, set),
		exprs: func(refs setRefs) []expr.Any {
			var out []expr.Any
			if f != 0 {
				out = append(out, nfproto(f)...)
			}
			s := refs(set)
			out = append(out, loads...)
			return append(out, &expr.Lookup{SourceRegister: reg, SetName: s.Name, SetID: s.ID, Invert: invert})
		},
	}
}

// setMarkFromMap is "meta mark set <fields> map @m".
func setMarkFromMap(f Family, m string, fields ...matchField) part {
	loads, reg, text := loadFields(fields)
	return part{
		text: fmt.Sprintf("meta mark set %s map @%s", text, m),
		exprs: func(refs setRefs) []expr.Any {
			var out []expr.Any
			if f != 0 {
				out = append(out, nfproto(f)...)
			}
			s := refs(m)
			out = append(out, loads...)
			return append(out,
				&expr.Lookup{SourceRegister: reg, DestRegister: reg1, IsDestRegSet: true, SetName: s.Name, SetID: s.ID},
				// Map values are stored in network byte order, because
				// google/nftables cannot tell nft (set userdata) that
				// they are host order: `nft list` then prints the marks
				// ipvsadm shows. Convert before setting the mark.
				&expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderNtoh, Len: 4, Size: 4},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1})
		},
	}
}

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func markOr(bits uint32) part {
	return fixed(fmt.Sprintf("meta mark set meta mark | 0x%08x", bits),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(^bits), Xor: native32(bits)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	)
}

func markXor(bits uint32) part {
	return fixed(fmt.Sprintf("meta mark set meta mark ^ 0x%08x", bits),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(0xffffffff), Xor: native32(bits)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	)
}

// markBits matches "meta mark & bits == want".
func markBits(bits, want uint32) part {
	return fixed(fmt.Sprintf("meta mark & 0x%08x == 0x%08x", bits, want),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: native32(want)},
	)
}

func ctState(text string, bits uint32) part {
	return fixed("ct state "+text,
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	)
}

// iifname matches an input interface name; a trailing "*" matches a prefix.
func iifname(name string, invert bool) part {
	op, text := expr.CmpOpEq, fmt.Sprintf("iifname %q", name)
	if invert {
		op, text = expr.CmpOpNeq, fmt.Sprintf("iifname != %q", name)
	}
	var data []byte
	if p, ok := strings.CutSuffix(name, "*"); ok {
		data = []byte(p)
	} else {
		data = make([]byte, unix.IFNAMSIZ)
		copy(data, name)
	}
	return fixed(text,
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: op, Register: reg1, Data: data},
	)
}

// tcpDport is "tcp dport @set".
func tcpDport(set string) part {
	return part{
		text: "tcp dport @" + set,
		exprs: func(refs setRefs) []expr.Any {
			s := refs(set)
			return []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
				dportField.load(reg1),
				&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID},
			}
		},
	}
}

var counter = fixed("counter", &expr.Counter{})

func verdict(kind expr.VerdictKind, chain string) part {
	var text string
	switch kind {
	case expr.VerdictAccept:
		text = "accept"
	case expr.VerdictDrop:
		text = "drop"
	case expr.VerdictReturn:
		text = "return"
	case expr.VerdictJump:
		text = "jump " + chain
	}
	return fixed(text, &expr.Verdict{Kind: kind, Chain: chain})
}

func jump(chain string) part { return verdict(expr.VerdictJump, chain) }

var (
	accept = verdict(expr.VerdictAccept, "")
	drop   = verdict(expr.VerdictDrop, "")
	ret    = verdict(expr.VerdictReturn, "")
)

var reject = fixed("reject",
	&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})

var masqueradeFullyRandom = fixed("masquerade fully-random", &expr.Masq{FullyRandom: true})

var masquerade = fixed("masquerade", &expr.Masq{})
