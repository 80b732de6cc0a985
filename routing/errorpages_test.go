package routing_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
)

// waitPageRefused polls the log until the fetch of url has failed.
func (w *world) waitPageRefused(t *testing.T, url string) {
	t.Helper()
	l := w.logs.WaitMatch(t, "of a failed fetch of "+url, func(l map[string]any) bool {
		msg, _ := l["message"].(string)
		return strings.HasPrefix(msg, "app error page not fetched") && l["url"] == url
	})
	if err, _ := l["error"].(string); !strings.Contains(err, "refused") {
		t.Fatalf("the page failed for another reason: %v", l)
	}
}

// An app's error page URL must not make the router fetch what only the
// router can reach (server-side request forgery): the router's own page is
// served instead.
func TestErrorPageRefusesInternalAddresses(t *testing.T) {
	const page = "<html><body>Our app is resting.</body></html>"
	var hits atomic.Int64
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, page)
	}))
	defer site.Close()
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	for _, tt := range []struct {
		name     string
		networks []netip.Prefix
		url      func(w *world) string
	}{
		{"loopback by default", nil, func(*world) string { return site.URL + "/oops.html" }},
		{"admin listener, its network allowed", loopback, func(w *world) string { return w.r.AdminURL + "/routes" }},
		{"redirect to the admin listener", loopback, func(w *world) string {
			redirect := httptest.NewServer(http.RedirectHandler(w.r.AdminURL+"/routes", http.StatusFound))
			t.Cleanup(redirect.Close)
			return redirect.URL
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, routing.Config{ErrorPageNetworks: tt.networks})
			url := tt.url(w)
			w.deploy(t, "snoop", events.AppOptions{ErrorPage: url})
			resp, body := w.get(t, "snoop", "/")
			wantError(t, resp, body, http.StatusServiceUnavailable, "no_container")
			w.waitPageRefused(t, url)
			resp, body = w.get(t, "snoop", "/")
			wantError(t, resp, body, http.StatusServiceUnavailable, "no_container")
			if !strings.Contains(string(body), "<h1>503 Service Unavailable</h1>") {
				t.Fatalf("not the router's own page: %s", body)
			}
		})
	}
	if hits.Load() != 0 {
		t.Fatalf("the page on loopback was fetched %d times", hits.Load())
	}
}
