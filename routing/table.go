package routing

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
)

// App is the routing state of one app in a Snapshot. It is immutable: an
// event that changes the app publishes a new App.
type App struct {
	// Name is the app's name.
	Name string `json:"name"`
	// Generation is the highest generation applied to the app.
	Generation uint64 `json:"generation"`
	// Domains are the domains the app owns, sorted.
	Domains []string `json:"domains"`
	// Refused are the domains the app claims but another app owns.
	Refused []string `json:"refused_domains,omitempty"`
	// Containers are the app's containers; empty when it has none.
	Containers []Container `json:"containers"`
	// Options are how the app is served, from its domains events.
	Options events.AppOptions `json:"options"`

	ref *appRef
}

// appRef is the one place that holds the current App of an app: the
// snapshots' maps point to it, and an event that changes only the app's
// containers swaps the App it holds, with no copy in any map. It also keeps
// the round-robin cursor, so that a new container set does not restart the
// rotation.
type appRef struct {
	app atomic.Pointer[App] // nil while the app is deleted
	// routesChanged is the version of the last snapshot that changed the
	// route of a domain that the base of a hostMap sends to this app. A
	// lookup reads it with app: it is next to it, in the same cache line.
	routesChanged atomic.Uint64
	next          atomic.Uint64
	queue         waitQueue // requests waiting for a free container
}

// Snapshot is one version of the route table's maps (which domains and names
// lead to which apps); its maps never change once published. The apps they
// lead to are read through per-app pointers that an event swaps in place, so a
// Snapshot always shows the current state of the apps it routes to. Any
// number of goroutines may read it without locking.
type Snapshot struct {
	version   uint64
	hosts     hostMap      // exact domain → owner
	wildcards hamt[appRef] // "example.com" for the owner of "*.example.com"
	apps      hamt[appRef]
	next      chan struct{} // closed when a newer Snapshot is published
}

// Version counts the snapshots published before this one.
func (s *Snapshot) Version() uint64 { return s.version }

// Changed returns a channel closed when a newer snapshot replaces this one;
// a merge of the host map publishes one with the same routes.
func (s *Snapshot) Changed() <-chan struct{} { return s.next }

// Len reports the number of apps.
func (s *Snapshot) Len() int { return s.apps.Len() }

// App returns the app named name.
func (s *Snapshot) App(name string) (*App, bool) { return load(s.apps.Get(name)) }

func load(ref *appRef, ok bool) (*App, bool) {
	if !ok {
		return nil, false
	}
	a := ref.app.Load()
	return a, a != nil
}

