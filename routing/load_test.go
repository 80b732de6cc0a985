package routing_test

import (
	"net/http"
	"testing"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
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

// restartedRouter stops r and starts another router on the same NATS, with
// its log captured, once it is ready.
func restartedRouter(t *testing.T, n *testenv.NATS, r *testenv.Router) (*testenv.Router, *testenv.Logs) {
	t.Helper()
	r.Stop(t)
	log, logs := testenv.CaptureLogs(t)
	r2 := testenv.StartRouterConfig(t, n.Connect(t), routing.Config{Region: region, Logger: log})
	r2.WaitReady(t)
	return r2, logs
}

// Junk published raw on a subject becomes its last message; a router that
// starts afterwards rejects it, says why, and uses the newest valid message
// of the subject instead.
func TestJunkLastMessageFallsBackOnLoad(t *testing.T) {
	t.Run("junk on delete keeps the app deleted", func(t *testing.T) {
		n, r, pub := setup(t)
		c := testenv.StartContainer(t, "app", "c1")
		must(t, pub.Domains(ctx(t), "app", 1, []string{"app.example.com"}))
		must(t, pub.Deploy(ctx(t), "app", 2, testenv.Containers(c)))
		r.WaitRoutes(t, "deployed", testenv.Routed("app.example.com", "app", "c1"))
		must(t, pub.Delete(ctx(t), "app", 3))
		r.WaitRoutes(t, "deleted", func(s *routing.Snapshot) bool { return s.Len() == 0 })
		subject := events.Subject(region, "app", events.AspectDelete)
		publishRaw(t, n.JetStream(t), subject, `{"v":1,"kind":"delete","app":"app"}`)

		r2, logs := restartedRouter(t, n, r)
		if code, _ := errorCode(t, r2, "app.example.com"); code != http.StatusNotFound {
			t.Fatalf("deleted app answers %d after junk on its delete subject and a restart, want 404", code)
		}
		logs.WaitLine(t, "event rejected", map[string]string{"subject": subject, "reason": "no generation"})
		logs.WaitLine(t, "rejected event replaced by the newest valid event of its subject", map[string]string{"subject": subject})
	})

	t.Run("junk on containers keeps the last valid containers", func(t *testing.T) {
		n, r, pub := setup(t)
		c1, c2 := testenv.StartContainer(t, "app", "c1"), testenv.StartContainer(t, "app", "c2")
		must(t, pub.Domains(ctx(t), "app", 1, []string{"app.example.com"}))
		must(t, pub.Deploy(ctx(t), "app", 2, testenv.Containers(c1)))
		must(t, pub.Scale(ctx(t), "app", 3, testenv.Containers(c1, c2)))
		r.WaitRoutes(t, "scaled", testenv.Routed("app.example.com", "app", "c1", "c2"))
		subject := events.Subject(region, "app", events.AspectContainers)
		publishRaw(t, n.JetStream(t), subject, `{"v":1,"kind":"scale","app":"app","generation":9,"containers":[{"id":"x","address":"10.0.0.1"}]}`)

		r2, logs := restartedRouter(t, n, r)
		r2.WaitRoutes(t, "last valid containers", testenv.Routed("app.example.com", "app", "c1", "c2"))
		if _, reply := r2.Get(t, "app.example.com", "/"); reply.App != "app" {
			t.Fatalf("app not served after junk on its containers subject and a restart: %+v", reply)
		}
		logs.WaitLine(t, "event rejected", map[string]string{"subject": subject, "reason": `address "10.0.0.1"`})
	})
}

// A starting router applies the stored state in batches: loading N events
// publishes far fewer than N versions of the route table.
func TestFirstLoadIsCoalesced(t *testing.T) {
	const apps = 100 // two events each
	n := testenv.StartNATS(t)
	pub := n.Publisher(t, region)
	for i := range apps {
		app := "app-" + itoa(i)
		must(t, pub.Domains(ctx(t), app, 1, []string{app + ".example.com"}))
		must(t, pub.Deploy(ctx(t), app, 2, []events.Container{{ID: "c1", Address: "127.0.0.1:" + itoa(1000+i)}}))
	}
	r := testenv.StartRouter(t, n.Connect(t), region)
	r.WaitReady(t)
	s := r.Table().Snapshot()
	if s.Len() != apps {
		t.Fatalf("loaded %d apps, want %d", s.Len(), apps)
	}
	if got, most := s.Version(), uint64(2*apps/10); got > most {
		t.Fatalf("loading %d events published %d table versions, want at most %d", 2*apps, got, most)
	}
}
