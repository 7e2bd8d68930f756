//go:build vmtest

package bench

import "testing"

// TestRunFloor: the floor writes its objects without an error (the
// kernel refused nothing: every write is the one nftvs's first sync makes;
// two nft elements a ClusterIP, as nftvs writes them).
func TestRunFloor(t *testing.T) {
	f := RunFloor(600, 3)
	if f.Error != "" {
		t.Fatal(f.Error)
	}
	if f.IPVSWrites != 600*4 || f.AddressWrites != 600 || f.NFTElements != 2*600 || f.Seconds <= 0 {
		t.Errorf("floor: %+v", f)
	}
	t.Logf("floor of 600 × 3: %+v", f)
}
