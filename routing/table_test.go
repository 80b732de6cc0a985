package routing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
)

func cs(ids ...string) []events.Container {
	out := make([]events.Container, len(ids))
	for i, id := range ids {
		out[i] = events.Container{ID: id, Address: fmt.Sprintf("10.0.0.%d:5000", i+1)}
	}
	return out
}

func deploy(app string, gen uint64, ids ...string) events.Event {
	return events.Event{Kind: events.KindDeploy, App: app, Generation: gen, Containers: cs(ids...)}
}

func domains(app string, gen uint64, ds ...string) events.Event {
	return events.Event{Kind: events.KindDomains, App: app, Generation: gen, Domains: ds}
}

func del(app string, gen uint64) events.Event {
	return events.Event{Kind: events.KindDelete, App: app, Generation: gen}
}

// owner returns the app host routes to, or "".
func owner(s *Snapshot, host string) string {
	if a, ok := s.Lookup(host); ok {
		return a.Name
	}
	return ""
}

func ids(a *App) []string {
	var out []string
	for _, c := range a.Containers {
		out = append(out, c.ID)
	}
	return out
}

func TestLookupNormalisesHost(t *testing.T) {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	tb.Apply([]events.Event{
		deploy("exact", 1, "a"), domains("exact", 2, "www.example.com"),
		deploy("wild", 1, "b"), domains("wild", 2, "*.example.com"),
	})
	s := tb.Snapshot()
	tests := []struct{ host, want string }{
		{"www.example.com", "exact"},
		{"WWW.Example.COM", "exact"},
		{"www.example.com:8080", "exact"},
		{"www.example.com.", "exact"},
		{"www.example.com.:80", "exact"},
		{"api.example.com", "wild"},
		{"API.example.com:443", "wild"},
		{"example.com", ""},       // a wildcard covers one label, not the apex
		{"a.b.example.com", ""},   // ... nor two
		{"www.example.org", ""},   // unknown
		{"", ""},                  // no host
		{"[::1]:80", ""},          // IP literal
		{"127.0.0.1", ""},         // IP literal
		{".", ""},                 // nothing
		{"www.example.com..", ""}, // one trailing dot only
	}
	for _, tt := range tests {
		if got := owner(s, tt.host); got != tt.want {
			t.Errorf("Lookup(%q) = %q, want %q", tt.host, got, tt.want)
		}
	}
}

func TestApplyLifecycle(t *testing.T) {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	apply := func(evs ...events.Event) *Snapshot {
		tb.Apply(evs)
		return tb.Snapshot()
	}
	s := apply(deploy("web", 1, "a", "b"), domains("web", 2, "web.example.com"))
	a, _ := s.Lookup("web.example.com")
	if got, want := ids(a), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("after deploy: containers %v, want %v", got, want)
	}
	if a.Generation != 2 {
		t.Errorf("generation %d, want 2", a.Generation)
	}

	s = apply(events.Event{Kind: events.KindScale, App: "web", Generation: 3})
	a, _ = s.Lookup("web.example.com")
	if len(a.Containers) != 0 {
		t.Fatalf("scaled to zero: still %v", ids(a))
	}
	if _, res := a.pick("", 0, nil); res != noneLeft {
		t.Fatalf("pick on an app without containers: %v, want noneLeft", res)
	}

	s = apply(domains("web", 4, "new.example.com"))
	if owner(s, "web.example.com") != "" || owner(s, "new.example.com") != "web" {
		t.Fatalf("domains change not applied: old=%q new=%q", owner(s, "web.example.com"), owner(s, "new.example.com"))
	}

	s = apply(del("web", 5))
	if owner(s, "new.example.com") != "" || s.Len() != 0 {
		t.Fatalf("delete left routes: %v apps", s.Len())
	}

	// Older events after the delete change nothing; a newer deploy
	// re-creates the app without its old domains.
	v := s.Version()
	s = apply(deploy("web", 4, "z"), domains("web", 5, "new.example.com"))
	if s.Version() != v || s.Len() != 0 {
		t.Fatalf("stale events after a delete were applied")
	}
	s = apply(deploy("web", 6, "c"))
	if a, ok := s.App("web"); !ok || !slices.Equal(ids(a), []string{"c"}) || len(a.Domains) != 0 {
		t.Fatalf("re-created app = %+v, %v", a, ok)
	}
}

