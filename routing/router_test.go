package routing_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/testenv"
)

const region = testenv.Region

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	t.Cleanup(cancel)
	return c
}

// setup starts NATS and a ready router, and returns a publisher.
func setup(t testing.TB) (*testenv.NATS, *testenv.Router, *events.Publisher) {
	t.Helper()
	n := testenv.StartNATS(t)
	r := testenv.StartRouter(t, n.Connect(t), region)
	r.WaitReady(t)
	return n, r, n.Publisher(t, region)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDeployRoutesByHost(t *testing.T) {
	_, r, pub := setup(t)
	c := testenv.StartContainer(t, "shop", "web-1")
	must(t, pub.Domains(ctx(t), "shop", 1, []string{"shop.example.com"}))
	must(t, pub.Deploy(ctx(t), "shop", 2, testenv.Containers(c)))
	r.WaitRoutes(t, "shop deployed", testenv.Routed("shop.example.com", "shop", "web-1"))

	req, _ := http.NewRequest(http.MethodGet, r.URL+"/cart?x=1", nil)
	req.Host = "Shop.Example.com:80"
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	resp, reply := testenv.Do(t, req)
	if resp.StatusCode != http.StatusOK || reply.App != "shop" || reply.Container != "web-1" {
		t.Fatalf("got %d from %q/%q, want 200 from shop/web-1", resp.StatusCode, reply.App, reply.Container)
	}
	h := reply.Header
	port := r.URL[strings.LastIndexByte(r.URL, ':')+1:]
	checks := map[string]string{
		"X-Forwarded-For":   "127.0.0.1", // the client's own value is not trusted
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Port":  port,
	}
	for k, want := range checks {
		if got := h.Get(k); got != want {
			t.Errorf("container got %s = %q, want %q", k, got, want)
		}
	}
	if reply.Host != "Shop.Example.com:80" || reply.Path != "/cart" {
		t.Errorf("container got Host %q path %q", reply.Host, reply.Path)
	}
	id := h.Get("X-Request-Id")
	if len(id) != 32 || resp.Header.Get("X-Request-Id") != id {
		t.Errorf("request id: container %q, response %q", id, resp.Header.Get("X-Request-Id"))
	}

	// A sane client id is kept; a bad one replaced.
	for _, tt := range []struct {
		sent string
		kept bool
	}{{"abcdefghij0123456789-_+/=", true}, {"short", false}, {strings.Repeat("x", 20) + "<script>", false}} {
		req, _ := http.NewRequest(http.MethodGet, r.URL, nil)
		req.Host = "shop.example.com"
		req.Header.Set("X-Request-Id", tt.sent)
		_, reply := testenv.Do(t, req)
		if got := reply.Header.Get("X-Request-Id") == tt.sent; got != tt.kept {
			t.Errorf("client id %q: kept=%v, want %v", tt.sent, got, tt.kept)
		}
	}
}

func errorCode(t *testing.T, r *testenv.Router, host string) (int, string) {
	t.Helper()
	resp, _ := r.Get(t, host, "/")
	return resp.StatusCode, resp.Header.Get(routing.ErrorHeader)
}

func TestLifecycle(t *testing.T) {
	_, r, pub := setup(t)
	host := "app.example.com"
	a1, a2 := testenv.StartContainer(t, "app", "a1"), testenv.StartContainer(t, "app", "a2")
	must(t, pub.Domains(ctx(t), "app", 1, []string{host}))
	must(t, pub.Deploy(ctx(t), "app", 2, testenv.Containers(a1, a2)))
	r.WaitRoutes(t, "deployed", testenv.Routed(host, "app", "a1", "a2"))

	t.Run("round robin", func(t *testing.T) {
		seen := map[string]int{}
		for range 10 {
			_, reply := r.Get(t, host, "/")
			seen[reply.Container]++
		}
		if seen["a1"] != 5 || seen["a2"] != 5 {
			t.Fatalf("10 requests went %v, want 5 each", seen)
		}
	})

	t.Run("restart moves traffic", func(t *testing.T) {
		b1, b2 := testenv.StartContainer(t, "app", "b1"), testenv.StartContainer(t, "app", "b2")
		must(t, pub.Restart(ctx(t), "app", 3, testenv.Containers(b1, b2)))
		r.WaitRoutes(t, "restarted", testenv.Routed(host, "app", "b1", "b2"))
		old := a1.Hits() + a2.Hits()
		for range 10 {
			if _, reply := r.Get(t, host, "/"); reply.Container != "b1" && reply.Container != "b2" {
				t.Fatalf("request after restart went to %q", reply.Container)
			}
		}
		if got := a1.Hits() + a2.Hits(); got != old {
			t.Fatalf("old containers got %d new requests", got-old)
		}
	})

	t.Run("scale up, down, to zero", func(t *testing.T) {
		cs := []*testenv.Container{testenv.StartContainer(t, "app", "c1"), testenv.StartContainer(t, "app", "c2"), testenv.StartContainer(t, "app", "c3")}
		must(t, pub.Scale(ctx(t), "app", 4, testenv.Containers(cs...)))
		r.WaitRoutes(t, "scaled to 3", testenv.Routed(host, "app", "c1", "c2", "c3"))
		seen := map[string]bool{}
		for range 3 {
			_, reply := r.Get(t, host, "/")
			seen[reply.Container] = true
		}
		if len(seen) != 3 {
			t.Fatalf("3 requests reached %v, want all 3 containers", seen)
		}
		must(t, pub.Scale(ctx(t), "app", 5, testenv.Containers(cs[0])))
		r.WaitRoutes(t, "scaled to 1", testenv.Routed(host, "app", "c1"))
		must(t, pub.Scale(ctx(t), "app", 6, nil))
		r.WaitRoutes(t, "scaled to 0", testenv.Routed(host, "app"))
		if code, e := errorCode(t, r, host); code != http.StatusServiceUnavailable || e != "no_container" {
			t.Fatalf("scaled to zero: %d %q, want 503 no_container", code, e)
		}
	})

	t.Run("domains change", func(t *testing.T) {
		c := testenv.StartContainer(t, "app", "d1")
		must(t, pub.Deploy(ctx(t), "app", 7, testenv.Containers(c)))
		must(t, pub.Domains(ctx(t), "app", 8, []string{"new.example.com", "*.wild.example.com"}))
		r.WaitRoutes(t, "new domains", testenv.Routed("x.wild.example.com", "app", "d1"))
		if code, e := errorCode(t, r, host); code != http.StatusNotFound || e != "unknown_host" {
			t.Fatalf("old domain: %d %q, want 404 unknown_host", code, e)
		}
		if _, reply := r.Get(t, "new.example.com", "/"); reply.Container != "d1" {
			t.Fatalf("new domain went to %q", reply.Container)
		}
	})

	t.Run("delete", func(t *testing.T) {
		must(t, pub.Delete(ctx(t), "app", 9))
		r.WaitRoutes(t, "deleted", func(s *routing.Snapshot) bool { _, ok := s.App("app"); return !ok })
		if code, e := errorCode(t, r, "new.example.com"); code != http.StatusNotFound || e != "unknown_host" {
			t.Fatalf("deleted app: %d %q, want 404 unknown_host", code, e)
		}
	})
}

func TestContainerUnreachable(t *testing.T) {
	_, r, pub := setup(t)
	c := testenv.StartContainer(t, "gone", "g1")
	c.Stop()
	must(t, pub.Domains(ctx(t), "gone", 1, []string{"gone.example.com"}))
	must(t, pub.Deploy(ctx(t), "gone", 2, testenv.Containers(c)))
	r.WaitRoutes(t, "deployed", testenv.Routed("gone.example.com", "gone", "g1"))
	resp, _ := r.Get(t, "gone.example.com", "/")
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(routing.ErrorHeader) != "container_unreachable" {
		t.Fatalf("got %d %q, want 502 container_unreachable", resp.StatusCode, resp.Header.Get(routing.ErrorHeader))
	}
	// HTTP/1.0 without Host names no app.
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.URL, "http://"))
	must(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	must(t, err)
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	must(t, err)
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(routing.ErrorHeader) != "missing_host" {
		t.Fatalf("no Host: %d %q, want 400 missing_host", resp.StatusCode, resp.Header.Get(routing.ErrorHeader))
	}
}

