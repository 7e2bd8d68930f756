package l4

import "testing"

func TestNumbers(t *testing.T) {
	for p, n := range map[Protocol]uint8{TCP: 6, UDP: 17, SCTP: 132, "50": 50, "ICMP": 0} {
		if got := p.Number(); got != n {
			t.Errorf("%s.Number() = %d, want %d", p, got, n)
		}
		if n != 0 && FromNumber(n) != p {
			t.Errorf("FromNumber(%d) = %s, want %s", n, FromNumber(n), p)
		}
	}
	if !TCP.Known() || Protocol("50").Known() {
		t.Error("Known")
	}
}