func TestApplyIgnoresStaleAndDuplicate(t *testing.T) {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	tb.Apply([]events.Event{deploy("web", 5, "new"), domains("web", 6, "web.example.com")})
	before := tb.Snapshot()
	tb.Apply([]events.Event{
		deploy("web", 5, "dup"),                  // same generation
		deploy("web", 3, "old"),                  // older
		domains("web", 6, "other.example.com"),   // same generation
		domains("web", 1, "ancient.example.com"), // older
		del("web", 4),                            // older than both aspects
		{Kind: events.KindRestart, App: "web", Generation: 2, Containers: cs("x")},
	})
	after := tb.Snapshot()
	a, _ := after.App("web")
	if !slices.Equal(ids(a), []string{"new"}) || !slices.Equal(a.Domains, []string{"web.example.com"}) {
		t.Fatalf("stale events changed the app: %+v", a)
	}
	if got, want := dump(after), dump(before); got != want {
		t.Fatalf("stale events changed the table:\n%s\nwant\n%s", got, want)
	}
}

// TestApplyOrderIndependent checks that the table is a function of the set of
// events, not of their order, so that routers converge whatever order they
// read the stream in.
func TestApplyOrderIndependent(t *testing.T) {
	evs := []events.Event{
		deploy("a", 1, "a1"), domains("a", 2, "a.example.com"),
		deploy("a", 3, "a2", "a3"), del("a", 4), deploy("a", 5, "a4"),
		deploy("b", 1, "b1"), domains("b", 2, "b.example.com", "*.b.example.com"),
		del("b", 3), deploy("c", 7, "c1"), domains("c", 8, "c.example.com"),
	}
	want := dump(applyAll(evs))
	for i := range 50 {
		perm := slices.Clone(evs)
		// A deterministic shuffle per iteration.
		for j := len(perm) - 1; j > 0; j-- {
			k := (i*31 + j*17) % (j + 1)
			perm[j], perm[k] = perm[k], perm[j]
		}
		if got := dump(applyAll(perm)); got != want {
			t.Fatalf("order %d gave\n%s\nwant\n%s", i, got, want)
		}
	}
}

func applyAll(evs []events.Event) *Snapshot {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	for _, ev := range evs {
		tb.Apply([]events.Event{ev})
	}
	return tb.Snapshot()
}

func dump(s *Snapshot) string {
	out := ""
	for _, a := range s.Apps() {
		out += fmt.Sprintf("%s gen=%d domains=%v refused=%v containers=%v\n", a.Name, a.Generation, a.Domains, a.Refused, ids(a))
	}
	return out
}

