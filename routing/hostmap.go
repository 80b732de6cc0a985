package routing

import (
	"maps"
	"sync/atomic"
)

// hostMap is the map from exact domains to their owners that every request
// reads, as of one snapshot. A hamt alone costs a walk of four to five
// levels at 200k domains, each a cache miss when the path is cold, where a
// Go map reaches its entry in about one; but a Go map cannot change under
// its readers, and copying it for each change would cost the whole table.
//
// So a hostMap is a frozen Go map, base, built from the snapshot of version
// baseVer, plus the routes changed since, delta: a log shared by the
// hostMaps that use that base, where each change is added with the version
// of the snapshot that makes it, and read up to the version of the hostMap
// (see routeLog). A change adds one route to the log and copies nothing.
// When the changes reach an eighth of the base, a merge builds a new base
// off the event path (see Table.merge): a merge costs O(domains), spread
// over the base/8 changes that called for it, so that no event pays for it
// and its cost per change does not grow with the table.
//
// A lookup that finds its domain in the base needs the delta only if the
// domain's route changed after baseVer, and that is known without reading
// the delta: each change of a route marks the app the base leads to with
// the version of the snapshot that changes it (appRef.routesChanged), and
// the app is loaded anyway. The delta is read for the apps marked and for
// the domains the base does not have.
//
// What a hostMap returns never changes once it is published: a base is not
// written after it is built, the log only gains routes of later versions,
// and marks only send lookups to the delta, which gives the right answer
// for every version whatever the mark says.
type hostMap struct {
	base    map[string]*appRef // never written once published
	baseVer uint64             // version of the snapshot base was built from
	delta   *routeLog          // routes changed since baseVer, of this version and later ones; nil: none
	version uint64             // of the snapshot: the routes of delta up to it apply
	changes int                // routes added to delta up to version, repeats included
}

// removed marks, in a delta, a route that is gone.
var removed = new(appRef)

// mergeMin is the number of changes always worth keeping in a delta, and
// mergeRatio the fraction of the base beyond which a merge starts: an
// eighth copies about nine domains per change.
const (
	mergeMin   = 1024
	mergeRatio = 8
)

// get returns the owner of domain.
func (m *hostMap) get(domain string) (*appRef, bool) {
	ref, ok := m.base[domain]
	if ok && ref.routesChanged.Load() <= m.baseVer || m.changes == 0 {
		return ref, ok
	}
	return m.resolve(domain, ref, ok)
}

// lookup returns the owner of domain without the shortcut of marks, for
// the writer.
func (m *hostMap) lookup(domain string) (*appRef, bool) {
	ref, ok := m.base[domain]
	return m.resolve(domain, ref, ok)
}

// resolve returns the owner of domain given what the base holds for it.
func (m *hostMap) resolve(domain string, ref *appRef, ok bool) (*appRef, bool) {
	if d, changed := m.delta.route(domain, m.version); changed {
		if d == removed {
			return nil, false
		}
		return d, true
	}
	return ref, ok
}

// needsMerge reports whether the delta has grown enough for a new base.
func (m *hostMap) needsMerge() bool {
	return m.changes > mergeMin+len(m.base)/mergeRatio
}

// merged returns the start of a hostMap with a new base, m's base with its
// delta applied, and an empty delta sized for it: both are built off the
// event path, by the merge's goroutine.
func (m *hostMap) merged() hostMap {
	base := maps.Clone(m.base)
	if base == nil {
		base = make(map[string]*appRef, m.changes)
	}
	m.delta.each(m.version, func(domain string, ref *appRef) {
		if ref == removed {
			delete(base, domain)
		} else {
			base[domain] = ref
		}
	})
	return hostMap{base: base, delta: deltaFor(base)}
}

// rebased returns next, which merged built from the snapshot of version
// baseVer, with the routes of changed, the domains whose routes changed
// after that snapshot, as m has them now; version is the version of the
// snapshot the result is for.
func (m *hostMap) rebased(next hostMap, baseVer, version uint64, changed []string) hostMap {
	next.baseVer = baseVer
	b := next.builder(version, nil)
	for _, domain := range changed {
		ref, ok := m.lookup(domain)
		if was, had := next.base[domain]; ok == had && ref == was {
			continue // the base has it right
		}
		if _, listed := b.m.delta.route(domain, version); listed {
			continue // listed twice: once is enough
		}
		if ok {
			b.Set(domain, ref)
		} else {
			b.Delete(domain)
		}
	}
	return b.Map()
}

// hostMapBuilder makes the changes of a batch to a hostMap.
type hostMapBuilder struct {
	m       hostMap   // of the version being built
	changed *[]string // where to record the domains changed; nil: nowhere
}

// builder returns a builder of the hostMap of the snapshot of version
// version, starting from m; the domains it changes are appended to
// *changed, unless changed is nil. The builder writes to m's log, which
// m shares with the hostMaps of earlier versions: m must be the newest
// hostMap of its log (the current snapshot's, under Table.mu), and the map
// built must be published.
func (m hostMap) builder(version uint64, changed *[]string) hostMapBuilder {
	m.version = version
	return hostMapBuilder{m: m, changed: changed}
}