// Apps returns every app, sorted by name.
func (s *Snapshot) Apps() []*App {
	out := make([]*App, 0, s.apps.Len())
	s.apps.Range(func(_ string, ref *appRef) bool {
		if a := ref.app.Load(); a != nil {
			out = append(out, a)
		}
		return true
	})
	slices.SortFunc(out, func(a, b *App) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Lookup returns the app that owns host, a Host header value or a TLS server
// name: case, a ":port" suffix and a trailing dot are ignored, and an exact
// domain wins over a wildcard covering it.
func (s *Snapshot) Lookup(host string) (*App, bool) {
	name := normalizeHost(host)
	if name == "" {
		return nil, false
	}
	if ref, ok := s.hosts.get(name); ok {
		return load(ref, ok)
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		return load(s.wildcards.Get(name[i+1:]))
	}
	return nil, false
}

// normalizeHost lowercases host and strips a port and a trailing dot. It
// returns "" for an IP literal or an empty name. It allocates only when host
// has upper-case letters, and reads host 8 bytes at a time: it is on the
// path of every request.
func normalizeHost(host string) string {
	if strings.HasPrefix(host, "[") {
		return "" // IPv6 literal: no app is named by address
	}
	if strings.IndexByte(host, ':') >= 0 {
		host = host[:strings.LastIndexByte(host, ':')] // the last colon starts the port
	}
	host = strings.TrimSuffix(host, ".")
	if needsLower(host) {
		return strings.ToLower(host)
	}
	return host
}

// needsLower reports whether s has an upper-case ASCII letter or a byte
// that is not ASCII, looking at 8 bytes at a time: a byte b < 0x80 is in
// 'A'..'Z' when b + (0x80-'A') has its high bit set and b + (0x80-'Z'-1)
// has not, and neither sum carries into the next byte.
func needsLower(s string) bool {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if w&high != 0 || (w+(0x80-'A')*ones)&^(w+(0x80-'Z'-1)*ones)&high != 0 {
			return true
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

// Table is the route table of a router: the current Snapshot, read by
// request handlers through an atomic pointer without locking, and the state
// the event consumer builds the next Snapshot from.
type Table struct {
	cur     atomic.Pointer[Snapshot]
	log     zerolog.Logger
	limiter *shaping.Limiter // nil: no shaping

	// mu serialises Apply; it guards the fields below, which only Apply
	// reads. Request handlers never take it.
	mu     sync.Mutex
	states map[string]*appState
	claims map[string]claimLine // domain → its claims, owner first (claimant.compare)
	// dirty are the apps whose routes the batch being applied changes, and
	// built their new App (nil: deleted), in the same order; both are
	// empty between batches and keep their arrays from one to the next.
	dirty []*appState
	built []*App
	// merging is set while a new base for the host map is built in the
	// background, and sinceMerge lists the domains whose routes changed
	// since the snapshot it is built from.
	merging    bool
	sinceMerge []string
	// quiet merges a delta too small to need a merge once no event has
	// come for quietAfter, so that lookups find every domain in the base.
	quiet      *time.Timer
	quietAfter time.Duration
}

// mergeQuiet is how long the table waits after the last change before it
// merges a host map's delta that is not large enough to need it, and
// quietMin the number of routes added below which it leaves the delta as it
// is: a quiet merge copies the whole host map, which a handful of changed
// routes, each a probe of the delta, is not worth.
const (
	mergeQuiet = time.Second
	quietMin   = 64
)

// appState is what the table knows of an app: each aspect with the
// generation that set it, and the highest generation of a delete.
type appState struct {
	name          string
	dirty         bool   // in Table.dirty
	claimsChanged bool   // this batch changed its claims or their owners
	containersGen uint64 // 0: no container set since the last delete
	domainsGen    uint64 // 0: no domain set since the last delete
	deletedGen    uint64
	containers    []Container
	domains       []string         // claimed, owned or not; sorted, never changed in place
	refused       []string         // those of domains another app owns; sorted, never changed in place
	claimedAt     map[string]int64 // claim time of domains, unix ms; absent: unknown
	options       events.AppOptions
	ref           *appRef
}

func (st *appState) alive() bool { return st.containersGen > 0 || st.domainsGen > 0 }

func (st *appState) generation() uint64 {
	return max(st.containersGen, st.domainsGen, st.deletedGen)
}

// NewTable returns an empty table that logs ignored and refused changes to
// log. Each container gets a bandwidth bucket from limiter, kept for as long
// as the container stays in its app's container set; a nil limiter turns
// shaping off.
func NewTable(log zerolog.Logger, limiter *shaping.Limiter) *Table {
	t := &Table{log: log, limiter: limiter, states: map[string]*appState{}, claims: map[string]claimLine{},
		quietAfter: mergeQuiet}
	t.cur.Store(&Snapshot{next: make(chan struct{})})
	return t
}

// Snapshot returns the current version of the table.
func (t *Table) Snapshot() *Snapshot { return t.cur.Load() }

// Apply applies a batch of events and publishes the result as one new
// Snapshot, or none if nothing changed. An event whose generation is not
// newer than the state it would replace is ignored, so events may be
// applied twice or out of order. Apply costs O(changed domains and
// containers × log apps): it never copies the whole table (the host map's
// merges run in the background, see hostMap), and the maps' nodes it
// copies, it copies once per batch (see hamtBuilder).
func (t *Table) Apply(batch []events.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	defer t.clean()
	for _, ev := range batch {
		t.apply(ev)
	}
	if len(t.dirty) == 0 {
		return
	}
	old := t.cur.Load()
	var changed *[]string
	if t.merging {
		changed = &t.sinceMerge
	}
	r := routes{
		hosts:     old.hosts.builder(old.version+1, changed),
		wildcards: old.wildcards.builder(),
		apps:      old.apps.builder(),
	}
	// Only the domains that change owner touch the maps. Ownership may move
	// between two dirty apps: withdraw the old routes before adding new ones.
	for _, st := range t.dirty {
		var a *App
		prev := st.ref.app.Load()
		if st.alive() {
			a = t.build(st, prev)
		}
		t.built = append(t.built, a)
		if prev != nil {
			for _, d := range prev.Domains {
				if a == nil || !slices.Contains(a.Domains, d) {
					r.unroute(d)
				}
			}
		}
	}
	for i, st := range t.dirty {
		a, prev := t.built[i], st.ref.app.Load()
		switch {
		case a == nil && prev != nil:
			r.apps.Delete(st.name)
		case a != nil && prev == nil:
			r.apps.Set(st.name, st.ref)
		}
		if a != nil {
			for _, d := range a.Domains {
				if prev == nil || !slices.Contains(prev.Domains, d) {
					r.route(d, st.ref)
				}
			}
		}
		st.ref.app.Store(a)
		// Requests waiting for a slot try the new containers (or
		// find the app scaled to zero, or gone).
		st.ref.queue.wakeAll()
	}
	t.publish(old, &Snapshot{hosts: r.hosts.Map(), wildcards: r.wildcards.Map(), apps: r.apps.Map()})
}

// publish makes next, the maps of the version after old, the current
// snapshot, and starts a merge of its host map if it needs one, or plans
// one for when the events stop.
func (t *Table) publish(old, next *Snapshot) {
	next.version, next.next = old.version+1, make(chan struct{})
	t.cur.Store(next)
	close(old.next)
	switch {
	case t.merging:
	case next.hosts.needsMerge():
		t.merging = true
		go t.merge(next)
	case next.hosts.changes < quietMin:
	case t.quiet == nil:
		t.quiet = time.AfterFunc(t.quietAfter, t.mergeWhenQuiet)
	default:
		t.quiet.Reset(t.quietAfter)
	}
}

// mergeWhenQuiet starts a merge of the current host map's delta, unless one
// runs or the delta is smaller than quietMin.
func (t *Table) mergeWhenQuiet() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.cur.Load(); !t.merging && s.hosts.changes >= quietMin {
		t.merging = true
		go t.merge(s)
	}
}

// merge builds, off the event path, a new base for the host map of s, and
// publishes a snapshot that uses it, with the routes changed meanwhile.
func (t *Table) merge(s *Snapshot) {
	start := time.Now()
	merged := s.hosts.merged()
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.cur.Load()
	next := &Snapshot{
		hosts:     old.hosts.rebased(merged, s.version, old.version+1, t.sinceMerge),
		wildcards: old.wildcards,
		apps:      old.apps,
	}
	clear(t.sinceMerge)
	t.merging, t.sinceMerge = false, t.sinceMerge[:0]
	t.publish(old, next)
	t.log.Debug().Int("domains", len(merged.base)).Int("changed_since", next.hosts.changes).
		Dur("duration", time.Since(start)).Msg("host map merged")
}

// markDirty adds st to the apps whose routes the batch being applied
// changes.
func (t *Table) markDirty(st *appState) {
	if !st.dirty {
		st.dirty = true
		t.dirty = append(t.dirty, st)
	}
}

// clean empties the batch's lists of dirty apps, keeping their arrays for
// the next batch.
func (t *Table) clean() {
	for i, st := range t.dirty {
		st.dirty, st.claimsChanged = false, false
		t.dirty[i] = nil
	}
	clear(t.built)
	t.dirty, t.built = t.dirty[:0], t.built[:0]
}

// routes are the maps of the next Snapshot while Apply changes them.
type routes struct {
	hosts     hostMapBuilder      // exact domain → owner
	wildcards hamtBuilder[appRef] // "example.com" for the owner of "*.example.com"
	apps      hamtBuilder[appRef]
}

// route sends domain to ref.
func (r *routes) route(domain string, ref *appRef) {
	if w, ok := strings.CutPrefix(domain, "*."); ok {
		r.wildcards.Set(w, ref)
	} else {
		r.hosts.Set(domain, ref)
	}
}

// unroute removes the route of domain. Apply withdraws every route a batch
// removes before it adds any, and a domain has one owner in the published
// Apps: the route it removes is the app's own.
func (r *routes) unroute(domain string) {
	if w, ok := strings.CutPrefix(domain, "*."); ok {
		r.wildcards.Delete(w)
	} else {
		r.hosts.Delete(domain)
	}
}

// build makes the App published for st. When st owns every domain it
// claims (the usual case), the App shares st's sorted list of domains, which
// is never changed in place; the state knows which domains it is refused,
// so build needs no lookup of the claims.
func (t *Table) build(st *appState, prev *App) *App {
	a := &App{Name: st.name, Generation: st.generation(), Containers: st.containers, Options: st.options, ref: st.ref,
		Domains: st.domains}
	switch {
	case prev != nil && !st.claimsChanged:
		// Only its containers changed: the domains it owns are the same.
		a.Domains, a.Refused = prev.Domains, prev.Refused
	case len(st.refused) > 0:
		a.Domains = slices.DeleteFunc(slices.Clone(st.domains), func(d string) bool {
			_, refused := slices.BinarySearch(st.refused, d)
			return refused
		})
		a.Refused = st.refused
	case a.Domains == nil:
		a.Domains = []string{} // "[]" in JSON, not null
	}
	return a
}

// apply records one event in the table's state and marks the apps whose
// routes it changes.
func (t *Table) apply(ev events.Event) {
	st := t.states[ev.App]
	if st == nil {
		st = &appState{name: ev.App, ref: new(appRef)}
		t.states[ev.App] = st
	}
	switch ev.Kind.Aspect() {
	case events.AspectContainers:
		if ev.Generation <= st.containersGen || ev.Generation <= st.deletedGen {
			withEvent(t.log.Debug(), ev).Uint64("current", st.generation()).Msg("event ignored: not newer than the state it would replace")
			return
		}
		st.containersGen, st.containers = ev.Generation, t.containers(ev, st.containers)
		t.markDirty(st)
	case events.AspectDomains:
		if ev.Generation <= st.domainsGen || ev.Generation <= st.deletedGen {
			withEvent(t.log.Debug(), ev).Uint64("current", st.generation()).Msg("event ignored: not newer than the state it would replace")
			return
		}
		st.domainsGen, st.options = ev.Generation, ev.Options
		t.claim(ev, st, ev.Domains, ev.ClaimedAt)
		t.markDirty(st)
	case events.AspectDelete:
		if ev.Generation <= st.deletedGen {
			withEvent(t.log.Debug(), ev).Uint64("current", st.deletedGen).Msg("event ignored: already deleted at this generation")
			return
		}
		// A delete removes what is older than it; an aspect set after it
		// (a later re-creation) stays, whatever order events arrive in.
		st.deletedGen = ev.Generation
		if st.containersGen <= ev.Generation {
			retire(st.containers, nil)
			st.containersGen, st.containers = 0, nil
		}
		if st.domainsGen <= ev.Generation {
			st.domainsGen, st.options = 0, events.AppOptions{}
			t.claim(ev, st, nil, nil)
		}
		t.markDirty(st)
	}
}

// containers returns the container set of ev. A container that was already
// in the set (same id) keeps the router's state of it: its bandwidth bucket
// with the tokens it has, its requests in flight, its quarantine. A new one
// starts afresh, and one that left is retired.
func (t *Table) containers(ev events.Event, prev []Container) []Container {
	out := make([]Container, len(ev.Containers))
	limits := shaping.Limits{Rate: ev.Rate, Burst: ev.Burst}
	find := containerFinder(prev)
	for i, c := range ev.Containers {
		old, ok := find(c.ID, i)
		b := old.b
		if !ok || old.Address != c.Address {
			// A new container, or the same id at a new address: nothing
			// learnt of the old address holds, but the bandwidth used
			// stays counted.
			var bucket *shaping.Bucket
			if ok {
				bucket = b.bucket
			} else if t.limiter != nil {
				bucket = t.limiter.Bucket(limits)
			}
			b = newBackend(ev.App, c.ID, bucket)
		}
		if b.bucket != nil && b.bucket.Limits() != limits.Or(t.limiter.Defaults()) {
			b.bucket.SetLimits(limits)
		}
		out[i] = Container{Container: c, b: b}
	}
	retire(prev, out)
	return out
}

// smallSet is the number of containers up to which a scan beats a map.
const smallSet = 16

// containerFinder returns a function that finds the container of cs with
// id, trying the i-th first (an app's containers mostly keep their order
// from one event to the next); a large set is indexed by a map.
func containerFinder(cs []Container) func(id string, i int) (Container, bool) {
	var index map[string]int
	if len(cs) > smallSet {
		index = make(map[string]int, len(cs))
		for i, c := range cs {
			index[c.ID] = i
		}
	}
	return func(id string, i int) (Container, bool) {
		if i < len(cs) && cs[i].ID == id {
			return cs[i], true
		}
		if index != nil {
			j, ok := index[id]
			if !ok {
				return Container{}, false
			}
			return cs[j], true
		}
		for _, c := range cs {
			if c.ID == id {
				return c, true
			}
		}
		return Container{}, false
	}
}

// retire marks the backends of prev that next does not keep as gone, so
// that their quarantine probes stop.
func retire(prev, next []Container) {
	kept := func(b *backend) bool {
		return slices.ContainsFunc(next, func(c Container) bool { return c.b == b })
	}
	if len(next) > smallSet {
		keep := make(map[*backend]bool, len(next))
		for _, c := range next {
			keep[c.b] = true
		}
		kept = func(b *backend) bool { return keep[b] }
	}
	for _, c := range prev {
		if !kept(c.b) {
			c.b.retired.Store(true)
		}
	}
}

// claim replaces the domains app claims, claimedAt telling when it first
// claimed each. A domain belongs to the claim that ranks first
// (claimant.compare), the others are refused and wait in line: with sane
// clocks, the first app to claim a domain keeps it, also when it publishes
// its domains again, and the next in line takes over when it lets the
// domain go. Only the domains whose claim by app changes are visited, so
// the cost does not grow with the number of apps.
func (t *Table) claim(ev events.Event, st *appState, domains []string, claimedAt map[string]int64) {
	for _, d := range st.domains {
		if !slices.Contains(domains, d) {
			t.reclaim(ev, st, d, claimant{})
		}
	}
	for _, d := range domains {
		if !slices.Contains(st.domains, d) || st.claimedAt[d] != claimedAt[d] {
			t.reclaim(ev, st, d, claimant{app: ev.App, at: claimedAt[d]})
		}
	}
	st.domains = slices.Clone(domains)
	slices.Sort(st.domains)
	st.claimedAt = maps.Clone(claimedAt)
	st.claimsChanged = true
}

// reclaim replaces the claim of d by ev's app, whose state is st, with c
// (none when c.app is ""), records in the states which of their domains
// they are refused, marks the apps whose ownership changes, and logs the
// outcome.
func (t *Table) reclaim(ev events.Event, st *appState, d string, c claimant) {
	line := t.claims[d]
	before := line.owner.app
	line = line.without(ev.App)
	if c.app != "" {
		line = line.with(c)
	}
	after := line.owner.app
	if after == "" {
		delete(t.claims, d)
	} else {
		t.claims[d] = line
	}
	st.refused = setRefused(st.refused, d, c.app != "" && after != ev.App)
	if after != before {
		for _, app := range []string{after, before} {
			var other *appState
			switch app {
			case ev.App:
				other = st
			case "": // no owner
			default:
				// Its claim is unchanged: it has d now, or waits for it.
				other = t.states[app]
				other.refused = setRefused(other.refused, d, app == before)
			}
			if other != nil {
				other.claimsChanged = true
				t.markDirty(other)
			}
		}
	}
	switch {
	case c.app == "" && before == ev.App && after != "":
		withEvent(t.log.Info(), ev).Str("domain", d).Str("new_owner", after).Msg("domain released to the next app claiming it")
	case c.app != "" && after != ev.App:
		withEvent(t.log.Warn(), ev).Str("domain", d).Str("owner", after).Str("refused", ev.App).Str("code", "domain_conflict").Msg("domain refused: owned by another app")
	case c.app != "" && before != "" && before != ev.App:
		withEvent(t.log.Warn(), ev).Str("domain", d).Str("owner", ev.App).Str("refused", before).Str("code", "domain_conflict").Msg("domain taken over by an earlier claim: the other app's claim is refused")
	}
}

// setRefused returns the sorted list refused with d if is, without d
// otherwise. It leaves the list given unchanged: an App may share it.
func setRefused(refused []string, d string, is bool) []string {
	i, in := slices.BinarySearch(refused, d)
	switch {
	case is == in:
		return refused
	case is:
		return slices.Insert(slices.Clip(refused), i, d)
	case len(refused) == 1:
		return nil
	}
	return slices.Delete(slices.Clone(refused), i, i+1)
}

// claimant is one app's claim of a domain.
type claimant struct {
	app string
	at  int64 // when the app first claimed the domain, unix ms; 0: unknown
}

// compare ranks c against o, claims of the same domain (-1: c first): the
// earlier claim time first, an unknown time after every known one, then
// the app name. The rank depends only on the claims, so every router that
// holds the same messages picks the same owner, whatever order it read
// them in.
func (c claimant) compare(o claimant) int {
	switch {
	case c.at == o.at:
		return strings.Compare(c.app, o.app)
	case c.at == 0:
		return 1
	case o.at == 0:
		return -1
	}
	return cmp.Compare(c.at, o.at)
}

// claimLine holds the claims of a domain: its owner, the claim that ranks
// first, then the refused ones in rank order, waiting for it. Most domains
// have no one waiting: the owner is kept apart so that a line of one costs
// no allocation. A line is never changed in place: with and without return
// a new one.
type claimLine struct {
	owner   claimant   // app "" for no one
	waiting []claimant // refused claims, first in line first
}

// without returns the line without app's claim, if it has one: if app
// owned the domain, the first claim waiting owns it now.
func (l claimLine) without(app string) claimLine {
	if l.owner.app != app {
		i := slices.IndexFunc(l.waiting, func(c claimant) bool { return c.app == app })
		if i < 0 {
			return l
		}
		return claimLine{owner: l.owner, waiting: slices.Delete(slices.Clone(l.waiting), i, i+1)}
	}
	if len(l.waiting) == 0 {
		return claimLine{}
	}
	return claimLine{owner: l.waiting[0], waiting: slices.Clip(l.waiting[1:])}
}

// with returns the line with c in its rank; the line has no claim of c's
// app.
func (l claimLine) with(c claimant) claimLine {
	switch {
	case l.owner.app == "":
		return claimLine{owner: c}
	case c.compare(l.owner) < 0:
		return claimLine{owner: c, waiting: slices.Insert(slices.Clone(l.waiting), 0, l.owner)}
	}
	i, _ := slices.BinarySearchFunc(l.waiting, c, claimant.compare)
	return claimLine{owner: l.owner, waiting: slices.Insert(slices.Clone(l.waiting), i, c)}
}

// withEvent adds the fields that identify ev to a log event.
func withEvent(e *zerolog.Event, ev events.Event) *zerolog.Event {
	return e.Str("app", ev.App).Str("kind", string(ev.Kind)).Uint64("generation", ev.Generation)
}