func TestDomainConflict(t *testing.T) {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	tb.Apply([]events.Event{
		deploy("first", 1, "f"), domains("first", 2, "shop.example.com", "first.example.com"),
		deploy("second", 1, "s"), domains("second", 2, "shop.example.com", "second.example.com"),
	})
	s := tb.Snapshot()
	if got := owner(s, "shop.example.com"); got != "first" {
		t.Fatalf("shop.example.com owned by %q, want first: its owner keeps it", got)
	}
	if got := owner(s, "second.example.com"); got != "second" {
		t.Fatalf("second's other domains not applied: owner %q", got)
	}
	second, _ := s.App("second")
	if !slices.Equal(second.Refused, []string{"shop.example.com"}) {
		t.Errorf("second.Refused = %v", second.Refused)
	}
	// The owner lets it go: the app waiting for it takes over.
	tb.Apply([]events.Event{domains("first", 3, "first.example.com")})
	if got := owner(tb.Snapshot(), "shop.example.com"); got != "second" {
		t.Fatalf("after release, shop.example.com owned by %q, want second", got)
	}
	second, _ = tb.Snapshot().App("second")
	if !slices.Equal(second.Domains, []string{"second.example.com", "shop.example.com"}) || len(second.Refused) != 0 {
		t.Errorf("after release, second has domains %v, refused %v; want both domains, none refused", second.Domains, second.Refused)
	}
	// Deleting the new owner frees it entirely.
	tb.Apply([]events.Event{del("second", 3)})
	if got := owner(tb.Snapshot(), "shop.example.com"); got != "" {
		t.Fatalf("after delete, shop.example.com owned by %q", got)
	}
}

// dated returns a domains event whose domains are claimed at the times
// given, in unix ms; 0 leaves a domain without a claim time, as a publisher
// that omits claimed_at does.
func dated(app string, gen uint64, claims map[string]int64) events.Event {
	ev := events.Event{Kind: events.KindDomains, App: app, Generation: gen, Domains: slices.Sorted(maps.Keys(claims))}
	for d, at := range claims {
		if at != 0 {
			if ev.ClaimedAt == nil {
				ev.ClaimedAt = map[string]int64{}
			}
			ev.ClaimedAt[d] = at
		}
	}
	return ev
}

// permutations calls f with every order of evs.
func permutations(evs []events.Event, f func([]events.Event)) {
	var walk func(k int)
	walk = func(k int) {
		if k == len(evs) {
			f(evs)
			return
		}
		for i := k; i < len(evs); i++ {
			evs[k], evs[i] = evs[i], evs[k]
			walk(k + 1)
			evs[k], evs[i] = evs[i], evs[k]
		}
	}
	walk(0)
}

// TestOwnershipOrderIndependent checks that who owns a contested domain
// depends only on the claims, not on the order a router reads them in: two
// routers, or a router before and after a restart, agree.
func TestOwnershipOrderIndependent(t *testing.T) {
	evs := []events.Event{
		// zulu claimed shop first, then published its domains again
		// with one more: both messages, so that some orders read the
		// newer one first.
		dated("zulu", 1, map[string]int64{"shop.example.com": 100}),
		dated("zulu", 3, map[string]int64{"shop.example.com": 100, "extra.example.com": 300}),
		// bravo's first message had no claim times (an older
		// publisher); its current one has.
		dated("bravo", 1, map[string]int64{"shop.example.com": 0, "legacy.example.com": 0}),
		dated("bravo", 2, map[string]int64{"shop.example.com": 200, "legacy.example.com": 250}),
		// No claim time: after every dated claim, whatever the name.
		dated("alpha", 2, map[string]int64{"shop.example.com": 0, "legacy.example.com": 0, "other.example.com": 500}),
		dated("delta", 2, map[string]int64{"other.example.com": 400}),
	}
	want := strings.Join([]string{
		"alpha gen=2 domains=[] refused=[legacy.example.com other.example.com shop.example.com] containers=[]",
		"bravo gen=2 domains=[legacy.example.com] refused=[shop.example.com] containers=[]",
		"delta gen=2 domains=[other.example.com] refused=[] containers=[]",
		"zulu gen=3 domains=[extra.example.com shop.example.com] refused=[] containers=[]",
		"",
	}, "\n")
	n := 0
	permutations(evs, func(order []events.Event) {
		n++
		if got := dump(applyAll(order)); got != want {
			t.Fatalf("order %d (%v) gave\n%s\nwant\n%s", n, kinds(order), got, want)
		}
	})
	// All in one batch, as a router loads the stream at start.
	tb := NewTable(zerolog.Nop(), nil)
	tb.Apply(evs)
	if got := dump(tb.Snapshot()); got != want {
		t.Fatalf("one batch gave\n%s\nwant\n%s", got, want)
	}
}

