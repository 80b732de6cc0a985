package routing

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
	"unsafe"
)

// hashSeed keys every hamt of the process. Tables live in memory only, so a
// per-process random seed costs nothing and keeps hash flooding out of reach.
var hashSeed = maphash.MakeSeed()

func hashKey(key string) uint64 { return maphash.String(hashSeed, key) }

// hamt is a persistent hash map from strings to *T: a hash array mapped trie,
// 16 ways per level. Set and Delete return a new map and leave the receiver
// unchanged; they copy only the nodes on the path to the key, so an update
// costs O(log16 n) whatever the size of the map. A hamtBuilder makes a series
// of updates without copying the same node twice. The zero value is an empty
// map. A hamt is safe to share between goroutines, because no node reachable
// from a hamt is modified once the update or the builder that made it has
// returned it.
//
// The cost of an update is the bytes it copies (each copy is garbage once the
// previous version is dropped, and the garbage collector's work grows with
// the bytes allocated, and each pointer copied pays a write barrier while a
// cycle runs), so a slot is 24 bytes and a node at most 16 slots (384 bytes):
// in a map of 200k keys, a path copies about 1.6 KB (five levels, the last
// one sparse). Wider nodes make lookups shorter but updates dearer: 64 ways
// of 40-byte slots copied 7 KB per path, 32 ways of 24 bytes 2.4 KB.
type hamt[T any] struct {
	root hslot[T] // a node; zero when the map is empty
	size int
}

// hslot is either an inner node or an entry, told apart by nodeFlag in bits.
//
// A node (nodeFlag set) holds in the low 16 bits of bits the bitmap of which
// of the 16 slots of the next level are present, in ptr its first element
// (the array has popcount(bitmap) slots, in bit order), and in aux the
// editToken of the builder that allocated the array, nil if none: only that
// builder may change the array, and only until it returns the map. Keeping a
// node's bitmap and array in its parent's slot makes a lookup touch one array
// per level. Below the last level (shift >= hashBits) a node is a collision
// list: bits holds nodeFlag and its length.
//
// An entry (nodeFlag clear) holds in bits its key's hash without nodeFlag, in
// ptr its key (see keyBlob), and in aux its value, a *T. The key and the value
// are both in the slot, so a lookup loads them in parallel.
type hslot[T any] struct {
	bits uint64
	ptr  unsafe.Pointer
	aux  unsafe.Pointer
}

// editToken identifies a builder's transient edit. Its one byte gives each
// token an address of its own.
type editToken struct{ _ byte }

const (
	hamtBits   = 4
	hamtWidth  = 1 << hamtBits
	bitmapMask = 1<<hamtWidth - 1
	// hashBits is how many bits of the hash the levels consume: 15 levels
	// of 4 bits. Keys whose hashes agree on them share a collision list.
	hashBits = 60
	nodeFlag = 1 << 63
)

// The levels consume whole slices of hashBits, and a bitmap leaves nodeFlag
// free.
var (
	_ [hashBits % hamtBits]struct{} // must be [0]: hamtBits divides hashBits
	_ [63 - hamtWidth]struct{}      // must not be negative: bitmap below nodeFlag
)

func (s *hslot[T]) isNode() bool { return s.bits&nodeFlag != 0 }

// children returns the slots of the node s.
func (s *hslot[T]) children() []hslot[T] {
	return unsafe.Slice((*hslot[T])(s.ptr), bits.OnesCount64(s.bits&bitmapMask))
}

// collision returns the entries of the collision list s.
func (s *hslot[T]) collision() []hslot[T] {
	return unsafe.Slice((*hslot[T])(s.ptr), s.bits&^nodeFlag)
}

// key returns the key of the entry s.
func (s *hslot[T]) key() string { return keyString(s.ptr) }

// hasKey reports whether the entry s has key key. It compares the lengths
// before the bytes.
func (s *hslot[T]) hasKey(key string) bool {
	n := *(*byte)(s.ptr)
	if n >= 0x80 {
		return s.key() == key
	}
	return int(n) == len(key) && unsafe.String((*byte)(unsafe.Add(s.ptr, 1)), len(key)) == key
}

// val returns the value of the entry s.
func (s *hslot[T]) val() *T { return (*T)(s.aux) }

// keyBlob returns a copy of key in a pointer-free allocation, its length
// first (as a uvarint), then its bytes: an entry holds the key in one word,
// and the allocation costs the garbage collector nothing to scan.
func keyBlob(key string) unsafe.Pointer {
	b := make([]byte, 0, binary.MaxVarintLen64+len(key))
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return unsafe.Pointer(unsafe.SliceData(b))
}

// keyString returns the key stored by keyBlob at p.
func keyString(p unsafe.Pointer) string {
	if n := *(*byte)(p); n < 0x80 {
		return unsafe.String((*byte)(unsafe.Add(p, 1)), int(n))
	}
	var n uint64
	for i := 0; ; i++ {
		b := *(*byte)(unsafe.Add(p, i))
		n |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return unsafe.String((*byte)(unsafe.Add(p, i+1)), int(n))
		}
	}
}

