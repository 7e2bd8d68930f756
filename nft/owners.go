package nft

import "slices"

// owners are the owners of one kernel key, with the map value each asks
// for (the key is the element less its Mark: Element.kernelKey). Nearly
// every key has one owner, so the first is held inline and only a shared
// key allocates: a map per key cost about 1 KB each, 3 KB a Service.
type owners struct {
	first holder
	rest  []holder
}

type holder struct {
	owner string
	mark  uint32
}

func (s *owners) len() int {
	if s == nil || s.first.owner == "" {
		return 0
	}
	return 1 + len(s.rest)
}

// mark is owner's map value, if owner holds the key.
func (s *owners) mark(owner string) (uint32, bool) {
	if s.first.owner == owner && owner != "" {
		return s.first.mark, true
	}
	for _, h := range s.rest {
		if h.owner == owner {
			return h.mark, true
		}
	}
	return 0, false
}

// add records owner's hold; false if owner held the key already.
func (s *owners) add(owner string, mark uint32) bool {
	if _, ok := s.mark(owner); ok {
		return false
	}
	if s.first.owner == "" {
		s.first = holder{owner, mark}
	} else {
		s.rest = append(s.rest, holder{owner, mark})
	}
	return true
}

// remove drops owner's hold.
func (s *owners) remove(owner string) {
	if s.first.owner == owner {
		s.first = holder{}
		if len(s.rest) > 0 {
			s.first, s.rest = s.rest[0], slices.Clip(s.rest[1:])
		}
		if len(s.rest) == 0 {
			s.rest = nil
		}
		return
	}
	s.rest = slices.DeleteFunc(s.rest, func(h holder) bool { return h.owner == owner })
	if len(s.rest) == 0 {
		s.rest = nil
	}
}

// at is the i-th holder, 0 the first (i < len()).
func (s *owners) at(i int) holder {
	if i == 0 {
		return s.first
	}
	return s.rest[i-1]
}

// all are the holders, first first.
func (s *owners) all() []holder {
	if s == nil || s.first.owner == "" {
		return nil
	}
	return append([]holder{s.first}, s.rest...)
}
