package routing

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"

	"github.com/rs/zerolog"
)

func TestErrorPageAddresses(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"93.184.215.14", true}, {"2606:2800:21f:cb07:6820:80da:af6b:8b2c", true},
		{"127.0.0.1", false}, {"::1", false}, {"::ffff:127.0.0.1", false}, {"0.0.0.0", false}, {"::", false},
		{"10.1.2.3", false}, {"172.16.0.1", false}, {"192.168.1.1", false}, {"fd00::1", false},
		{"169.254.169.254", false}, {"fe80::1", false}, {"224.0.0.1", false}, {"ff02::1", false}, {"100.64.0.1", false},
	} {
		if got := publicAddr(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("publicAddr(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// htmlServer serves body as text/html.
func htmlServer(t *testing.T, body string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, body)
	}))
	t.Cleanup(s.Close)
	return s
}

// allowPorts is an address check that lets through the ports of servers.
func allowPorts(servers ...*httptest.Server) func(netip.AddrPort) bool {
	return func(ap netip.AddrPort) bool {
		for _, s := range servers {
			if strconv.Itoa(int(ap.Port())) == s.URL[len(s.URL)-len(strconv.Itoa(int(ap.Port()))):] {
				return true
			}
		}
		return false
	}
}

func TestErrorPageDownload(t *testing.T) {
	const page = "<html>sorry</html>"
	inside := htmlServer(t, page)
	redirect := httptest.NewServer(http.RedirectHandler(inside.URL, http.StatusFound))
	t.Cleanup(redirect.Close)
	json := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"routes":[]}`)
	}))
	t.Cleanup(json.Close)

	e := newErrorPages(zerolog.Nop(), nil)
	e.allow = allowPorts(redirect, json)
	ctx := context.Background()
	if _, err := e.download(ctx, inside.URL); !errors.Is(err, errRefusedAddress) {
		t.Errorf("a refused address: %v, want %v", err, errRefusedAddress)
	}
	if _, err := e.download(ctx, redirect.URL); !errors.Is(err, errRefusedAddress) {
		t.Errorf("a redirect to a refused address: %v, want %v", err, errRefusedAddress)
	}
	if _, err := e.download(ctx, json.URL); err == nil {
		t.Error("a JSON page was accepted")
	}
	e.allow = allowPorts(redirect, inside)
	for _, url := range []string{inside.URL, redirect.URL} {
		if got, err := e.download(ctx, url); err != nil || string(got) != page {
			t.Errorf("allowed %s: %q, %v; want the page", url, got, err)
		}
	}
}

func TestErrorPageCacheBounded(t *testing.T) {
	e := newErrorPages(zerolog.Nop(), nil)
	e.max = 3
	for i := range 10 {
		e.get("https://pages.example.com/" + strconv.Itoa(i))
		e.get("https://pages.example.com/keep") // asked for all along
		e.mu.Lock()
		for _, p := range e.pages {
			p.fetching = false // as if the fetch had ended
		}
		e.mu.Unlock()
	}
	if got := len(e.pages); got > 3 {
		t.Fatalf("%d pages cached, want at most 3", got)
	}
	for _, url := range []string{"https://pages.example.com/keep", "https://pages.example.com/9"} {
		if e.pages[url] == nil {
			t.Errorf("%s, asked for recently, was dropped", url)
		}
	}
	// While every cached page is being fetched, none can be dropped: a new
	// page is not cached rather than grow the cache.
	e.mu.Lock()
	for _, p := range e.pages {
		p.fetching = true
	}
	e.mu.Unlock()
	e.get("https://pages.example.com/new")
	if got := len(e.pages); got > 3 {
		t.Fatalf("%d pages cached while all were being fetched, want at most 3", got)
	}
}
