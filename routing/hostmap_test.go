package routing

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
)

// hostMapVersion is one published version of a hostMap and the routes it
// must give.
type hostMapVersion struct {
	version uint64
	m       hostMap
	want    map[string]*appRef
}

// checkHostMap asserts that v.m routes every domain of domains as v.want
// says, through the readers' path (get, with its shortcut of marks) and the
// writer's (lookup).
func checkHostMap(t *testing.T, v hostMapVersion, domains []string, when string) {
	t.Helper()
	for _, d := range domains {
		want, wantOK := v.want[d]
		if got, ok := v.m.get(d); got != want || ok != wantOK {
			t.Fatalf("%s: get(%q) = %p, %v; want %p, %v", when, d, got, ok, want, wantOK)
		}
		if got, ok := v.m.lookup(d); got != want || ok != wantOK {
			t.Fatalf("%s: lookup(%q) = %p, %v; want %p, %v", when, d, got, ok, want, wantOK)
		}
	}
}

// testRoutes returns apps apps' references and domains domain names.
func testRoutes(apps, domains int) ([]*appRef, []string) {
	refs := make([]*appRef, apps)
	for i := range refs {
		refs[i] = new(appRef)
	}
	names := make([]string, domains)
	for i := range names {
		names[i] = fmt.Sprintf("d%d.example.com", i)
	}
	return refs, names
}

// TestHostMapVersionsKeepTheirRoutes drives a hostMap through random
// batches of routes set and removed, with merges started at random versions
// and installed some batches later (as the table's background merge does),
// and checks after every batch that every version published so far still
// routes as it did when published.
func TestHostMapVersionsKeepTheirRoutes(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	// More apps than a batch changes, so that most lookups take the
	// shortcut past the delta.
	refs, domains := testRoutes(60, 100)
	var (
		cur       hostMap
		version   uint64
		want      = map[string]*appRef{}
		published []hostMapVersion
		merging   *hostMapVersion // the version a merge started from; nil: none
		changed   []string        // domains changed since
		merges    int
	)
	for batch := range 150 {
		version++
		var rec *[]string
		if merging != nil {
			rec = &changed
		}
		b := cur.builder(version, rec)
		for range 1 + rng.IntN(20) {
			d := domains[rng.IntN(len(domains))]
			if rng.IntN(3) == 0 {
				if _, ok := want[d]; ok {
					b.Delete(d)
				}
				delete(want, d)
			} else {
				ref := refs[rng.IntN(len(refs))]
				b.Set(d, ref)
				want[d] = ref
			}
		}
		cur = b.Map()
		published = append(published, hostMapVersion{version, cur, maps.Clone(want)})
		switch {
		case merging == nil && rng.IntN(4) == 0:
			from := published[len(published)-1]
			merging, changed = &from, nil
		case merging != nil && rng.IntN(3) == 0:
			// The merge is done: a new version with the new base.
			version++
			cur = cur.rebased(merging.m.merged(), merging.version, version, changed)
			published = append(published, hostMapVersion{version, cur, maps.Clone(want)})
			merging = nil
			merges++
		}
		for _, v := range published {
			checkHostMap(t, v, domains, fmt.Sprintf("after batch %d, version %d", batch, v.version))
		}
	}
	if merges < 10 {
		t.Fatalf("%d merges, want at least 10: the test does not exercise them", merges)
	}
}

// TestRouteLogVersions adds routes and removals to a log that starts small,
// so that it grows many times, and checks after each version that every
// earlier version, read through the log it was published with, still finds
// the routes it had.
func TestRouteLogVersions(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	refs, domains := testRoutes(10, 300)
	type published struct {
		log  *routeLog
		want map[string]*appRef
	}
	var (
		log   = newRouteLog(1)
		want  = map[string]*appRef{}
		views []published
		grown int
	)
	for version := uint64(1); version <= 150; version++ {
		before := log
		for range 1 + rng.IntN(10) {
			d := domains[rng.IntN(len(domains))]
			ref := refs[rng.IntN(len(refs))]
			if rng.IntN(4) == 0 {
				ref = removed // the log keeps removals as routes
			}
			log = log.add(d, ref, version)
			want[d] = ref
		}
		if log != before {
			grown++
		}
		views = append(views, published{log, maps.Clone(want)})
		for v, p := range views {
			for _, d := range domains {
				wantRef, wantOK := p.want[d]
				if got, ok := p.log.route(d, uint64(v+1)); got != wantRef || ok != wantOK {
					t.Fatalf("after version %d: version %d routes %s to %p, %v; want %p, %v", version, v+1, d, got, ok, wantRef, wantOK)
				}
			}
			n := 0
			p.log.each(uint64(v+1), func(d string, ref *appRef) {
				n++
				if ref != p.want[d] {
					t.Fatalf("after version %d: each at version %d gives %s to %p, want %p", version, v+1, d, ref, p.want[d])
				}
			})
			if n != len(p.want) {
				t.Fatalf("after version %d: each at version %d gives %d domains, want %d", version, v+1, n, len(p.want))
			}
		}
	}
	if grown < 4 {
		t.Fatalf("the log grew %d times, want at least 4: the test does not exercise it", grown)
	}
}

