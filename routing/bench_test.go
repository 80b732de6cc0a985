package routing

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
)

// benchTable returns a table of n apps, each with one container and two
// domains, and the hosts it routes.
func benchTable(b *testing.B, n int) (*Table, []string) {
	b.Helper()
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	hosts := make([]string, 0, n)
	batch := make([]events.Event, 0, 1024)
	for i := range n {
		app := fmt.Sprintf("app-%d", i)
		host := app + ".osc-fr1.example.com"
		hosts = append(hosts, host)
		batch = append(batch,
			events.Event{Kind: events.KindDeploy, App: app, Generation: 1, Containers: []events.Container{{ID: "web-1", Address: "10.0.0.1:5000"}}},
			events.Event{Kind: events.KindDomains, App: app, Generation: 2, Domains: []string{host, "www." + app + ".example.org"}})
		if len(batch) == cap(batch) {
			tb.Apply(batch)
			batch = batch[:0]
		}
	}
	tb.Apply(batch)
	return tb, hosts
}

// queries returns the hosts to look up, in the order a benchmark reads them,
// laid out one after the other in one buffer. A Host header is parsed just
// before its lookup, so it is in the cache and shares no memory with the
// table's keys; reading queries in order from one buffer gives the same.
func queries(hosts []string, pick func(k int) int) []string {
	idx := make([]int, len(hosts))
	size := 0
	for k := range idx {
		idx[k] = pick(k)
		size += len(hosts[idx[k]])
	}
	buf := make([]byte, 0, size)
	out := make([]string, len(idx))
	for k, i := range idx {
		start := len(buf)
		buf = append(buf, hosts[i]...)
		out[k] = unsafe.String(&buf[start], len(hosts[i]))
	}
	return out
}

// busyApps is the number of apps that receive the traffic in the "busy"
// shape of BenchmarkLookup.
const busyApps = 1000

// BenchmarkLookup measures the lookup of a Host header in the route table
// (two domains per app), next to a plain Go map of the same hosts doing the
// same work (normalisation, then the load of the app's current state) as a
// baseline measured in the same run; a map cannot be updated without a lock
// or a full copy. Three traffic shapes:
// busy, the traffic of 1000 apps picked at random among all (their paths
// in the table stay in the CPU caches, so this is the cost of the lookup
// itself); a Zipf law (s = 1.1) over every app, as the traffic of a
// platform is skewed towards its popular apps; and every app equally likely
// (uniform, the worst case for the caches: mostly memory latency).
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		tb, hosts := benchTable(b, n)
		s := settle(b, tb) // as once the events stop
		m := make(map[string]*appRef, n)
		for _, h := range hosts {
			m[h], _ = s.hosts.get(h)
		}
		zipf := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), 1.1, 1, uint64(n-1))
		rng := rand.New(rand.NewPCG(3, 4))
		busy := rng.Perm(n)[:min(n, busyApps)]
		shapes := []struct {
			name string
			pick func(k int) int
		}{
			{"busy", func(int) int { return busy[rng.IntN(len(busy))] }},
			{"zipf", func(int) int { return int(zipf.Uint64()) }},
			{"uniform", func(k int) int { return k * 7919 % n }},
		}
		for _, shape := range shapes {
			qs := queries(hosts, shape.pick)
			b.Run(fmt.Sprintf("apps=%d/%s/table", n, shape.name), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, ok := s.Lookup(qs[i]); !ok {
						b.Fatal("miss")
					}
					if i++; i == len(qs) {
						i = 0
					}
				}
			})
			b.Run(fmt.Sprintf("apps=%d/%s/gomap", n, shape.name), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, ok := load(m[normalizeHost(qs[i])], true); !ok {
						b.Fatal("miss")
					}
					if i++; i == len(qs) {
						i = 0
					}
				}
			})
		}
	}
}