// kinds names the events of evs, for failure messages.
func kinds(evs []events.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s/%s@%d", ev.App, ev.Kind, ev.Generation)
	}
	return out
}

// TestOwnerKeepsDomainWhenRepublishing reproduces the audit: the owner of a
// contested domain publishes its domains again, so that its message comes
// after the refused claim in the stream. The running table and one built
// from the stream afterwards (the last message of each subject, in stream
// order) must both give the domain to the owner.
func TestOwnerKeepsDomainWhenRepublishing(t *testing.T) {
	live := NewTable(zerolog.Nop(), nil)
	live.Apply([]events.Event{dated("alpha", 1, map[string]int64{"shop.example.com": 100})})
	live.Apply([]events.Event{dated("beta", 1, map[string]int64{"shop.example.com": 200})})
	republished := dated("alpha", 2, map[string]int64{"shop.example.com": 100, "alpha.example.com": 300})
	live.Apply([]events.Event{republished})

	restarted := NewTable(zerolog.Nop(), nil)
	restarted.Apply([]events.Event{dated("beta", 1, map[string]int64{"shop.example.com": 200}), republished})

	for name, tb := range map[string]*Table{"running": live, "restarted": restarted} {
		s := tb.Snapshot()
		if got := owner(s, "shop.example.com"); got != "alpha" {
			t.Errorf("%s table: shop.example.com owned by %q, want alpha", name, got)
		}
		if b, _ := s.App("beta"); !slices.Equal(b.Refused, []string{"shop.example.com"}) {
			t.Errorf("%s table: beta refused %v, want [shop.example.com]", name, b.Refused)
		}
	}
}

// TestReleasedDomainGoesToNextClaim checks that when the owner lets a
// domain go, the earliest remaining claim takes it, whatever order the
// claims arrived in.
func TestReleasedDomainGoesToNextClaim(t *testing.T) {
	tb := NewTable(zerolog.Nop(), nil)
	tb.Apply([]events.Event{dated("alpha", 1, map[string]int64{"shop.example.com": 100})})
	tb.Apply([]events.Event{dated("beta", 1, map[string]int64{"shop.example.com": 300})})
	tb.Apply([]events.Event{dated("gamma", 1, map[string]int64{"shop.example.com": 200})})
	tb.Apply([]events.Event{dated("zed", 1, map[string]int64{"shop.example.com": 0})})
	steps := []struct {
		ev   events.Event
		want string
	}{
		{domains("alpha", 2), "gamma"}, // released: gamma claimed before beta
		{del("gamma", 2), "beta"},      // deleted
		{domains("beta", 2, "beta.example.com"), "zed"},
		{domains("zed", 2), ""},
	}
	if got := owner(tb.Snapshot(), "shop.example.com"); got != "alpha" {
		t.Fatalf("shop.example.com owned by %q, want alpha", got)
	}
	for _, st := range steps {
		tb.Apply([]events.Event{st.ev})
		if got := owner(tb.Snapshot(), "shop.example.com"); got != st.want {
			t.Fatalf("after %v: shop.example.com owned by %q, want %q", kinds([]events.Event{st.ev}), got, st.want)
		}
	}
}

