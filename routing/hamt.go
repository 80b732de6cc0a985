package routing

import (
	"hash/maphash"
	"math/bits"
)

// hashSeed keys every hamt of the process. Tables live in memory only, so a
// per-process random seed costs nothing and keeps hash flooding out of reach.
var hashSeed = maphash.MakeSeed()

func hashKey(key string) uint64 { return maphash.String(hashSeed, key) }

// hamt is a persistent hash map from strings to V: a hash array mapped trie,
// 64 ways per level. Set and Delete return a new map and leave the receiver
// unchanged; they copy only the slots on the path to the key, so an update
// costs O(log64 n) whatever the size of the map. The zero value is an empty
// map. A hamt is safe to share between goroutines, because no slot array is
// modified after the update that built it returns.
type hamt[V any] struct {
	root hslot[V]
	size int
}

// hslot is either an inner node (sub != nil: the present slots of the next
// level, in bit order, with bitmap telling which of the 64 are present) or an
// entry. Keeping a node's bitmap and slice header in its parent's slot makes
// a lookup touch one array per level. Below the last level (shift >= 64) sub
// is a collision list of entries with equal hashes, bitmap unused.
type hslot[V any] struct {
	bitmap uint64
	sub    []hslot[V]
	hash   uint64
	key    string
	val    V
}

const hamtBits = 6

func slotBit(hash uint64, shift uint) uint64 { return 1 << ((hash >> shift) & 63) }

func index(bitmap, bit uint64) int { return bits.OnesCount64(bitmap & (bit - 1)) }

// Len reports the number of keys.
func (m hamt[V]) Len() int { return m.size }

// Get returns the value stored under key.
func (m hamt[V]) Get(key string) (V, bool) { return m.get(key, hashKey(key)) }

func (m hamt[V]) get(key string, hash uint64) (V, bool) {
	bitmap, sub := m.root.bitmap, m.root.sub
	for shift := uint(0); shift < 64; shift += hamtBits {
		bit := slotBit(hash, shift)
		if bitmap&bit == 0 {
			var zero V
			return zero, false
		}
		s := &sub[index(bitmap, bit)]
		if s.sub == nil {
			if s.hash == hash && s.key == key {
				return s.val, true
			}
			var zero V
			return zero, false
		}
		bitmap, sub = s.bitmap, s.sub
	}
	for i := range sub {
		if sub[i].key == key {
			return sub[i].val, true
		}
	}
	var zero V
	return zero, false
}

// Set returns a map in which key maps to val.
func (m hamt[V]) Set(key string, val V) hamt[V] { return m.set(key, hashKey(key), val) }

func (m hamt[V]) set(key string, hash uint64, val V) hamt[V] {
	bitmap, sub, added := setIn(m.root.bitmap, m.root.sub, hslot[V]{hash: hash, key: key, val: val}, 0)
	size := m.size
	if added {
		size++
	}
	return hamt[V]{root: hslot[V]{bitmap: bitmap, sub: sub}, size: size}
}

func setIn[V any](bitmap uint64, sub []hslot[V], e hslot[V], shift uint) (uint64, []hslot[V], bool) {
	if shift >= 64 {
		for i := range sub {
			if sub[i].key == e.key {
				c := clone(sub)
				c[i] = e
				return 0, c, false
			}
		}
		return 0, insert(sub, len(sub), e), true
	}
	bit := slotBit(e.hash, shift)
	i := index(bitmap, bit)
	if bitmap&bit == 0 {
		return bitmap | bit, insert(sub, i, e), true
	}
	s, c := sub[i], clone(sub)
	switch {
	case s.sub != nil:
		nb, ns, added := setIn(s.bitmap, s.sub, e, shift+hamtBits)
		c[i] = hslot[V]{bitmap: nb, sub: ns}
		return bitmap, c, added
	case s.hash == e.hash && s.key == e.key:
		c[i] = e
		return bitmap, c, false
	default:
		// Two keys share this slot: push both one level down.
		nb, ns := pairOf(s, e, shift+hamtBits)
		c[i] = hslot[V]{bitmap: nb, sub: ns}
		return bitmap, c, true
	}
}

// pairOf builds the node that holds two entries whose hashes agree up to shift.
func pairOf[V any](a, b hslot[V], shift uint) (uint64, []hslot[V]) {
	if shift >= 64 {
		return 0, []hslot[V]{a, b}
	}
	ba, bb := slotBit(a.hash, shift), slotBit(b.hash, shift)
	if ba == bb {
		nb, ns := pairOf(a, b, shift+hamtBits)
		return ba, []hslot[V]{{bitmap: nb, sub: ns}}
	}
	if ba > bb {
		a, b = b, a
	}
	return ba | bb, []hslot[V]{a, b}
}

// Delete returns a map without key.
func (m hamt[V]) Delete(key string) hamt[V] { return m.delete(key, hashKey(key)) }

func (m hamt[V]) delete(key string, hash uint64) hamt[V] {
	bitmap, sub, removed := deleteIn(m.root.bitmap, m.root.sub, key, hash, 0)
	if !removed {
		return m
	}
	return hamt[V]{root: hslot[V]{bitmap: bitmap, sub: sub}, size: m.size - 1}
}

func deleteIn[V any](bitmap uint64, sub []hslot[V], key string, hash uint64, shift uint) (uint64, []hslot[V], bool) {
	if shift >= 64 {
		for i := range sub {
			if sub[i].key == key {
				return 0, remove(sub, i), true
			}
		}
		return bitmap, sub, false
	}
	bit := slotBit(hash, shift)
	if bitmap&bit == 0 {
		return bitmap, sub, false
	}
	i := index(bitmap, bit)
	s := sub[i]
	if s.sub == nil {
		if s.hash != hash || s.key != key {
			return bitmap, sub, false
		}
		return bitmap &^ bit, remove(sub, i), true
	}
	nb, ns, removed := deleteIn(s.bitmap, s.sub, key, hash, shift+hamtBits)
	switch {
	case !removed:
		return bitmap, sub, false
	case len(ns) == 0:
		return bitmap &^ bit, remove(sub, i), true
	}
	c := clone(sub)
	if len(ns) == 1 && ns[0].sub == nil {
		// Keep the trie canonical: a node left with one entry is
		// replaced by that entry.
		c[i] = ns[0]
	} else {
		c[i] = hslot[V]{bitmap: nb, sub: ns}
	}
	return bitmap, c, true
}

// Range calls f for every key and value, in no particular order, until f
// returns false.
func (m hamt[V]) Range(f func(key string, val V) bool) {
	rangeIn(m.root.sub, f)
}

func rangeIn[V any](sub []hslot[V], f func(string, V) bool) bool {
	for i := range sub {
		if sub[i].sub != nil {
			if !rangeIn(sub[i].sub, f) {
				return false
			}
		} else if !f(sub[i].key, sub[i].val) {
			return false
		}
	}
	return true
}

func clone[T any](s []T) []T { return append([]T(nil), s...) }

// insert returns a new slice with v at position i; s is not modified.
func insert[T any](s []T, i int, v T) []T {
	out := make([]T, len(s)+1)
	copy(out, s[:i])
	out[i] = v
	copy(out[i+1:], s[i:])
	return out
}

// remove returns a new slice without position i, nil when it would be
// empty; s is not modified.
func remove[T any](s []T, i int) []T {
	if len(s) == 1 {
		return nil
	}
	out := make([]T, len(s)-1)
	copy(out, s[:i])
	copy(out[i:], s[i+1:])
	return out
}