// publishRaw stores data on the subject without the Publisher's checks, as a
// buggy or foreign publisher would, and returns its stream sequence.
func publishRaw(t *testing.T, js jetstream.JetStream, subject, data string) uint64 {
	t.Helper()
	ack, err := js.Publish(ctx(t), subject, []byte(data))
	if err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
	return ack.Sequence
}

func TestRouterIgnoresStaleAndDuplicateEvents(t *testing.T) {
	n, r, _ := setup(t)
	js := n.JetStream(t)
	subj := events.Subject(region, "app", events.AspectContainers)
	ev := func(gen int, id string) string {
		return `{"v":1,"kind":"deploy","app":"app","generation":` + itoa(gen) + `,"containers":[{"id":"` + id + `","address":"127.0.0.1:9"}]}`
	}
	publishRaw(t, js, subj, ev(5, "current"))
	r.WaitRoutes(t, "gen 5", func(s *routing.Snapshot) bool { a, ok := s.App("app"); return ok && a.Generation == 5 })
	before := r.Table().Snapshot()
	publishRaw(t, js, subj, ev(5, "duplicate"))
	publishRaw(t, js, subj, ev(4, "stale"))
	// A marker on another app tells when the router has read them all:
	// the stream is read in order.
	publishRaw(t, js, events.Subject(region, "marker", events.AspectContainers), `{"v":1,"kind":"scale","app":"marker","generation":1,"containers":[]}`)
	s := r.WaitRoutes(t, "marker read", func(s *routing.Snapshot) bool { _, ok := s.App("marker"); return ok })
	a, _ := s.App("app")
	if a.Containers[0].ID != "current" {
		t.Fatalf("container %q after a duplicate and a stale event, want current", a.Containers[0].ID)
	}
	if b, _ := before.App("app"); a != b {
		t.Fatalf("the app's routes were rebuilt by events that changed nothing")
	}
}