// TestClaimRank checks the rank of two claims of one domain, whichever the
// table reads first.
func TestClaimRank(t *testing.T) {
	tests := []struct {
		name      string
		a, b      int64 // claim times of apps "a-app" and "b-app"; 0: none
		wantOwner string
		wantLoser string
	}{
		{"earlier wins", 200, 100, "b-app", "a-app"},
		{"undated loses to dated", 0, 900, "b-app", "a-app"},
		{"dated wins over undated", 900, 0, "a-app", "b-app"},
		{"tie by app name", 500, 500, "a-app", "b-app"},
		{"both undated: by app name", 0, 0, "a-app", "b-app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := dated("a-app", 1, map[string]int64{"shop.example.com": tt.a})
			b := dated("b-app", 1, map[string]int64{"shop.example.com": tt.b})
			for _, order := range [][]events.Event{{a, b}, {b, a}} {
				s := applyAll(order)
				if got := owner(s, "shop.example.com"); got != tt.wantOwner {
					t.Fatalf("order %v: owner %q, want %q", kinds(order), got, tt.wantOwner)
				}
				if l, _ := s.App(tt.wantLoser); !slices.Equal(l.Refused, []string{"shop.example.com"}) {
					t.Fatalf("order %v: %s refused %v", kinds(order), tt.wantLoser, l.Refused)
				}
			}
		})
	}
}

// TestDomainConflictLogged checks the log line an operator alerts on: a
// refused claim is logged at warn with code domain_conflict and both apps,
// also when a claim read later takes a domain over.
func TestDomainConflictLogged(t *testing.T) {
	var buf bytes.Buffer
	tb := NewTable(zerolog.New(&buf), nil)
	tb.Apply([]events.Event{dated("alpha", 1, map[string]int64{"shop.example.com": 100})})
	tb.Apply([]events.Event{dated("beta", 1, map[string]int64{"shop.example.com": 200})})
	tb.Apply([]events.Event{dated("aaron", 1, map[string]int64{"shop.example.com": 50})})
	type line struct {
		Level, Code, App, Domain, Owner, Refused string
	}
	var got []line
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var e line
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if e.Code == "domain_conflict" {
			got = append(got, e)
		}
	}
	want := []line{
		{Level: "warn", Code: "domain_conflict", App: "beta", Domain: "shop.example.com", Owner: "alpha", Refused: "beta"},
		{Level: "warn", Code: "domain_conflict", App: "aaron", Domain: "shop.example.com", Owner: "aaron", Refused: "alpha"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("conflict log lines:\n%+v\nwant\n%+v\nlog:\n%s", got, want, buf.String())
	}
}

// TestDomainMovesWithinOneBatch checks the control plane's way of moving a
// domain: release by one app and claim by another, applied together.
func TestDomainMovesWithinOneBatch(t *testing.T) {
	for name, batch := range map[string][]events.Event{
		"release first": {domains("old", 3, "old.example.com"), domains("new", 2, "shop.example.com")},
		"claim first":   {domains("new", 2, "shop.example.com"), domains("old", 3, "old.example.com")},
	} {
		t.Run(name, func(t *testing.T) {
			tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
			tb.Apply([]events.Event{deploy("old", 1, "o"), domains("old", 2, "shop.example.com", "old.example.com"), deploy("new", 1, "n")})
			tb.Apply(batch)
			s := tb.Snapshot()
			if got := owner(s, "shop.example.com"); got != "new" {
				t.Fatalf("shop.example.com owned by %q, want new", got)
			}
			if got := owner(s, "old.example.com"); got != "old" {
				t.Fatalf("old.example.com owned by %q, want old", got)
			}
		})
	}
}

func TestPickRoundRobinSurvivesUpdates(t *testing.T) {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	tb.Apply([]events.Event{deploy("web", 1, "a", "b", "c")})
	a, _ := tb.Snapshot().App("web")
	counts := map[string]int{}
	for range 300 {
		c, _ := a.pick("", 0, nil)
		a.answered(c)
		a.done(c)
		counts[c.ID]++
	}
	for _, id := range []string{"a", "b", "c"} {
		if counts[id] != 100 {
			t.Fatalf("round-robin counts %v, want 100 each", counts)
		}
	}
	// Another app's update keeps web's App and cursor.
	tb.Apply([]events.Event{deploy("other", 1, "o")})
	if b, _ := tb.Snapshot().App("web"); b != a {
		t.Fatalf("an unrelated event replaced web's App")
	}
}

