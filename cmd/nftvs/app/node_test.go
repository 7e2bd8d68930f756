package app

import "testing"

func TestNodeName(t *testing.T) {
	if n, err := nodeName(" Node-A "); err != nil || n != "node-a" {
		t.Errorf("%q %v", n, err)
	}
	if n, err := nodeName(""); err != nil || n == "" {
		t.Errorf("hostname: %q %v", n, err)
	}
}
