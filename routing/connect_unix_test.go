//go:build unix

package routing_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/testenv"
)

// A container that does not answer the connection attempt at all costs a
// request ConnectTimeout, then the request goes to the next container.
func TestConnectTimeoutIsRetried(t *testing.T) {
	const connect = 200 * time.Millisecond
	w := newWorld(t, routing.Config{ConnectTimeout: connect})
	good := testenv.StartContainer(t, "app", "good")
	must(t, w.pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: "app", Generation: w.gen.Add(1), Domains: []string{"app.example.com"}}))
	must(t, w.pub.Deploy(ctx(t), "app", w.gen.Add(1), []events.Container{{ID: "hole", Address: testenv.StartBlackhole(t)}, good.Event()}))
	w.r.WaitRoutes(t, "app routed", testenv.Routed("app.example.com", "app", "hole", "good"))

	// Round-robin sends one of the first two requests to the blackhole.
	for range 2 {
		start := time.Now()
		resp, body := w.get(t, "app", "/")
		if resp.StatusCode != http.StatusOK || container(t, body) != "good" {
			t.Fatalf("got %d from %s, want 200 from good", resp.StatusCode, body)
		}
		if d := time.Since(start); d > connect+time.Second {
			t.Fatalf("answered after %v, want about the %v connect timeout at most", d, connect)
		}
	}
	l := w.waitLog(t, "with a retry", func(l map[string]any) bool { return l["retries"] == 1.0 })
	if ms, _ := l["connect_ms"].(float64); ms < float64(connect/time.Millisecond) {
		t.Fatalf("connect_ms %v, want at least the %v spent on the blackhole", l["connect_ms"], connect)
	}
	app, _ := w.r.Table().Snapshot().App("app")
	if !app.Containers[0].Quarantined() {
		t.Fatal("the container that timed out is not quarantined")
	}
}