func TestSnapshotChangedClosesOnSwap(t *testing.T) {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	s := tb.Snapshot()
	tb.Apply([]events.Event{deploy("web", 2, "a")})
	select {
	case <-s.Changed():
	default:
		t.Fatal("Changed not closed after a swap")
	}
	s2 := tb.Snapshot()
	tb.Apply([]events.Event{deploy("web", 1, "old")}) // stale: no swap
	select {
	case <-s2.Changed():
		t.Fatal("Changed closed although nothing changed")
	default:
	}
}

// buckets returns the bandwidth bucket of each container of app, by id.
func buckets(t *testing.T, tb *Table, app string) map[string]*shaping.Bucket {
	t.Helper()
	a, ok := tb.Snapshot().App(app)
	if !ok {
		t.Fatalf("app %s not found", app)
	}
	out := map[string]*shaping.Bucket{}
	for _, c := range a.Containers {
		if c.Bucket() == nil {
			t.Fatalf("container %s has no bucket", c.ID)
		}
		out[c.ID] = c.Bucket()
	}
	return out
}

func TestBucketsFollowContainers(t *testing.T) {
	defaults := shaping.Limits{Rate: 1000, Burst: 5000}
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(defaults))
	tb.Apply([]events.Event{deploy("app", 1, "a"), deploy("other", 1, "a")})
	first := buckets(t, tb, "app")
	if first["a"] == buckets(t, tb, "other")["a"] {
		t.Fatal("two apps' containers with the same id share a bucket")
	}
	if got := first["a"].Limits(); got != defaults {
		t.Fatalf("limits %+v, want the router's defaults %+v", got, defaults)
	}

	tb.Apply([]events.Event{{Kind: events.KindScale, App: "app", Generation: 2, Containers: cs("a", "b")}})
	tb.Apply([]events.Event{domains("app", 3, "app.example.com")})
	kept := buckets(t, tb, "app")
	if kept["a"] != first["a"] {
		t.Error("a scale that keeps container a, then a domains change, gave it a new bucket")
	}
	if kept["b"] == nil || kept["b"] == kept["a"] {
		t.Error("the added container b shares a's bucket or has none")
	}

	allowance := shaping.Limits{Rate: 4000, Burst: 9000}
	tb.Apply([]events.Event{{Kind: events.KindScale, App: "app", Generation: 4, Containers: cs("a", "b"), Rate: allowance.Rate, Burst: allowance.Burst}})
	raised := buckets(t, tb, "app")
	if raised["a"] != first["a"] || raised["a"].Limits() != allowance || raised["b"].Limits() != allowance {
		t.Errorf("the app's own allowance did not apply to its kept buckets: %+v", raised["a"].Limits())
	}

	// Container a leaves: its bucket goes with it, and a container that
	// later takes the same id starts with a full one.
	tb.Apply([]events.Event{{Kind: events.KindScale, App: "app", Generation: 5, Containers: cs("b")}})
	tb.Apply([]events.Event{{Kind: events.KindScale, App: "app", Generation: 6, Containers: cs("b", "a")}})
	back := buckets(t, tb, "app")
	if back["a"] == first["a"] {
		t.Error("a container removed then added again kept its old bucket")
	}
	if back["b"] != kept["b"] {
		t.Error("container b lost its bucket")
	}
	if got := back["a"].Limits(); got != defaults {
		t.Errorf("limits %+v after an event without an allowance, want the defaults %+v", got, defaults)
	}
}

func TestNoBucketsWithoutShaping(t *testing.T) {
	tb := NewTable(zerolog.Nop(), nil)
	tb.Apply([]events.Event{deploy("app", 1, "a")})
	if a, _ := tb.Snapshot().App("app"); a.Containers[0].Bucket() != nil {
		t.Fatal("a container has a bucket with shaping off")
	}
}