type adminStatus struct {
	Ready  bool          `json:"ready"`
	Events events.Status `json:"events"`
	Routes []routing.App `json:"routes"`
}

func status(t *testing.T, r *testenv.Router) adminStatus {
	t.Helper()
	resp, err := http.Get(r.AdminURL + "/routes")
	must(t, err)
	defer resp.Body.Close()
	var st adminStatus
	must(t, json.NewDecoder(resp.Body).Decode(&st))
	return st
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestMalformedEventsRejected(t *testing.T) {
	n := testenv.StartNATS(t)
	log, logs := testenv.CaptureLogs(t)
	r := testenv.StartRouterConfig(t, n.Connect(t), routing.Config{Region: region, Logger: log})
	r.WaitReady(t)
	pub := n.Publisher(t, region)
	js := n.JetStream(t)
	c := testenv.StartContainer(t, "app", "c1")
	must(t, pub.Domains(ctx(t), "app", 1, []string{"app.example.com"}))
	must(t, pub.Deploy(ctx(t), "app", 2, testenv.Containers(c)))
	r.WaitRoutes(t, "deployed", testenv.Routed("app.example.com", "app", "c1"))
	want := r.Table().Snapshot().Apps()

	containers := events.Subject(region, "app", events.AspectContainers)
	doms := events.Subject(region, "app", events.AspectDomains)
	bad := []struct{ name, subject, data, reason string }{
		{"not JSON", containers, `deploy app`, "malformed JSON: invalid character"},
		{"truncated", containers, `{"v":1,"kind":"deploy"`, "malformed JSON: unexpected EOF"},
		{"no version", containers, `{"kind":"deploy","app":"app","generation":9,"containers":[]}`, "no version (v)"},
		{"future version", containers, `{"v":2,"kind":"deploy","app":"app","generation":9,"containers":[]}`, "unsupported version 2"},
		{"unknown kind", containers, `{"v":1,"kind":"explode","app":"app","generation":9,"containers":[]}`, `unknown kind "explode"`},
		{"unknown field", containers, `{"v":1,"kind":"deploy","app":"app","generation":9,"containres":[]}`, `unknown field "containres"`},
		{"missing containers", containers, `{"v":1,"kind":"deploy","app":"app","generation":9}`, "deploy event without containers"},
		{"app mismatch", containers, `{"v":1,"kind":"deploy","app":"other","generation":9,"containers":[]}`, `app "other" in the payload`},
		{"kind on wrong subject", containers, `{"v":1,"kind":"domains","app":"app","generation":9,"domains":[]}`, `kind "domains" sent on the "containers" subject`},
		{"zero generation", containers, `{"v":1,"kind":"deploy","app":"app","generation":0,"containers":[]}`, "generation 0 out of range"},
		{"negative generation", containers, `{"v":1,"kind":"deploy","app":"app","generation":-1,"containers":[]}`, "cannot unmarshal number -1"},
		{"bad address", containers, `{"v":1,"kind":"deploy","app":"app","generation":9,"containers":[{"id":"x","address":"10.0.0.1"}]}`, `address "10.0.0.1": want HOST:PORT`},
		{"bad port", containers, `{"v":1,"kind":"deploy","app":"app","generation":9,"containers":[{"id":"x","address":"10.0.0.1:70000"}]}`, "port must be a number"},
		{"bad container id", containers, `{"v":1,"kind":"deploy","app":"app","generation":9,"containers":[{"id":"../x","address":"10.0.0.1:80"}]}`, `container id "../x"`},
		{"duplicate container", containers, `{"v":1,"kind":"deploy","app":"app","generation":9,"containers":[{"id":"x","address":"10.0.0.1:80"},{"id":"x","address":"10.0.0.2:80"}]}`, `container id "x" listed twice`},
		{"upper-case domain", doms, `{"v":1,"kind":"domains","app":"app","generation":9,"domains":["App.example.com"]}`, `domain "App.example.com": want a lowercase name`},
		{"unicode domain", doms, `{"v":1,"kind":"domains","app":"app","generation":9,"domains":["café.example.com"]}`, `domain "café.example.com"`},
		{"bad wildcard", doms, `{"v":1,"kind":"domains","app":"app","generation":9,"domains":["www.*.example.com"]}`, "only allowed as a leading"},
		{"null domains", doms, `{"v":1,"kind":"domains","app":"app","generation":9,"domains":null}`, "domains event without domains"},
		{"trailing data", doms, `{"v":1,"kind":"domains","app":"app","generation":9,"domains":[]} {}`, "data after the JSON object"},
	}
	// Each is published once the router has rejected the one before, so
	// that none is dropped from the subject's history unread.
	for _, b := range bad {
		seq := publishRaw(t, js, b.subject, b.data)
		logs.WaitLine(t, "event rejected", map[string]string{"subject": b.subject, "seq": strconv.FormatUint(seq, 10), "reason": b.reason})
	}
	if got, want := status(t, r).Events.Rejected, uint64(len(bad)); got != want {
		t.Fatalf("rejected %d events, want %d", got, want)
	}
	got := r.Table().Snapshot().Apps()
	if len(got) != 1 || got[0] != want[0] {
		t.Fatalf("malformed events changed the table: %+v", got)
	}
	if _, reply := r.Get(t, "app.example.com", "/"); reply.Container != "c1" {
		t.Fatalf("app no longer served after malformed events: %q", reply.Container)
	}
}

func TestRouterRestartLoadsStateBeforeReady(t *testing.T) {
	dir := t.TempDir()
	n := testenv.StartNATSIn(t, dir)
	r := testenv.StartRouter(t, n.Connect(t), region)
	r.WaitReady(t)
	pub := n.Publisher(t, region)
	var hosts []string
	for i := range 200 {
		app := "app-" + itoa(i)
		hosts = append(hosts, app+".example.com")
		must(t, pub.Domains(ctx(t), app, 1, []string{app + ".example.com"}))
		must(t, pub.Deploy(ctx(t), app, 2, []events.Container{{ID: "c", Address: "127.0.0.1:9"}}))
	}
	must(t, pub.Delete(ctx(t), "app-7", 3))
	r.WaitRoutes(t, "200 apps, one deleted", func(s *routing.Snapshot) bool {
		_, ok := s.App("app-7")
		return s.Len() == 199 && !ok
	})
	want := status(t, r).Routes
	r.Stop(t)
	n.Stop()

	n2 := testenv.StartNATSIn(t, dir)
	r2 := testenv.StartRouter(t, n2.Connect(t), region)
	r2.WaitReady(t)
	// Ready means loaded: no wait for routes here.
	got := status(t, r2).Routes
	if !equalRoutes(got, want) {
		t.Fatalf("after restart, %d apps; want the %d from before", len(got), len(want))
	}
	if _, ok := r2.Table().Snapshot().Lookup(hosts[7]); ok {
		t.Fatalf("deleted app came back after restart")
	}
}

func equalRoutes(a, b []routing.App) bool {
	return slices.EqualFunc(a, b, func(x, y routing.App) bool {
		return x.Name == y.Name && x.Generation == y.Generation && slices.Equal(x.Domains, y.Domains) && x.Options == y.Options &&
			slices.EqualFunc(x.Containers, y.Containers, func(a, b routing.Container) bool { return a.Container == b.Container })
	})
}

func TestTwoRoutersConverge(t *testing.T) {
	n := testenv.StartNATS(t)
	pub := n.Publisher(t, region)
	r1 := testenv.StartRouter(t, n.Connect(t), region)
	for i := range 50 {
		app := "app-" + itoa(i%10)
		must(t, pub.Deploy(ctx(t), app, uint64(2*i+1), []events.Container{{ID: "c" + itoa(i), Address: "127.0.0.1:" + itoa(1000+i)}}))
		must(t, pub.Domains(ctx(t), app, uint64(2*i+2), []string{app + ".example.com", "v" + itoa(i) + ".example.com"}))
		if i == 25 {
			must(t, pub.Delete(ctx(t), "app-3", 100))
		}
	}
	// The second router starts late: it reads the stored state, the first
	// one read the live events. Both must have read up to the stream's
	// last message before they are compared.
	r2 := testenv.StartRouter(t, n.Connect(t), region)
	r1.WaitReady(t)
	r2.WaitReady(t)
	st, err := n.JetStream(t).Stream(ctx(t), events.StreamName(region))
	must(t, err)
	last := st.CachedInfo().State.LastSeq
	waitApplied(t, r1, last)
	waitApplied(t, r2, last)
	want := status(t, r1).Routes
	// app-3 was deleted at generation 100, above all its other events.
	if len(want) != 9 {
		t.Fatalf("first router has %d apps, want 9", len(want))
	}
	if got := status(t, r2).Routes; !equalRoutes(got, want) {
		t.Fatalf("routers differ:\n%+v\n%+v", got, want)
	}
}

// waitApplied waits until r has handled the stream's messages up to seq.
func waitApplied(t *testing.T, r *testenv.Router, seq uint64) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("the router has handled the stream up to sequence %d", seq), func() bool {
		return status(t, r).Events.LastSequence >= seq
	})
}

