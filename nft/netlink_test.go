package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TestNetlinkRulesGolden pins the netlink expressions of every rule, as
// the netlink backend sends them in a rebuild, without root: a fake
// netlink socket (nftables.WithTestDial) records the batch, and each rule's
// expressions are decoded back and printed under its nft text. A change to
// a rule, in its text or in the bytes the kernel gets, shows up as a diff
// of testdata/rules.golden (rewrite with -update after checking).
func TestNetlinkRulesGolden(t *testing.T) {
	cfg := Config{
		LocalTraffic: LocalTraffic{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}, NodePodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:0:1::/64")}},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")},
		DropInvalid:  true,
	}
	cfg.defaults()
	var sent []netlink.Message
	b := &netlinkBackend{opts: []nftables.ConnOption{nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		sent = append(sent, req...)
		if len(req) == 1 && req[0].Header.Type == netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN) {
			return []netlink.Message{newGenMessage(41)}, nil
		}
		return nil, nil
	})}}
	gen, err := b.apply(cfg, transaction{rebuild: true})
	if err != nil {
		t.Fatal(err)
	}
	if gen != 42 {
		t.Errorf("apply reports generation %d, want 42 (the one after GETGEN's)", gen)
	}
	var batchGen []uint32
	var rules []sentRule
	for _, m := range sent {
		switch m.Header.Type {
		case netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN):
			batchGen = append(batchGen, attrUint32(t, m.Data[4:], unix.NFNL_BATCH_GENID))
		case netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE):
			rules = append(rules, decodeRule(t, m.Data[4:]))
		}
	}
	if len(batchGen) != 1 || batchGen[0] != 41 {
		t.Errorf("batches carry generations %v, want one with 41", batchGen)
	}
	// Every rule of the configuration, in order, with its comment, and
	// nothing else; the golden file shows its expressions.
	var got strings.Builder
	for _, c := range cfg.chains() {
		for _, r := range c.rules {
			if len(rules) == 0 || rules[0].chain != c.name || rules[0].comment != r.comment {
				t.Fatalf("next rule sent %+v, want chain %s: %s", rules[:min(1, len(rules))], c.name, r.text())
			}
			fmt.Fprintf(&got, "%s: %s\n\t%s\n", c.name, r.text(), strings.Join(rules[0].exprs, "\n\t"))
			rules = rules[1:]
		}
	}
	if len(rules) > 0 {
		t.Fatalf("%d rules sent beyond the configuration's: %+v", len(rules), rules)
	}
	golden := "testdata/rules.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantGolden, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./nft/ -run TestNetlinkRulesGolden -update)", err)
	}
	if got.String() != string(wantGolden) {
		t.Fatalf("netlink rules differ from %s (rerun with -update after checking):\n%s", golden, got.String())
	}
}

func newGenMessage(gen uint32) netlink.Message {
	attrs, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_GEN_ID, Data: binary.BigEndian.AppendUint32(nil, gen)}})
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)},
		Data:   append([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
}

func attrUint32(t *testing.T, b []byte, typ uint16) uint32 {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		t.Fatal(err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == typ {
			return ad.Uint32()
		}
	}
	return 0
}

type sentRule struct {
	chain, comment string
	exprs          []string
}

// decodeRule reads a NEWRULE message: chain, comment, and one line per
// expression, decoded with google/nftables.
func decodeRule(t *testing.T, b []byte) sentRule {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		t.Fatal(err)
	}
	ad.ByteOrder = binary.BigEndian
	var r sentRule
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			r.comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					r.exprs = append(r.exprs, describeExpr(t, nad.Bytes()))
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	return r
}

func describeExpr(t *testing.T, b []byte) string {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		t.Fatal(err)
	}
	ad.ByteOrder = binary.BigEndian
	var name string
	var data []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	var e expr.Any
	switch name {
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "payload":
		e = &expr.Payload{}
	case "lookup":
		e = &expr.Lookup{}
	case "bitwise":
		e = &expr.Bitwise{}
	case "fib":
		e = &expr.Fib{}
	case "ct":
		e = &expr.Ct{}
	case "immediate":
		e = &expr.Verdict{}
	case "counter":
		e = &expr.Counter{}
	case "masq":
		e = &expr.Masq{}
	case "reject":
		e = &expr.Reject{}
	default: // google/nftables cannot decode byteorder
		return fmt.Sprintf("%s %x", name, data)
	}
	if err := expr.Unmarshal(byte(nftables.TableFamilyINet), data, e); err != nil {
		t.Fatalf("decode %s expression %x: %v", name, data, err)
	}
	return fmt.Sprintf("%s %+v", name, e)
}
