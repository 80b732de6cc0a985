package routing

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
)

func FuzzLookup(f *testing.F) {
	tb := NewTable(zerolog.Nop(), shaping.NewLimiter(shaping.Limits{}))
	tb.Apply([]events.Event{
		deploy("a", 1, "x"), domains("a", 2, "www.example.com", "example.com"),
		deploy("b", 1, "y"), domains("b", 2, "*.example.com"),
	})
	s := tb.Snapshot()
	for _, seed := range []string{"www.example.com", "WWW.EXAMPLE.COM:8080", "api.example.com.", "[::1]:80", "example.com:", ":80", "a.b.example.com", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, host string) {
		a, ok := s.Lookup(host)
		if ok != (a != nil) {
			t.Fatalf("Lookup(%q) = %v, %v", host, a, ok)
		}
		// Case never matters.
		b, okUpper := s.Lookup(asciiUpper(host))
		if ok != okUpper || a != b {
			t.Fatalf("Lookup(%q) and its upper case differ", host)
		}
		// A name that routes routes the same with a port or a trailing dot.
		if ok && !strings.ContainsAny(host, ":") && !strings.HasSuffix(host, ".") {
			for _, h := range []string{host + ".", host + ":443"} {
				if c, _ := s.Lookup(h); c != a {
					t.Fatalf("Lookup(%q) differs from Lookup(%q)", h, host)
				}
			}
		}
	})
}

func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
