// Package mapsize sizes maps once for a large batch of keys.
package mapsize

import "maps"

// Grown is m, or a copy of it with room for n keys when m is far smaller
// (a first sync declaring every Service at once): a map grown from empty
// to n keys leaves about its own size again in garbage, sized once it
// leaves none. Small batches (under 1024 keys) keep m.
func Grown[K comparable, V any](m map[K]V, n int) map[K]V {
	if n < 1024 || len(m) >= n/4 {
		return m
	}
	r := make(map[K]V, n)
	maps.Copy(r, m)
	return r
}
