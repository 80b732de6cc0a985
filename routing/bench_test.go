package routing

import (
	"fmt"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
)

// benchTable returns a table of n apps, each with one container and two
// domains, and the hosts it routes.
func benchTable(b *testing.B, n int) (*Table, []string) {
	b.Helper()
	tb := NewTable(zerolog.Nop())
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

// fresh returns copies of hosts that share no memory with the table's keys,
// as Host headers parsed from requests do not.
func fresh(hosts []string) []string {
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = string([]byte(h))
	}
	return out
}

// BenchmarkLookup measures the lookup of a Host header in the route table
// (two domains per app), next to a plain Go map of the same hosts with the
// same normalisation (a map cannot be updated without a lock or a full
// copy) as a baseline measured in the same run.
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		tb, hosts := benchTable(b, n)
		s := tb.Snapshot()
		queries := fresh(hosts)
		b.Run(fmt.Sprintf("apps=%d/table", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, ok := s.Lookup(queries[i]); !ok {
					b.Fatal("miss")
				}
				i = (i + 7919) % n
			}
		})
		m := make(map[string]*App, n)
		for _, h := range hosts {
			m[h], _ = s.Lookup(h)
		}
		b.Run(fmt.Sprintf("apps=%d/gomap", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if m[normalizeHost(queries[i])] == nil {
					b.Fatal("miss")
				}
				i = (i + 7919) % n
			}
		})
	}
}

// BenchmarkLookupWildcard measures a host served by a wildcard domain: one
// exact miss, then the wildcard.
func BenchmarkLookupWildcard(b *testing.B) {
	tb, _ := benchTable(b, 100_000)
	tb.Apply([]events.Event{{Kind: events.KindDomains, App: "app-1", Generation: 3, Domains: []string{"*.wild.example.com"}}})
	s := tb.Snapshot()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := s.Lookup("api.wild.example.com:443"); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkApply measures the cost of one event applied to a table of 100k
// apps, published as a new snapshot: a deploy (new container set) or a
// domains change, one event per batch (the worst case: no coalescing).
func BenchmarkApply(b *testing.B) {
	// One generation counter for every run, so that no event is stale
	// however often the framework calls a sub-benchmark.
	gen := uint64(10)
	for _, n := range []int{1_000, 100_000} {
		tb, _ := benchTable(b, n)
		b.Run(fmt.Sprintf("apps=%d/deploy", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			batch := make([]events.Event, 1)
			for b.Loop() {
				gen++
				i = (i + 7919) % n
				batch[0] = events.Event{Kind: events.KindDeploy, App: fmt.Sprintf("app-%d", i), Generation: gen,
					Containers: []events.Container{{ID: "web-2", Address: "10.0.0.2:5000"}, {ID: "web-3", Address: "10.0.0.3:5000"}}}
				tb.Apply(batch)
			}
		})
		b.Run(fmt.Sprintf("apps=%d/domains", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			batch := make([]events.Event, 1)
			for b.Loop() {
				gen++
				i = (i + 7919) % n
				app := fmt.Sprintf("app-%d", i)
				batch[0] = events.Event{Kind: events.KindDomains, App: app, Generation: gen,
					Domains: []string{app + ".osc-fr1.example.com", fmt.Sprintf("v%d.example.org", gen)}}
				tb.Apply(batch)
			}
		})
	}
}