func TestAdminEndpoints(t *testing.T) {
	_, r, pub := setup(t)
	must(t, pub.Deploy(ctx(t), "web", 1, []events.Container{{ID: "w", Address: "[::1]:8080"}}))
	r.WaitRoutes(t, "deployed", func(s *routing.Snapshot) bool { return s.Len() == 1 })
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/routes": 200, "/nope": 404} {
		resp, err := http.Get(r.AdminURL + path)
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
	}
	st := status(t, r)
	if len(st.Routes) != 1 || st.Routes[0].Name != "web" || st.Routes[0].Containers[0].Address != "[::1]:8080" || st.Routes[0].Generation != 1 {
		t.Fatalf("/routes = %+v", st.Routes)
	}
}

func TestReadyzBeforeLoad(t *testing.T) {
	a := &routing.Admin{Table: routing.NewTable(testenv.Logger(t), nil), Events: func() events.Status { return events.Status{} }}
	for _, tt := range []struct {
		ready bool
		want  int
	}{{false, 503}, {true, 200}} {
		a.Events = func() events.Status { return events.Status{Ready: tt.ready} }
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		if rec.Code != tt.want {
			t.Errorf("ready=%v: /readyz = %d, want %d", tt.ready, rec.Code, tt.want)
		}
	}
}

