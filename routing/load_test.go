package routing_test

import (
	"net/http"
	"testing"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/testenv"
)

// A purged stream has no message but a last sequence above zero: there is
// nothing to load, so the router is ready at once.
func TestReadyOnPurgedStream(t *testing.T) {
	n := testenv.StartNATS(t)
	pub := n.Publisher(t, region)
	must(t, pub.Deploy(ctx(t), "gone", 1, []events.Container{{ID: "c1", Address: "127.0.0.1:9"}}))
	js := n.JetStream(t)
	st, err := js.Stream(ctx(t), events.StreamName(region))
	must(t, err)
	must(t, st.Purge(ctx(t)))

	r := testenv.StartRouter(t, n.Connect(t), region)
	r.WaitReady(t)
	resp, err := http.Get(r.AdminURL + "/readyz")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /readyz = %d, want 200", resp.StatusCode)
	}
	if got := r.Table().Snapshot().Len(); got != 0 {
		t.Fatalf("purged stream loaded %d apps", got)
	}
}
