package routing

import (
	"fmt"
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
		if got, ok := m.get(k, hash(k)); !ok || got != v {
			t.Fatalf("get(%q) = %d, %v; want %d, true", k, got, ok, v)
		}
	}
	seen := 0
	m.Range(func(k string, v int) bool {
		seen++
		if want[k] != v {
			t.Fatalf("Range gave %q=%d, want %d", k, v, want[k])
		}
		return true
	})
	if seen != len(want) {
		t.Fatalf("Range visited %d keys, want %d", seen, len(want))
	}
}

func TestHAMTMatchesMap(t *testing.T) {
	hashes := map[string]func(string) uint64{
		"maphash": hashKey,
		// Few distinct hashes: exercises deep paths and collision lists.
		"colliding": func(k string) uint64 { return hashKey(k) % 7 },
		// Hashes equal in their low 60 bits: forces the deepest levels.
		"deep": func(k string) uint64 { return 0x0fffffffffffffff | hashKey(k)<<60 },
	}
	for name, hash := range hashes {
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
					m = m.set(k, hash(k), i)
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
	m := hamt[int]{}.Set("a", 1)
	if got := m.Delete("b"); &got.root[0] != &m.root[0] || got.Len() != 1 {
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
