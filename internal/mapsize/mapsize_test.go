package mapsize

import "testing"

// TestGrown: a far smaller map is copied with its keys; a small batch or
// a map already near n is kept as it is.
func TestGrown(t *testing.T) {
	m := map[int]string{1: "a", 2: "b"}
	if g := Grown(m, 100); len(g) != 2 {
		t.Fatalf("small batch: %v", g)
	}
	g := Grown(m, 4096)
	if len(g) != 2 || g[1] != "a" || g[2] != "b" {
		t.Fatalf("grown map lost keys: %v", g)
	}
	g[3] = "c"
	if len(m) != 2 {
		t.Error("Grown wrote to the map it was given")
	}
	big := map[int]bool{}
	for i := range 2000 {
		big[i] = true
	}
	g2 := Grown(big, 4096)
	g2[-1] = true
	if !big[-1] {
		t.Error("a map already near n was copied")
	}
}