// BenchmarkLookupWildcard measures a host served by a wildcard domain: one
// exact miss, then the wildcard.
func BenchmarkLookupWildcard(b *testing.B) {
	tb, _ := benchTable(b, 100_000)
	tb.Apply([]events.Event{{Kind: events.KindDomains, App: "app-1", Generation: 3, Domains: []string{"*.wild.example.com"}}})
	s := settle(b, tb)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := s.Lookup("api.wild.example.com:443"); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkApply measures the cost of one event applied to a table of 1k,
// 10k and 100k apps, published as a new snapshot, one event per batch (the
// worst case: no coalescing): a deploy that replaces an app's two containers
// with two new ones, and a domains event that replaces one of an app's two
// domains with another. Every app flips between two such states, set up
// before the clock starts, so that each event does the same work at every
// size; names and events are built beforehand too, as the decoder hands
// them over built.
func BenchmarkApply(b *testing.B) {
	// One generation counter for every run, so that no event is stale
	// however often the framework calls a sub-benchmark.
	gen := uint64(10)
	containers := [2][]events.Container{
		{{ID: "web-2", Address: "10.0.0.2:5000"}, {ID: "web-3", Address: "10.0.0.3:5000"}},
		{{ID: "web-4", Address: "10.0.0.4:5000"}, {ID: "web-5", Address: "10.0.0.5:5000"}},
	}
	for _, n := range []int{1_000, 10_000, 100_000} {
		tb, hosts := benchTable(b, n)
		names := make([]string, n)
		domains := make([][2][]string, n)
		for i := range n {
			names[i] = fmt.Sprintf("app-%d", i)
			for k := range 2 {
				domains[i][k] = []string{hosts[i], fmt.Sprintf("v%d.%s.example.org", k, names[i])}
			}
		}
		// Every app in state 0 of both aspects; the benchmarks flip it.
		state := make([]int, n)
		batch := make([]events.Event, 0, 1024)
		for i := range n {
			gen++
			batch = append(batch,
				events.Event{Kind: events.KindDeploy, App: names[i], Generation: gen, Containers: containers[0]},
				events.Event{Kind: events.KindDomains, App: names[i], Generation: gen + 1, Domains: domains[i][0]})
			gen++
			if len(batch) == cap(batch) {
				tb.Apply(batch)
				batch = batch[:0]
			}
		}
		tb.Apply(batch)
		flip := func(i int) int { state[i] ^= 1; return state[i] }
		b.Run(fmt.Sprintf("apps=%d/deploy", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			batch := make([]events.Event, 1)
			for b.Loop() {
				gen++
				i = (i + 7919) % n
				batch[0] = events.Event{Kind: events.KindDeploy, App: names[i], Generation: gen, Containers: containers[flip(i)]}
				tb.Apply(batch)
			}
		})
		clear(state)
		b.Run(fmt.Sprintf("apps=%d/domains", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			batch := make([]events.Event, 1)
			for b.Loop() {
				gen++
				i = (i + 7919) % n
				batch[0] = events.Event{Kind: events.KindDomains, App: names[i], Generation: gen, Domains: domains[i][flip(i)]}
				tb.Apply(batch)
			}
		})
	}
}

// BenchmarkMerge measures a merge of the host map at 100k apps (200k
// domains) with a delta of base/8 routes, the size that starts one: the
// work a background merge does, and that work spread over the changes that
// called for it.
func BenchmarkMerge(b *testing.B) {
	tb, hosts := benchTable(b, 100_000)
	s := settle(b, tb)
	changes := len(s.hosts.base) / mergeRatio
	// A host map of its own, so that the table's log is left alone.
	builder := hostMap{base: s.hosts.base, baseVer: s.version}.builder(s.version+1, nil)
	for i := range changes {
		builder.Delete(hosts[i])
	}
	m := builder.Map()
	b.ReportAllocs()
	for b.Loop() {
		m.merged()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(changes), "ns/change")
}
