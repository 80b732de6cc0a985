package routing

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
)

// checkAgainst asserts that m holds exactly the contents of want.
func checkAgainst(t *testing.T, m hamt[int], want map[string]int, hash func(string) uint64) {
	t.Helper()
	if got := m.Len(); got != len(want) {
		t.Fatalf("Len() = %d, want %d", got, len(want))
	}
	for k, v := range want {
		if got, ok := m.get(k, hash(k)); !ok || *got != v {
			t.Fatalf("get(%q) = %v, %v; want %d, true", k, got, ok, v)
		}
	}
	seen := 0
	m.Range(func(k string, v *int) bool {
		seen++
		if want[k] != *v {
			t.Fatalf("Range gave %q=%d, want %d", k, *v, want[k])
		}
		return true
	})
	if seen != len(want) {
		t.Fatalf("Range visited %d keys, want %d", seen, len(want))
	}
}

// testHashes are the hash functions the trie is tested with.
var testHashes = map[string]func(string) uint64{
	"maphash": hashKey,
	// Few distinct hashes: exercises deep paths and collision lists.
	"colliding": func(k string) uint64 { return hashKey(k) % 7 },
	// Hashes equal in their low 56 bits: forces the deepest levels, and
	// collision lists below them.
	"deep": func(k string) uint64 { return 0x00ffffffffffffff | hashKey(k)<<56 },
}

func TestHAMTMatchesMap(t *testing.T) {
	for name, hash := range testHashes {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			var m hamt[int]
			want := map[string]int{}
			var snapshots []hamt[int]
			var wants []map[string]int
			for i := range 4000 {
				k := fmt.Sprintf("k%d", rng.IntN(500))
				if rng.IntN(3) == 0 {
					m = m.delete(k, hash(k))
					delete(want, k)
				} else {
					m = m.set(k, hash(k), &i)
					want[k] = i
				}
				if i%500 == 0 {
					snapshots = append(snapshots, m)
					w := make(map[string]int, len(want))
					for k, v := range want {
						w[k] = v
					}
					wants = append(wants, w)
				}
			}
			checkAgainst(t, m, want, hash)
			// Older versions are unchanged by later updates.
			for i := range snapshots {
				checkAgainst(t, snapshots[i], wants[i], hash)
			}
			// Deleting everything leaves an empty map.
			for k := range want {
				m = m.delete(k, hash(k))
			}
			checkAgainst(t, m, map[string]int{}, hash)
		})
	}
}

func TestHAMTDeleteMissingKeepsMap(t *testing.T) {
	one := 1
	m := hamt[int]{}.Set("a", &one)
	if got := m.Delete("b"); got.root != m.root || got.Len() != 1 {
		t.Fatalf("Delete of a missing key changed the map")
	}
	var empty hamt[int]
	if got := empty.Delete("a"); got.Len() != 0 {
		t.Fatalf("Delete on the empty map: Len() = %d", got.Len())
	}
	if _, ok := empty.Get("a"); ok {
		t.Fatalf("Get on the empty map found a key")
	}
}

// TestHAMTBuilderLeavesPublishedMapsAlone makes batches of changes with
// builders, as Table.Apply does, and checks after each batch that every map
// published before it still holds what it held: a builder changes in place
// only the nodes it allocated itself, never one reachable from a map it
// started from or returned.
func TestHAMTBuilderLeavesPublishedMapsAlone(t *testing.T) {
	for name, hash := range testHashes {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			var m hamt[int]
			want := map[string]int{}
			var published []hamt[int]
			var wants []map[string]int
			for batch := range 300 {
				b := m.builder()
				for i := range 1 + rng.IntN(40) {
					k := fmt.Sprintf("k%d", rng.IntN(400))
					if rng.IntN(3) == 0 {
						b.delete(k, hash(k))
						delete(want, k)
					} else {
						v := batch*100 + i
						b.set(k, hash(k), &v)
						want[k] = v
					}
				}
				m = b.Map()
				// The builder goes on after Map, as a new batch: the
				// map it returned must not change either.
				v := -1
				for range 3 {
					k := fmt.Sprintf("k%d", rng.IntN(400))
					b.delete(k, hash(k))
					k = fmt.Sprintf("k%d", rng.IntN(400))
					b.set(k, hash(k), &v)
				}
				checkAgainst(t, m, want, hash)
				published = append(published, m)
				wants = append(wants, maps.Clone(want))
			}
			for i := range published {
				checkAgainst(t, published[i], wants[i], hash)
			}
		})
	}
}

// TestHAMTBuilderCopiesOncePerBatch checks what the builder is for: the
// nodes on the path of a key are copied by the first change under them in a
// batch, and changed in place by the next ones.
func TestHAMTBuilderCopiesOncePerBatch(t *testing.T) {
	var m hamt[int]
	for i := range 2000 {
		m = m.Set(fmt.Sprint(i), &i)
	}
	b := m.builder()
	v := -1
	b.Set("0", &v)
	root := b.m.root.ptr
	if root == m.root.ptr {
		t.Fatalf("the first change did not copy the root")
	}
	b.Set("1", &v)
	b.Delete("2")
	b.Set("new", &v)
	if b.m.root.ptr != root {
		t.Fatalf("a later change in the same batch copied the root again")
	}
	next := b.Map()
	b.Set("3", &v)
	if b.m.root.ptr == next.root.ptr {
		t.Fatalf("a change after Map did not copy the root of the map it returned")
	}
	if got, ok := next.Get("3"); !ok || *got != 3 {
		t.Fatalf(`next.Get("3") = %v, %v; want 3, true`, got, ok)
	}
}