// slotBit returns the bit of hash's slot in a node at level shift.
func slotBit(hash uint64, shift uint) uint64 { return 1 << ((hash >> shift) & (hamtWidth - 1)) }

// index returns the position in a node's array of the slot of bit.
func index(bitmap, bit uint64) int { return bits.OnesCount64(bitmap & (bit - 1)) }

// Len reports the number of keys.
func (m hamt[T]) Len() int { return m.size }

// Get returns the value stored under key.
func (m hamt[T]) Get(key string) (*T, bool) { return m.get(key, hashKey(key)) }

func (m hamt[T]) get(key string, hash uint64) (*T, bool) {
	hash &^= nodeFlag
	h := hash // shifted by a level's bits at each level
	bitmap, sub := m.root.bits&bitmapMask, m.root.ptr
	for range hashBits / hamtBits {
		bit := uint64(1) << (h & (hamtWidth - 1))
		if bitmap&bit == 0 {
			return nil, false
		}
		s := (*hslot[T])(unsafe.Add(sub, uintptr(index(bitmap, bit))*unsafe.Sizeof(hslot[T]{})))
		if !s.isNode() {
			if s.bits == hash && s.hasKey(key) {
				return s.val(), true
			}
			return nil, false
		}
		bitmap, sub = s.bits&^nodeFlag, s.ptr
		h >>= hamtBits
	}
	// sub is a collision list of bitmap entries.
	for _, e := range unsafe.Slice((*hslot[T])(sub), bitmap) {
		if e.bits == hash && e.hasKey(key) {
			return e.val(), true
		}
	}
	return nil, false
}

// Set returns a map in which key maps to val.
func (m hamt[T]) Set(key string, val *T) hamt[T] {
	var ed editor[T] // no token: every node on the path is copied
	ed.set(&m, key, hashKey(key), val)
	return m
}

func (m hamt[T]) set(key string, hash uint64, val *T) hamt[T] {
	var ed editor[T]
	ed.set(&m, key, hash, val)
	return m
}

// Delete returns a map without key.
func (m hamt[T]) Delete(key string) hamt[T] {
	var ed editor[T]
	ed.delete(&m, key, hashKey(key))
	return m
}

func (m hamt[T]) delete(key string, hash uint64) hamt[T] {
	var ed editor[T]
	ed.delete(&m, key, hash)
	return m
}

// hamtBuilder makes a series of updates to a hamt, changing in place the
// nodes it has already copied (a transient, in Clojure's words): n updates
// of keys under the same node copy that node once, not n times. The nodes it
// allocates carry its editToken; nodes of the map it started from, or of any
// map returned earlier by Map, carry another token or none, so they are
// copied before a change, never changed. The zero value starts from the
// empty map. A builder is not safe for concurrent use; the maps it returns
// are.
type hamtBuilder[T any] struct {
	m  hamt[T]
	ed editor[T]
}

// builder returns a builder starting from m.
func (m hamt[T]) builder() hamtBuilder[T] { return hamtBuilder[T]{m: m} }

// Set makes key map to val.
func (b *hamtBuilder[T]) Set(key string, val *T) { b.set(key, hashKey(key), val) }

func (b *hamtBuilder[T]) set(key string, hash uint64, val *T) {
	b.token()
	b.ed.set(&b.m, key, hash, val)
}

// Delete removes key.
func (b *hamtBuilder[T]) Delete(key string) { b.delete(key, hashKey(key)) }

func (b *hamtBuilder[T]) delete(key string, hash uint64) {
	b.token()
	b.ed.delete(&b.m, key, hash)
}

// token gives the builder a token of its own before its first change.
func (b *hamtBuilder[T]) token() {
	if b.ed.tok == nil {
		b.ed.tok = new(editToken)
	}
}

// Map returns the map built so far. Its nodes are frozen: the builder drops
// its token, so that later updates copy them like any other.
func (b *hamtBuilder[T]) Map() hamt[T] {
	b.ed.tok = nil
	return b.m
}

// editor updates nodes in place when they carry its token (tok != nil) and
// copies the others; the copies carry its token.
type editor[T any] struct {
	tok *editToken
}

// owns reports whether ed may change the array of the node n in place.
func (ed editor[T]) owns(n *hslot[T]) bool {
	return ed.tok != nil && n.aux == unsafe.Pointer(ed.tok)
}

// setArray makes the node n hold slots, an array ed allocated.
func (ed editor[T]) setArray(n *hslot[T], slots []hslot[T]) {
	n.ptr, n.aux = unsafe.Pointer(unsafe.SliceData(slots)), unsafe.Pointer(ed.tok)
}

// own returns the array of the node n, which ed may change: n's own array if
// ed allocated it, else a copy that n now holds.
func (ed editor[T]) own(n *hslot[T], slots []hslot[T]) []hslot[T] {
	if !ed.owns(n) {
		slots = clone(slots)
		ed.setArray(n, slots)
	}
	return slots
}