// TestTableMergesInBackground applies batches that each move every one of
// 3000 domains to another app, so that background merges start and land
// between batches and the host map's log grows, while a reader checks
// random domains of random published snapshots; every snapshot must keep
// routing as it did when published, and the merges must end.
func TestTableMergesInBackground(t *testing.T) {
	const apps, perApp = 300, 10
	tb := NewTable(zerolog.Nop(), nil)
	type version struct {
		s    *Snapshot
		want map[string]string // domain → app
	}
	var (
		mu       sync.Mutex // guards versions
		versions []version
	)
	check := func(v version, d, when string) {
		if a, ok := v.s.Lookup(d); !ok || a.Name != v.want[d] {
			t.Errorf("%s: version %d routes %s to %v (%v), want %s", when, v.s.Version(), d, a, ok, v.want[d])
		}
	}
	done := make(chan struct{})
	var reader sync.WaitGroup
	reader.Go(func() {
		rng := rand.New(rand.NewPCG(9, 10))
		for checked := 0; ; checked++ {
			select {
			case <-done:
				if checked < 1000 {
					t.Errorf("the reader checked %d lookups, want at least 1000", checked)
				}
				return
			default:
			}
			mu.Lock()
			n := len(versions)
			var v version
			if n > 0 {
				v = versions[rng.IntN(n)]
			}
			mu.Unlock()
			if n == 0 {
				checked--
				runtime.Gosched()
				continue
			}
			check(v, fmt.Sprintf("dom-%d.example.com", rng.IntN(apps*perApp)), "while batches are applied")
		}
	})
	defer func() { close(done); reader.Wait() }()

	gen := uint64(0)
	for round := range 12 {
		gen++
		want := map[string]string{}
		batch := make([]events.Event, 0, apps)
		for a := range apps {
			app := fmt.Sprintf("app-%d", a)
			var ds []string
			for k := range perApp {
				// Each round hands every domain to another app.
				d := fmt.Sprintf("dom-%d.example.com", ((a+round)%apps)*perApp+k)
				ds = append(ds, d)
				want[d] = app
			}
			batch = append(batch, events.Event{Kind: events.KindDomains, App: app, Generation: gen, Domains: ds})
		}
		tb.Apply(batch)
		mu.Lock()
		versions = append(versions, version{tb.Snapshot(), want})
		published := slices.Clone(versions)
		mu.Unlock()
		for _, v := range published {
			for d := range v.want {
				check(v, d, fmt.Sprintf("after round %d", round))
			}
		}
		if t.Failed() {
			return
		}
	}
	// The last merge lands, and the table still routes as the last round said.
	if tb.Snapshot().hosts.baseVer == 0 {
		t.Fatal("no merge landed between batches: the test does not exercise them")
	}
	s := settle(t, tb)
	for d := range versions[len(versions)-1].want {
		check(version{s, versions[len(versions)-1].want}, d, "after the merges")
	}
}

// settle merges the delta of tb's host map and waits until the merges end,
// as a table does once events stop: what is left in the delta is less than
// quietMin routes.
func settle(tb testing.TB, table *Table) *Snapshot {
	tb.Helper()
	for {
		table.mergeWhenQuiet()
		table.mu.Lock()
		s, merging := table.cur.Load(), table.merging
		table.mu.Unlock()
		if !merging && s.hosts.changes < quietMin {
			return s
		}
		if merging {
			<-s.Changed()
		}
	}
}

// TestTableMergesWhenQuiet checks that a delta too small to need a merge
// goes into the base once events stop, unless it is smaller than quietMin:
// then a merge would copy the whole host map for a few routes.
func TestTableMergesWhenQuiet(t *testing.T) {
	tb := NewTable(zerolog.Nop(), nil)
	tb.quietAfter = 10 * time.Millisecond
	want := map[string]string{}
	var batch []events.Event
	for i := range quietMin {
		app, d := fmt.Sprintf("app-%d", i), fmt.Sprintf("d%d.example.com", i)
		batch = append(batch, domains(app, 1, d))
		want[d] = app
	}
	tb.Apply(batch)
	timeout := time.After(10 * time.Second)
	for s := tb.Snapshot(); s.hosts.changes > 0; s = tb.Snapshot() {
		select {
		case <-s.Changed():
		case <-timeout:
			t.Fatalf("the delta still holds %d routes 10 s after the last event", s.hosts.changes)
		}
	}
	s := tb.Snapshot()
	if len(s.hosts.base) != quietMin {
		t.Fatalf("base holds %d domains, want %d", len(s.hosts.base), quietMin)
	}
	for d, app := range want {
		if a, ok := s.Lookup(d); !ok || a.Name != app {
			t.Errorf("%s routes to %v (%v), want %s", d, a, ok, app)
		}
	}

	// A few routes changed: no merge, they are served from the delta.
	tb.Apply([]events.Event{domains("app-0", 2, "d0.example.com", "extra.example.com")})
	tb.mergeWhenQuiet()
	tb.mu.Lock()
	merging := tb.merging
	tb.mu.Unlock()
	if s := tb.Snapshot(); merging || s.hosts.changes != 1 {
		t.Fatalf("merging %v, delta %d after one new route, want no merge and the route in the delta", merging, s.hosts.changes)
	}
	if a, ok := tb.Snapshot().Lookup("extra.example.com"); !ok || a.Name != "app-0" {
		t.Fatalf("extra.example.com routes to %v (%v), want app-0", a, ok)
	}
}