// TestOldSnapshotsKeepTheirRoutes checks that a batch, whose changes the
// table's builders make in place, leaves every snapshot published before it
// routing as it did: which app a host or an app name leads to.
func TestOldSnapshotsKeepTheirRoutes(t *testing.T) {
	tb := NewTable(zerolog.Nop(), nil)
	routesOf := func(s *Snapshot) map[string]*appRef {
		out := map[string]*appRef{}
		for i := range 40 {
			host := fmt.Sprintf("d%d.example.com", i)
			if v, ok := s.hosts.get(host); ok {
				out["host "+host] = v
			}
		}
		s.wildcards.Range(func(k string, v *appRef) bool { out["wild "+k] = v; return true })
		s.apps.Range(func(k string, v *appRef) bool { out["app "+k] = v; return true })
		return out
	}
	var snaps []*Snapshot
	var wants []map[string]*appRef
	gen := uint64(1)
	for round := range 20 {
		var batch []events.Event
		for i := range 50 {
			app := fmt.Sprintf("app-%d", (round*7+i)%60)
			gen++
			switch i % 5 {
			case 0:
				batch = append(batch, del(app, gen))
			case 1:
				batch = append(batch, deploy(app, gen, "a"))
			default:
				// Domains shared between apps, so that some move
				// from one owner to another within a batch.
				batch = append(batch, domains(app, gen,
					fmt.Sprintf("d%d.example.com", (round+i)%40), fmt.Sprintf("*.w%d.example.com", i%13)))
			}
		}
		tb.Apply(batch)
		s := tb.Snapshot()
		snaps = append(snaps, s)
		wants = append(wants, routesOf(s))
		for i := range snaps {
			if got := routesOf(snaps[i]); !maps.Equal(got, wants[i]) {
				t.Fatalf("after batch %d, snapshot %d routes %v, want %v", round, i, got, wants[i])
			}
		}
	}
}

// TestNormalizeHostMatchesPlainVersion compares normalizeHost with the
// plain composition of the standard library's functions it stands for.
func TestNormalizeHostMatchesPlainVersion(t *testing.T) {
	plain := func(host string) string {
		if strings.HasPrefix(host, "[") {
			return ""
		}
		if i := strings.LastIndexByte(host, ':'); i >= 0 {
			host = host[:i]
		}
		return strings.ToLower(strings.TrimSuffix(host, "."))
	}
	for _, host := range []string{
		"", ".", ":", "::", "a", "A", "www.example.com", "WWW.Example.COM", "www.example.com.", "www.example.com.:80",
		"www.example.com:8080", "host:ABC", "a:b:c", "[::1]:80", "127.0.0.1:80", "ÉCOLE.example.com", "école.example.com:443",
		"www.example.com..", "x.Y.z.:", "\xff\xfe", "İ.example.com",
		// Every position of an upper-case letter or a non-ASCII byte in
		// and around the 8-byte words, and the letters next to 'A'..'Z'.
		"abcdefgH", "abcdefghI", "Abcdefghijklmnop", "abcdefghijklmnoP", "abcdefgh@[`{", "abcdefg@", "abcdefg[",
		"abcdefgh\x80", "abcdefg\x7f", "@@@@@@@@[[[[[[[[", "````````{{{{{{{{", "zzzzzzzzAzzzzzzz",
	} {
		if got, want := normalizeHost(host), plain(host); got != want {
			t.Errorf("normalizeHost(%q) = %q, want %q", host, got, want)
		}
	}
	// Random hosts over the bytes that matter, of every length up to 40.
	rng := rand.New(rand.NewPCG(5, 6))
	alphabet := []byte("aAzZ@[`{09.:-\x7f\x80\xc3\xa9")
	for range 20000 {
		b := make([]byte, rng.IntN(41))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		if got, want := normalizeHost(string(b)), plain(string(b)); got != want {
			t.Fatalf("normalizeHost(%q) = %q, want %q", b, got, want)
		}
	}
}
