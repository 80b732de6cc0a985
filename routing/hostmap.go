package routing

import "maps"

// hostMap is the persistent map from exact domains to their owners that
// every request reads. A hamt alone costs a walk of four to five levels at
// 200k domains, each a cache miss when the path is cold, where a Go map
// reaches its entry in about one; but a Go map cannot change under its
// readers, and copying it for each change would cost the whole table.
//
// So a hostMap is a frozen Go map, base, built from the snapshot of version
// baseVer, plus a hamt of the routes changed since, delta (a removed route
// maps to removed). A change copies a path of the delta only. When the
// delta has grown to an eighth of the base, a merge builds a new base off
// the event path (see Table.merge): a merge costs O(domains), spread over
// the base/8 changes that called for it, so that no event pays for it and
// its cost per change does not grow with the table.
//
// A lookup that finds its domain in the base needs the delta only if the
// domain's route changed after baseVer, and that is known without walking
// the delta: each change of a route marks the app the base leads to with
// the version of the snapshot that changes it (appRef.routesChanged), and
// the app is loaded anyway. The delta is walked for the apps marked and for
// the domains the base does not have.
//
// A hostMap is never changed once published: a base is not written after it
// is built, and marks only send lookups to the delta, which gives the right
// answer for every snapshot whatever the mark says.
type hostMap struct {
	base    map[string]*appRef // never written once published
	baseVer uint64             // version of the snapshot base was built from
	delta   hamt[appRef]       // routes changed since baseVer
}

// removed marks, in a delta, a route the base has and that is gone.
var removed = new(appRef)

// mergeMin is the size of a delta always worth keeping, and mergeRatio the
// fraction of the base beyond which a merge starts: an eighth keeps the
// delta's paths short for about nine domains copied per change.
const (
	mergeMin   = 1024
	mergeRatio = 8
)

// get returns the owner of domain.
func (m *hostMap) get(domain string) (*appRef, bool) {
	ref, ok := m.base[domain]
	if ok && ref.routesChanged.Load() <= m.baseVer || m.delta.Len() == 0 {
		return ref, ok
	}
	return resolve(m.delta, domain, ref, ok)
}

// lookup returns the owner of domain without the shortcut of marks, for
// the writer.
func (m *hostMap) lookup(domain string) (*appRef, bool) {
	ref, ok := m.base[domain]
	return resolve(m.delta, domain, ref, ok)
}

// resolve returns the owner of domain given delta and what the base holds
// for it.
func resolve(delta hamt[appRef], domain string, ref *appRef, ok bool) (*appRef, bool) {
	if d, changed := delta.Get(domain); changed {
		if d == removed {
			return nil, false
		}
		return d, true
	}
	return ref, ok
}

// needsMerge reports whether the delta has grown enough for a new base.
func (m *hostMap) needsMerge() bool {
	return m.delta.Len() > mergeMin+len(m.base)/mergeRatio
}

// merged returns a new base: m's base with its delta applied.
func (m *hostMap) merged() map[string]*appRef {
	base := maps.Clone(m.base)
	if base == nil {
		base = make(map[string]*appRef, m.delta.Len())
	}
	m.delta.Range(func(domain string, ref *appRef) bool {
		if ref == removed {
			delete(base, domain)
		} else {
			base[domain] = ref
		}
		return true
	})
	return base
}

// rebased returns m with base as its base, built from the snapshot of
// version baseVer: changed are the domains whose routes changed after that
// snapshot (m routes them as they are now), and version the version of the
// snapshot the result is for.
func (m *hostMap) rebased(base map[string]*appRef, baseVer, version uint64, changed []string) hostMap {
	var delta hamtBuilder[appRef]
	for _, domain := range changed {
		ref, ok := m.lookup(domain)
		was, had := base[domain]
		switch {
		case ok == had && ref == was:
			delta.Delete(domain) // the base has it right, or listed twice
			continue
		case ok:
			delta.Set(domain, ref)
		default:
			delta.Set(domain, removed)
		}
		if had {
			was.routesChanged.Store(version)
		}
	}
	return hostMap{base: base, baseVer: baseVer, delta: delta.Map()}
}

// hostMapBuilder makes the changes of a batch to a hostMap.
type hostMapBuilder struct {
	m       hostMap
	delta   hamtBuilder[appRef]
	version uint64    // of the snapshot being built
	changed *[]string // where to record the domains changed; nil: nowhere
}

// builder returns a builder of the hostMap of the snapshot of version
// version, starting from m; the domains it changes are appended to
// *changed, unless changed is nil.
func (m hostMap) builder(version uint64, changed *[]string) hostMapBuilder {
	return hostMapBuilder{m: m, delta: m.delta.builder(), version: version, changed: changed}
}

// Set routes domain to ref.
func (b *hostMapBuilder) Set(domain string, ref *appRef) {
	b.touch(domain)
	b.delta.Set(domain, ref)
}

// Delete removes the route of domain.
func (b *hostMapBuilder) Delete(domain string) {
	if b.touch(domain) {
		b.delta.Set(domain, removed)
	} else {
		b.delta.Delete(domain)
	}
}

// touch records that domain changes, marks the app the base sends it to,
// and reports whether the base has domain.
func (b *hostMapBuilder) touch(domain string) bool {
	if b.changed != nil {
		*b.changed = append(*b.changed, domain)
	}
	ref, ok := b.m.base[domain]
	if ok {
		ref.routesChanged.Store(b.version)
	}
	return ok
}

// Map returns the map built.
func (b *hostMapBuilder) Map() hostMap {
	b.m.delta = b.delta.Map()
	return b.m
}