// set sets key to val in m.
func (ed editor[T]) set(m *hamt[T], key string, hash uint64, val *T) {
	m.root.bits |= nodeFlag // the zero root is an empty node
	if ed.setIn(&m.root, key, hash&^nodeFlag, val, 0) {
		m.size++
	}
}

// entry returns a new entry slot.
func entry[T any](key string, hash uint64, val *T) hslot[T] {
	return hslot[T]{bits: hash, ptr: keyBlob(key), aux: unsafe.Pointer(val)}
}

// setIn sets key to val under the node n at level shift, making the nodes
// on the way ed's. It reports whether the key was added.
func (ed editor[T]) setIn(n *hslot[T], key string, hash uint64, val *T, shift uint) bool {
	if shift >= hashBits {
		list := n.collision()
		for i := range list {
			if list[i].bits == hash && list[i].key() == key {
				list = ed.own(n, list)
				list[i].aux = unsafe.Pointer(val)
				return false
			}
		}
		ed.setArray(n, insert(list, len(list), entry(key, hash, val)))
		n.bits++
		return true
	}
	bitmap, bit := n.bits&bitmapMask, slotBit(hash, shift)
	i := index(bitmap, bit)
	slots := n.children()
	if bitmap&bit == 0 {
		ed.setArray(n, insert(slots, i, entry(key, hash, val)))
		n.bits |= bit
		return true
	}
	slots = ed.own(n, slots)
	s := &slots[i]
	switch {
	case s.isNode():
		return ed.setIn(s, key, hash, val, shift+hamtBits)
	case s.bits == hash && s.key() == key:
		s.aux = unsafe.Pointer(val) // the key stays
		return false
	default:
		// Two keys share this slot: push both one level down.
		*s = ed.pair(*s, entry(key, hash, val), shift+hamtBits)
		return true
	}
}

// pair returns a node at level shift holding two entries whose hashes agree
// on the levels above.
func (ed editor[T]) pair(a, b hslot[T], shift uint) hslot[T] {
	var n hslot[T]
	if shift >= hashBits {
		n.bits = nodeFlag | 2
		ed.setArray(&n, []hslot[T]{a, b})
		return n
	}
	ba, bb := slotBit(a.bits, shift), slotBit(b.bits, shift)
	n.bits = nodeFlag | ba | bb
	switch {
	case ba == bb:
		ed.setArray(&n, []hslot[T]{ed.pair(a, b, shift+hamtBits)})
	case ba < bb:
		ed.setArray(&n, []hslot[T]{a, b})
	default:
		ed.setArray(&n, []hslot[T]{b, a})
	}
	return n
}

// delete removes key from m, if it is there: a missing key leaves m as it
// is, with no copy.
func (ed editor[T]) delete(m *hamt[T], key string, hash uint64) {
	if _, ok := m.get(key, hash); !ok {
		return
	}
	ed.deleteIn(&m.root, key, hash&^nodeFlag, 0)
	m.size--
	if m.size == 0 {
		m.root = hslot[T]{}
	}
}

// deleteIn removes key, which is present, from under the node n at level
// shift, making the nodes on the way ed's. The trie stays canonical: a node
// left with a single entry (or a collision list left with one) is replaced
// by that entry in its parent, and a node left empty is removed from it, so
// that the shape of the trie depends only on its keys.
func (ed editor[T]) deleteIn(n *hslot[T], key string, hash uint64, shift uint) {
	if shift >= hashBits {
		list := n.collision()
		j := 0
		for list[j].bits != hash || list[j].key() != key {
			j++
		}
		if len(list) == 2 {
			*n = list[1-j]
			return
		}
		ed.setArray(n, remove(list, j))
		n.bits--
		return
	}
	bitmap, bit := n.bits&bitmapMask, slotBit(hash, shift)
	i := index(bitmap, bit)
	slots := n.children()
	if s := &slots[i]; s.isNode() {
		slots = ed.own(n, slots)
		s = &slots[i]
		ed.deleteIn(s, key, hash, shift+hamtBits)
		if !s.isNode() || shift+hamtBits >= hashBits {
			return // an entry now, or a collision list still
		}
		switch sub := s.children(); {
		case len(sub) == 0:
			// Emptied: remove the slot below.
		case len(sub) == 1 && !sub[0].isNode():
			*s = sub[0]
			return
		default:
			return
		}
	}
	ed.setArray(n, remove(slots, i))
	n.bits &^= bit
}

// Range calls f for every key and value, in no particular order, until f
// returns false.
func (m hamt[T]) Range(f func(key string, val *T) bool) {
	if m.root.bits&bitmapMask != 0 {
		rangeIn(m.root.children(), 0, f)
	}
}

func rangeIn[T any](slots []hslot[T], shift uint, f func(string, *T) bool) bool {
	for i := range slots {
		s := &slots[i]
		switch {
		case !s.isNode():
			if !f(s.key(), s.val()) {
				return false
			}
		case shift+hamtBits >= hashBits:
			for _, e := range s.collision() {
				if !f(e.key(), e.val()) {
					return false
				}
			}
		default:
			if !rangeIn(s.children(), shift+hamtBits, f) {
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