// Set routes domain to ref.
func (b *hostMapBuilder) Set(domain string, ref *appRef) { b.add(domain, ref) }

// Delete removes the route of domain.
func (b *hostMapBuilder) Delete(domain string) { b.add(domain, removed) }

// add records that domain routes to ref, marks the app the base sends it
// to, and records the domain as changed.
func (b *hostMapBuilder) add(domain string, ref *appRef) {
	if b.changed != nil {
		*b.changed = append(*b.changed, domain)
	}
	if was, ok := b.m.base[domain]; ok {
		was.routesChanged.Store(b.m.version)
	}
	if b.m.delta == nil {
		b.m.delta = deltaFor(b.m.base)
	}
	b.m.delta = b.m.delta.add(domain, ref, b.m.version)
	b.m.changes++
}

// Map returns the map built.
func (b *hostMapBuilder) Map() hostMap { return b.m }

// routeLog is the delta of a hostMap: the domains whose routes changed
// since its base, each with its routes newest first, and each route with
// the version of the snapshot that set it. One writer (Apply and merge,
// under Table.mu) adds to it while request handlers read it without a
// lock, each as of the version of its snapshot: it takes the first route
// of the domain not newer than that version.
//
// Nothing a reader can see at or below its version changes: the writer
// builds a domain's entry, or a route, completely, then publishes it with
// one atomic store, and a route is only ever put in front of the routes it
// replaces. So a version's routes are all there before its snapshot is
// published, and what a reader of that version finds never changes.
//
// The entries are in an open-addressing table, linear probing, kept at most
// half full. When it would be fuller, the writer copies the entries (not
// their routes) to a table twice the size and goes on with that one; the
// readers of earlier versions keep the old one, which has every domain they
// can need.
type routeLog struct {
	slots []atomic.Pointer[logEntry] // a power of two long
	used  int                        // entries; only the writer reads it
}

// logEntry is a domain of a routeLog and its routes.
type logEntry struct {
	domain string
	hash   uint64
	latest atomic.Pointer[logRoute]
}

// logRoute is a route of a domain from a version on.
type logRoute struct {
	version uint64
	ref     *appRef // removed: no route
	older   *logRoute
}

// deltaFor returns an empty log for the changes of a base until the next
// merge: mergeMin + base/8 routes.
func deltaFor(base map[string]*appRef) *routeLog {
	return newRouteLog(mergeMin + len(base)/mergeRatio)
}

// newRouteLog returns an empty log for about n domains.
func newRouteLog(n int) *routeLog {
	size := 16
	for size < 2*n {
		size *= 2
	}
	return &routeLog{slots: make([]atomic.Pointer[logEntry], size)}
}

// find returns the entry of domain, whose hash is hash; nil if it has none.
func (l *routeLog) find(domain string, hash uint64) *logEntry {
	mask := uint64(len(l.slots) - 1)
	for i := hash & mask; ; i = (i + 1) & mask {
		if e := l.slots[i].Load(); e == nil || e.hash == hash && e.domain == domain {
			return e
		}
	}
}

// route returns the route of domain as of version, and whether the log has
// one.
func (l *routeLog) route(domain string, version uint64) (*appRef, bool) {
	if l == nil {
		return nil, false
	}
	if e := l.find(domain, hashKey(domain)); e != nil {
		return e.at(version)
	}
	return nil, false
}

// at returns the route of e as of version, and whether it has one.
func (e *logEntry) at(version uint64) (*appRef, bool) {
	for r := e.latest.Load(); r != nil; r = r.older {
		if r.version <= version {
			return r.ref, true
		}
	}
	return nil, false
}

// add records that domain routes to ref from version on, and returns the
// log to write to from now on: l, or a larger copy of it.
func (l *routeLog) add(domain string, ref *appRef, version uint64) *routeLog {
	hash := hashKey(domain)
	e := l.find(domain, hash)
	if e != nil {
		e.latest.Store(&logRoute{version: version, ref: ref, older: e.latest.Load()})
		return l
	}
	if 2*(l.used+1) > len(l.slots) {
		l = l.grown()
	}
	e = &logEntry{domain: domain, hash: hash}
	e.latest.Store(&logRoute{version: version, ref: ref})
	l.insert(e)
	return l
}

// insert puts e, whose domain l does not have, in a free slot.
func (l *routeLog) insert(e *logEntry) {
	mask := uint64(len(l.slots) - 1)
	i := e.hash & mask
	for l.slots[i].Load() != nil {
		i = (i + 1) & mask
	}
	l.slots[i].Store(e)
	l.used++
}

// grown returns a log twice the size of l with the same entries.
func (l *routeLog) grown() *routeLog {
	g := &routeLog{slots: make([]atomic.Pointer[logEntry], 2*len(l.slots))}
	for i := range l.slots {
		if e := l.slots[i].Load(); e != nil {
			g.insert(e)
		}
	}
	return g
}

// each calls f with every domain of l that has a route as of version, and
// that route.
func (l *routeLog) each(version uint64, f func(domain string, ref *appRef)) {
	if l == nil {
		return
	}
	for i := range l.slots {
		if e := l.slots[i].Load(); e != nil {
			if ref, ok := e.at(version); ok {
				f(e.domain, ref)
			}
		}
	}
}
