package nft

import (
	"fmt"
	"testing"
)

func TestOwners(t *testing.T) {
	var s *owners
	if s.len() != 0 || s.all() != nil {
		t.Fatal("a nil owners is not empty")
	}
	s = &owners{}
	for _, o := range []string{"a", "b", "c"} {
		if !s.add(o, 0x4000) {
			t.Fatalf("add %s refused", o)
		}
	}
	if s.add("b", 0x4000) || s.len() != 3 {
		t.Fatalf("a second add of b counted: %v", s.all())
	}
	s.remove("a") // the inline one: b moves in
	if m, ok := s.mark("b"); !ok || m != 0x4000 || s.first.owner != "b" || fmt.Sprint(s.all()) != "[{b 16384} {c 16384}]" {
		t.Fatalf("after removing a: %v", s.all())
	}
	s.remove("c")
	s.remove("nobody")
	if s.len() != 1 || s.rest != nil {
		t.Fatalf("after removing c: %v (rest %v)", s.all(), s.rest)
	}
	s.remove("b")
	if s.len() != 0 {
		t.Fatalf("after removing b: %v", s.all())
	}
	if _, ok := s.mark(""); ok {
		t.Fatal("the empty owner holds the key")
	}
}