// TestDomainOwnerAgreesAcrossRouters reproduces the audit of domain
// ownership: alpha owns shop.example.com, beta's claim is refused, then
// alpha publishes its domains again, which puts its message after beta's
// in the stream. A router started afterwards must still give the domain to
// alpha, as the running one does, and log the conflict.
func TestDomainOwnerAgreesAcrossRouters(t *testing.T) {
	n, first, pub := setup(t)
	var clock int64 = 1_700_000_000_000
	pub.Now = func() time.Time { clock += 1000; return time.UnixMilli(clock) }
	a, b := testenv.StartContainer(t, "alpha", "a1"), testenv.StartContainer(t, "beta", "b1")
	must(t, pub.Deploy(ctx(t), "alpha", 1, testenv.Containers(a)))
	must(t, pub.Deploy(ctx(t), "beta", 1, testenv.Containers(b)))
	must(t, pub.Domains(ctx(t), "alpha", 2, []string{"shop.example.com"}))
	first.WaitRoutes(t, "alpha owns shop", testenv.Routed("shop.example.com", "alpha", "a1"))
	must(t, pub.Domains(ctx(t), "beta", 2, []string{"shop.example.com", "beta.example.com"}))
	first.WaitRoutes(t, "beta's other domain", testenv.Routed("beta.example.com", "beta", "b1"))
	must(t, pub.Domains(ctx(t), "alpha", 3, []string{"shop.example.com", "alpha.example.com"}))
	first.WaitRoutes(t, "alpha's new domain", testenv.Routed("alpha.example.com", "alpha", "a1"))

	logs := &testenv.Logs{}
	second := testenv.StartRouterConfig(t, n.Connect(t), routing.Config{Region: region, Logger: zerolog.New(logs)})
	second.WaitReady(t)
	second.WaitRoutes(t, "alpha's new domain", testenv.Routed("alpha.example.com", "alpha", "a1"))

	for name, r := range map[string]*testenv.Router{"running router": first, "new router": second} {
		if _, reply := r.Get(t, "shop.example.com", "/"); reply.App != "alpha" {
			t.Errorf("%s: shop.example.com answered by %q, want alpha", name, reply.App)
		}
		var refused []string
		for _, app := range status(t, r).Routes {
			if app.Name == "beta" {
				refused = app.Refused
			}
		}
		if !slices.Equal(refused, []string{"shop.example.com"}) {
			t.Errorf("%s: /routes lists beta's refused_domains %v, want [shop.example.com]", name, refused)
		}
	}
	var conflict struct{ Level, Code, Domain, Owner, Refused string }
	for l := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(l, `"domain_conflict"`) {
			must(t, json.Unmarshal([]byte(l), &conflict))
		}
	}
	if want := (struct{ Level, Code, Domain, Owner, Refused string }{"warn", "domain_conflict", "shop.example.com", "alpha", "beta"}); conflict != want {
		t.Errorf("new router's conflict log line: %+v, want %+v\nlog:\n%s", conflict, want, logs.String())
	}
}
