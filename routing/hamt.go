package routing

import (
	"hash/maphash"
	"math/bits"
	"unsafe"
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
	bitmap uint64
	root   []hslot[V]
	size   int
}

// hslot is either an inner node or an entry. A node (sub != nil) holds in
// bits the bitmap of which of the 64 slots of the next level are present,
// and in sub their first element: the array has popcount(bits) slots, in
// bit order. Keeping a node's bitmap and array in its parent's slot makes a
// lookup touch one array per level, and a slot 40 bytes (for a pointer V)
// keeps the arrays an update copies small. Below the last level (shift >=
// 64) a node is a collision list: bits holds its length. An entry (sub ==
// nil) holds its key's hash in bits.
type hslot[V any] struct {
	bits uint64
	sub  *hslot[V]
	key  string
	val  V
}

// node returns the bitmap and slots of the node s.
func (s *hslot[V]) node() (uint64, []hslot[V]) {
	return s.bits, unsafe.Slice(s.sub, bits.OnesCount64(s.bits))
}

// collision returns the entries of the collision list s.
func (s *hslot[V]) collision() []hslot[V] { return unsafe.Slice(s.sub, s.bits) }

// mkNode returns the slot of a node with bitmap and slots.
func mkNode[V any](bitmap uint64, slots []hslot[V]) hslot[V] {
	return hslot[V]{bits: bitmap, sub: unsafe.SliceData(slots)}
}

// mkCollision returns the slot of a collision list.
func mkCollision[V any](entries []hslot[V]) hslot[V] {
	return hslot[V]{bits: uint64(len(entries)), sub: unsafe.SliceData(entries)}
}

const hamtBits = 6

func slotBit(hash uint64, shift uint) uint64 { return 1 << ((hash >> shift) & 63) }

func index(bitmap, bit uint64) int { return bits.OnesCount64(bitmap & (bit - 1)) }

// Len reports the number of keys.
func (m hamt[V]) Len() int { return m.size }

// Get returns the value stored under key.
func (m hamt[V]) Get(key string) (V, bool) { return m.get(key, hashKey(key)) }

func (m hamt[V]) get(key string, hash uint64) (V, bool) {
	bitmap, sub := m.bitmap, m.root
	for shift := uint(0); ; shift += hamtBits {
		bit := slotBit(hash, shift)
		if bitmap&bit == 0 {
			break
		}
		s := &sub[index(bitmap, bit)]
		if s.sub == nil {
			if s.bits == hash && s.key == key {
				return s.val, true
			}
			break
		}
		if shift+hamtBits >= 64 {
			for _, e := range s.collision() {
				if e.key == key {
					return e.val, true
				}
			}
			break
		}
		bitmap, sub = s.node()
	}
	var zero V
	return zero, false
}

// Set returns a map in which key maps to val.
func (m hamt[V]) Set(key string, val V) hamt[V] { return m.set(key, hashKey(key), val) }

func (m hamt[V]) set(key string, hash uint64, val V) hamt[V] {
	bitmap, root, added := setIn(m.bitmap, m.root, hslot[V]{bits: hash, key: key, val: val}, 0)
	size := m.size
	if added {
		size++
	}
	return hamt[V]{bitmap: bitmap, root: root, size: size}
}

// setIn returns the node (bitmap, slots) at level shift with entry e set.
func setIn[V any](bitmap uint64, slots []hslot[V], e hslot[V], shift uint) (uint64, []hslot[V], bool) {
	bit := slotBit(e.bits, shift)
	i := index(bitmap, bit)
	if bitmap&bit == 0 {
		return bitmap | bit, insert(slots, i, e), true
	}
	s, c := slots[i], clone(slots)
	added := true
	switch {
	case s.sub != nil && shift+hamtBits >= 64:
		list := s.collision()
		j := len(list)
		for k := range list {
			if list[k].key == e.key {
				j, added = k, false
			}
		}
		if added {
			list = insert(list, j, e)
		} else {
			list = clone(list)
			list[j] = e
		}
		c[i] = mkCollision(list)
	case s.sub != nil:
		nb, ns := s.node()
		nb, ns, added = setIn(nb, ns, e, shift+hamtBits)
		c[i] = mkNode(nb, ns)
	case s.bits == e.bits && s.key == e.key:
		c[i], added = e, false
	default:
		// Two keys share this slot: push both one level down.
		c[i] = pairOf(s, e, shift+hamtBits)
	}
	return bitmap, c, added
}

// pairOf returns the slot of a node at level shift holding two entries whose
// hashes agree on the levels above.
func pairOf[V any](a, b hslot[V], shift uint) hslot[V] {
	if shift >= 64 {
		return mkCollision([]hslot[V]{a, b})
	}
	ba, bb := slotBit(a.bits, shift), slotBit(b.bits, shift)
	if ba == bb {
		return mkNode(ba, []hslot[V]{pairOf(a, b, shift+hamtBits)})
	}
	if ba > bb {
		a, b = b, a
	}
	return mkNode(ba|bb, []hslot[V]{a, b})
}

// Delete returns a map without key.
func (m hamt[V]) Delete(key string) hamt[V] { return m.delete(key, hashKey(key)) }

func (m hamt[V]) delete(key string, hash uint64) hamt[V] {
	bitmap, root, removed := deleteIn(m.bitmap, m.root, key, hash, 0)
	if !removed {
		return m
	}
	return hamt[V]{bitmap: bitmap, root: root, size: m.size - 1}
}

// deleteIn returns the node (bitmap, slots) at level shift without key.
func deleteIn[V any](bitmap uint64, slots []hslot[V], key string, hash uint64, shift uint) (uint64, []hslot[V], bool) {
	bit := slotBit(hash, shift)
	if bitmap&bit == 0 {
		return bitmap, slots, false
	}
	i := index(bitmap, bit)
	s := slots[i]
	var repl hslot[V] // what replaces s, if anything remains of it
	switch {
	case s.sub == nil:
		if s.bits != hash || s.key != key {
			return bitmap, slots, false
		}
		return bitmap &^ bit, remove(slots, i), true
	case shift+hamtBits >= 64:
		list := s.collision()
		j := -1
		for k := range list {
			if list[k].key == key {
				j = k
			}
		}
		if j < 0 {
			return bitmap, slots, false
		}
		repl = mkCollision(remove(list, j))
		if len(list) == 2 {
			repl = list[1-j]
		}
	default:
		nb, ns := s.node()
		nb, ns, removed := deleteIn(nb, ns, key, hash, shift+hamtBits)
		switch {
		case !removed:
			return bitmap, slots, false
		case len(ns) == 0:
			return bitmap &^ bit, remove(slots, i), true
		case len(ns) == 1 && ns[0].sub == nil:
			// Keep the trie canonical: a node left with one
			// entry is replaced by that entry.
			repl = ns[0]
		default:
			repl = mkNode(nb, ns)
		}
	}
	c := clone(slots)
	c[i] = repl
	return bitmap, c, true
}

// Range calls f for every key and value, in no particular order, until f
// returns false.
func (m hamt[V]) Range(f func(key string, val V) bool) {
	rangeIn(m.root, 0, f)
}

func rangeIn[V any](slots []hslot[V], shift uint, f func(string, V) bool) bool {
	for i := range slots {
		s := &slots[i]
		switch {
		case s.sub == nil:
			if !f(s.key, s.val) {
				return false
			}
		case shift+hamtBits >= 64:
			for _, e := range s.collision() {
				if !f(e.key, e.val) {
					return false
				}
			}
		default:
			_, sub := s.node()
			if !rangeIn(sub, shift+hamtBits, f) {
				return false
			}
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
