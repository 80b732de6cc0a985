package routing_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/testenv"
)

// world is a NATS, a router configured by cfg, and a publisher.
type world struct {
	n    *testenv.NATS
	r    *testenv.Router
	pub  *events.Publisher
	logs *testenv.Logs
	gen  atomic.Uint64
}

func newWorld(t *testing.T, cfg routing.Config) *world {
	t.Helper()
	w := &world{n: testenv.StartNATS(t), logs: &testenv.Logs{}}
	cfg.Region = region
	cfg.Logger = zerolog.New(w.logs)
	w.r = testenv.StartRouterConfig(t, w.n.Connect(t), cfg)
	w.r.WaitReady(t)
	w.pub = w.n.Publisher(t, region)
	return w
}

// deploy gives app the domain app.example.com (with opts) and the
// containers cs, and waits until the router routes to them.
func (w *world) deploy(t *testing.T, app string, opts events.AppOptions, cs ...*testenv.Container) {
	t.Helper()
	must(t, w.pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: app, Generation: w.gen.Add(1), Domains: []string{app + ".example.com"}, Options: opts}))
	w.replace(t, app, cs...)
}

// replace publishes cs as app's containers and waits until they are routed.
func (w *world) replace(t *testing.T, app string, cs ...*testenv.Container) {
	t.Helper()
	must(t, w.pub.Deploy(ctx(t), app, w.gen.Add(1), testenv.Containers(cs...)))
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	w.r.WaitRoutes(t, app+" routed", testenv.Routed(app+".example.com", app, ids...))
}

// get sends GET path for app's host, with the given headers.
func (w *world) get(t *testing.T, app, path string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.r.URL+path, nil)
	req.Host = app + ".example.com"
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	return resp, body
}

// getLater sends GET path to app from another goroutine and delivers the
// body (nil if the request failed, which fails the test) when it comes.
func (w *world) getLater(t *testing.T, app, path string) <-chan []byte {
	t.Helper()
	got := make(chan []byte, 1)
	req, _ := http.NewRequest(http.MethodGet, w.r.URL+path, nil)
	req.Host = app + ".example.com"
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("GET %s%s: %v", req.Host, path, err)
			got <- nil
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Errorf("GET %s%s: %v", req.Host, path, err)
		}
		got <- body
	}()
	return got
}

// container returns the id of the container that answered body.
func container(t *testing.T, body []byte) string {
	t.Helper()
	var reply testenv.Reply
	if err := json.Unmarshal(body, &reply); err != nil {
		t.Fatalf("not a container's reply: %s", body)
	}
	return reply.Container
}

// wantError checks a router-made error: status, code header, and page.
func wantError(t *testing.T, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status || resp.Header.Get(routing.ErrorHeader) != code {
		t.Fatalf("got %d %s=%q (%s), want %d %q", resp.StatusCode, routing.ErrorHeader, resp.Header.Get(routing.ErrorHeader), body, status, code)
	}
	if !strings.Contains(string(body), code) {
		t.Fatalf("the error page does not name its code %q: %s", code, body)
	}
}

// waitLog polls the access log until a line satisfies cond.
func (w *world) waitLog(t *testing.T, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	return w.logs.WaitMatch(t, "request "+what, func(l map[string]any) bool { return l["message"] == "request" && cond(l) })
}

func TestZeroDowntimeDeploys(t *testing.T) {
	w := newWorld(t, routing.Config{})
	gen := 0
	next := func() []*testenv.Container {
		gen++
		return []*testenv.Container{
			testenv.StartContainer(t, "app", fmt.Sprintf("g%d-a", gen)),
			testenv.StartContainer(t, "app", fmt.Sprintf("g%d-b", gen)),
		}
	}
	current := next()
	w.deploy(t, "app", events.AppOptions{}, current...)

	// Clients loop over keep-alive connections while five deploys each
	// replace every container; the platform stops the old ones
	// gracefully half a second after the event.
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var firstFailure atomic.Value
	var clients sync.WaitGroup
	for range 4 {
		clients.Go(func() {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: testenv.Timeout}
			defer client.CloseIdleConnections()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/", nil)
				req.Host = "app.example.com"
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d %s", resp.StatusCode, resp.Header.Get(routing.ErrorHeader))
					}
				}
				if err != nil {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		})
	}
	var stopping sync.WaitGroup
	for range 5 {
		old := current
		current = next()
		w.replace(t, "app", current...)
		stopping.Go(func() {
			time.Sleep(500 * time.Millisecond)
			for _, c := range old {
				c.Shutdown(t)
			}
		})
		time.Sleep(200 * time.Millisecond) // load keeps running between deploys
	}
	stopping.Wait()
	close(stop)
	clients.Wait()
	if failed.Load() != 0 || ok.Load() < 100 {
		t.Fatalf("%d requests failed (first: %v), %d succeeded; want 0 failed", failed.Load(), firstFailure.Load(), ok.Load())
	}
	t.Logf("%d requests, no failure, across 5 full replacements", ok.Load())
}

func TestStreamsInFlightFinishAfterTheirContainerIsRemoved(t *testing.T) {
	w := newWorld(t, routing.Config{})
	old := testenv.StartContainer(t, "app", "old")
	w.deploy(t, "app", events.AppOptions{}, old)

	slow := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/sleep/400ms", nil)
		req.Host = "app.example.com"
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		slow <- err
	}()
	req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/sse/4/100ms", nil)
	req.Host = "app.example.com"
	sse, err := http.DefaultClient.Do(req)
	must(t, err)
	defer sse.Body.Close()
	ws, _, err := websocket.Dial(ctx(t), "ws"+strings.TrimPrefix(w.r.URL, "http")+"/ws/echo", &websocket.DialOptions{Host: "app.example.com"})
	must(t, err)
	defer ws.CloseNow()
	waitInflight(t, w.r, "app", 3)

	// A deploy replaces the container; the old one is told to stop and
	// waits for what it has in flight, as after SIGTERM.
	w.replace(t, "app", testenv.StartContainer(t, "app", "new"))
	stopped := make(chan struct{})
	go func() { old.Shutdown(t); close(stopped) }()

	if _, body := w.get(t, "app", "/"); container(t, body) != "new" {
		t.Fatalf("a new request went to %s, want new", container(t, body))
	}
	lines := bufio.NewScanner(sse.Body)
	events := 0
	for events < 4 && lines.Scan() {
		if strings.HasPrefix(lines.Text(), "data: ") {
			events++
		}
	}
	if events != 4 {
		t.Fatalf("the SSE stream ended after %d of 4 events: %v", events, lines.Err())
	}
	must(t, ws.Write(ctx(t), websocket.MessageText, []byte("still there?")))
	if _, msg, err := ws.Read(ctx(t)); err != nil || string(msg) != "still there?" {
		t.Fatalf("the WebSocket on the removed container: %q, %v", msg, err)
	}
	if err := <-slow; err != nil {
		t.Fatalf("the request in flight on the removed container: %v", err)
	}
	ws.Close(websocket.StatusNormalClosure, "")
	sse.Body.Close()
	<-stopped
}

// A request admitted to a container that a deploy then replaces and stops
// before the request could connect is retried on the app's new container,
// not answered 502: the deploy costs no client error.
func TestRetryAfterADeployGoesToTheNewContainers(t *testing.T) {
	old := testenv.StartContainer(t, "app", "old")
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == old.Address() {
			once.Do(func() { close(held) })
			<-release
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	w := newWorld(t, routing.Config{DialContext: dial})
	w.deploy(t, "app", events.AppOptions{}, old)
	got := w.getLater(t, "app", "/")
	<-held // the request has its slot on old and is connecting
	w.replace(t, "app", testenv.StartContainer(t, "app", "new"))
	old.Stop()
	close(release)
	if c := container(t, <-got); c != "new" {
		t.Fatalf("the request was answered by %q, want the new container", c)
	}
}

// waitInflight waits until the router has n requests in flight on app.
func waitInflight(t *testing.T, r *testenv.Router, app string, n int64) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("%d requests are in flight on %s", n, app), func() bool {
		a, ok := r.Table().Snapshot().App(app)
		var total int64
		for _, c := range a.Containers {
			total += c.Inflight()
		}
		return ok && total == n
	})
}

// waitQueued waits until at least n requests wait in app's queue on r.
func waitQueued(t *testing.T, r *testenv.Router, app string, n int64) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("%d requests wait in the queue of %s", n, app), func() bool {
		a, ok := r.Table().Snapshot().App(app)
		return ok && a.Queued() >= n
	})
}

func TestCrashedContainerIsQuarantinedAndComesBack(t *testing.T) {
	w := newWorld(t, routing.Config{ProbeInterval: 20 * time.Millisecond})
	a, b := testenv.StartContainer(t, "app", "a"), testenv.StartContainer(t, "app", "b")
	w.deploy(t, "app", events.AppOptions{}, a, b)
	addr := a.Address()
	a.Stop() // a crash: no event

	for i := range 20 {
		resp, body := w.get(t, "app", "/")
		if resp.StatusCode != http.StatusOK || container(t, body) != "b" {
			t.Fatalf("request %d after a crashed: %d from %q, want 200 from b", i, resp.StatusCode, container(t, body))
		}
	}
	quarantined := func() bool {
		app, _ := w.r.Table().Snapshot().App("app")
		return app.Containers[0].Quarantined()
	}
	if !quarantined() {
		t.Fatal("the crashed container is not quarantined")
	}
	l := w.waitLog(t, "with a retry", func(l map[string]any) bool { return l["retries"] == 1.0 })
	if l["status"] != 200.0 || l["container"] != "b" {
		t.Fatalf("the retried request's log line: %v", l)
	}

	// It comes back at the same address: a probe finds it.
	back := testenv.StartContainerAt(t, "app", "a", addr)
	testenv.Eventually(t, "the container is out of quarantine after it came back", func() bool { return !quarantined() })
	for range 4 {
		w.get(t, "app", "/")
	}
	if back.Hits() == 0 {
		t.Fatal("the container back from quarantine gets no request")
	}
}

func TestEveryContainerUnreachable(t *testing.T) {
	w := newWorld(t, routing.Config{})
	a, b := testenv.StartContainer(t, "app", "a"), testenv.StartContainer(t, "app", "b")
	w.deploy(t, "app", events.AppOptions{}, a, b)
	a.Stop()
	b.Stop()
	resp, body := w.get(t, "app", "/")
	wantError(t, resp, body, http.StatusBadGateway, "container_unreachable")
	w.waitLog(t, "with one retry after the first attempt", func(l map[string]any) bool {
		return l["error"] == "container_unreachable" && l["retries"] == 1.0
	})
}

func TestContainerFailures(t *testing.T) {
	w := newWorld(t, routing.Config{ResponseTimeout: 300 * time.Millisecond})
	a, b := testenv.StartContainer(t, "app", "a"), testenv.StartContainer(t, "app", "b")
	w.deploy(t, "app", events.AppOptions{}, a, b)

	t.Run("never answers", func(t *testing.T) {
		start := time.Now()
		resp, body := w.get(t, "app", "/hang")
		wantError(t, resp, body, http.StatusGatewayTimeout, "container_timeout")
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("504 after %v, want it after the 300ms response timeout", d)
		}
	})
	t.Run("closes without answering", func(t *testing.T) {
		hits := a.Hits() + b.Hits()
		resp, body := w.get(t, "app", "/close")
		wantError(t, resp, body, http.StatusBadGateway, "container_error")
		// The request was sent: it must not be sent again.
		if got := a.Hits() + b.Hits() - hits; got != 1 {
			t.Fatalf("the containers got the request %d times, want once", got)
		}
	})
	t.Run("cuts the response", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/cut", nil)
		req.Host = "app.example.com"
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatal("a response cut by the container reached the client whole")
		}
		w.waitLog(t, "for the cut response", func(l map[string]any) bool {
			return l["path"] == "/cut" && l["error"] == "container_error"
		})
	})
}

func TestIdleTimeout(t *testing.T) {
	w := newWorld(t, routing.Config{IdleTimeout: 400 * time.Millisecond})
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))

	t.Run("server-sent events", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/sse/3/250ms", nil)
		req.Host = "app.example.com"
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
		lines := bufio.NewScanner(resp.Body)
		for i := range 3 {
			for lines.Scan() && !strings.HasPrefix(lines.Text(), "data: ") {
			}
			// Each event arrives when sent, not buffered: the third at
			// 750ms. The stream outlives the 400ms idle timeout because
			// it is never idle that long.
			if got, want := time.Since(start), time.Duration(i+1)*250*time.Millisecond; got < want || got > want+200*time.Millisecond {
				t.Fatalf("event %d arrived after %v, want about %v", i, got, want)
			}
		}
		// Then the container is silent: the stream is closed.
		for lines.Scan() {
		}
		if got := time.Since(start); got < 1100*time.Millisecond || got > 3*time.Second {
			t.Fatalf("the silent stream was closed after %v, want about 750ms + 400ms", got)
		}
		l := w.waitLog(t, "for the stream", func(l map[string]any) bool { return l["path"] == "/sse/3/250ms" })
		if l["error"] != "stream_idle" || l["status"] != 200.0 {
			t.Fatalf("the idle stream logged %v %v, want 200 stream_idle", l["status"], l["error"])
		}
	})
	t.Run("websocket", func(t *testing.T) {
		ws, _, err := websocket.Dial(ctx(t), "ws"+strings.TrimPrefix(w.r.URL, "http")+"/ws/echo", &websocket.DialOptions{Host: "app.example.com"})
		must(t, err)
		defer ws.CloseNow()
		for range 3 { // active for longer than the idle timeout
			must(t, ws.Write(ctx(t), websocket.MessageText, []byte("ping")))
			if _, _, err := ws.Read(ctx(t)); err != nil {
				t.Fatalf("an active WebSocket was closed: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		start := time.Now()
		_, _, err = ws.Read(ctx(t))
		if err == nil {
			t.Fatal("an idle WebSocket got a message")
		}
		if got := time.Since(start); got > 3*time.Second {
			t.Fatalf("the idle WebSocket was closed after %v, want about 400ms", got)
		}
	})
}

func TestSlowClientIsCutOff(t *testing.T) {
	w := newWorld(t, routing.Config{ReadHeaderTimeout: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(w.r.URL, "http://"))
	must(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: app.example.com\r\n") // and never the end
	must(t, err)
	must(t, conn.SetReadDeadline(time.Now().Add(testenv.Timeout)))
	start := time.Now()
	_, err = io.ReadAll(conn)
	if got := time.Since(start); err != nil || got > 2*time.Second {
		t.Fatalf("a client that never finished its headers was cut off after %v (%v), want about 200ms", got, err)
	}
}

// A client connection idle between requests is closed after
// KeepAliveTimeout: an idle client holds no connection for long.
func TestIdleKeepAliveIsClosed(t *testing.T) {
	w := newWorld(t, routing.Config{KeepAliveTimeout: 200 * time.Millisecond})
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))
	conn, err := net.Dial("tcp", strings.TrimPrefix(w.r.URL, "http://"))
	must(t, err)
	defer conn.Close()
	must(t, conn.SetDeadline(time.Now().Add(testenv.Timeout)))
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
	must(t, err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	must(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("the first request: %d, close %v; want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the idle connection: read %v, want the router to close it", err)
	}
	if got := time.Since(start); got > 2*time.Second {
		t.Fatalf("the idle connection was closed after %v, want about 200ms", got)
	}
}

func TestRequestLimits(t *testing.T) {
	w := newWorld(t, routing.Config{MaxRequestBody: 1000})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	post := func(body io.Reader, size int64) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodPost, w.r.URL+"/", body)
		req.Host = "app.example.com"
		req.ContentLength = size
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}

	t.Run("body at the limit", func(t *testing.T) {
		resp, body := post(strings.NewReader(strings.Repeat("x", 1000)), 1000)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a 1000-byte body with a 1000-byte limit: %d %s", resp.StatusCode, body)
		}
	})
	t.Run("declared body too large", func(t *testing.T) {
		hits := c.Hits()
		resp, body := post(strings.NewReader(strings.Repeat("x", 1001)), 1001)
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "body_too_large")
		if c.Hits() != hits {
			t.Fatal("a body declared too large reached the container")
		}
	})
	t.Run("chunked body too large", func(t *testing.T) {
		resp, body := post(io.MultiReader(strings.NewReader(strings.Repeat("x", 2000))), -1)
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "body_too_large")
	})
	t.Run("one header too large", func(t *testing.T) {
		resp, body := w.get(t, "app", "/", "X-Big", strings.Repeat("x", routing.MaxHeaderField))
		wantError(t, resp, body, http.StatusRequestHeaderFieldsTooLarge, "header_too_large")
	})
	t.Run("header block too large", func(t *testing.T) {
		var hs []string
		for i := range 9 {
			hs = append(hs, "X-Part-"+strconv.Itoa(i), strings.Repeat("x", 4000))
		}
		resp, body := w.get(t, "app", "/", hs...)
		wantError(t, resp, body, http.StatusRequestHeaderFieldsTooLarge, "header_too_large")
	})
}

func TestErrorPages(t *testing.T) {
	// The test's pages are served on loopback, refused by default.
	w := newWorld(t, routing.Config{ErrorPageNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	w.deploy(t, "empty", events.AppOptions{})

	for _, tt := range []struct {
		name, accept string
		json         bool
	}{
		{"browser", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", false},
		{"curl", "*/*", false},
		{"none", "", false},
		{"api", "application/json", true},
		{"api with fallback", "application/json, text/html;q=0.5", true},
		{"problem+json", "application/problem+json", true},
		{"html preferred", "application/json;q=0.5, text/html", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := w.get(t, "nope", "/", "Accept", tt.accept)
			wantError(t, resp, body, http.StatusNotFound, "unknown_host")
			ct := resp.Header.Get("Content-Type")
			if tt.json {
				var e struct {
					Status    int    `json:"status"`
					Code      string `json:"code"`
					Message   string `json:"message"`
					RequestID string `json:"request_id"`
				}
				if err := json.Unmarshal(body, &e); err != nil || ct != "application/json" {
					t.Fatalf("%s: %s (%v)", ct, body, err)
				}
				if e.Status != 404 || e.Code != "unknown_host" || e.Message == "" || e.RequestID != resp.Header.Get(routing.RequestIDHeader) {
					t.Fatalf("JSON error %+v", e)
				}
				return
			}
			if !strings.HasPrefix(ct, "text/html") || !strings.Contains(string(body), "<h1>404 Not Found</h1>") {
				t.Fatalf("%s: %s", ct, body)
			}
		})
	}
	resp, body := w.get(t, "empty", "/", "Accept", "application/json")
	wantError(t, resp, body, http.StatusServiceUnavailable, "no_container")

	t.Run("app's own page", func(t *testing.T) {
		const page = "<html><body>Our app is resting. Back soon.</body></html>"
		var fetches atomic.Int64
		site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fetches.Add(1)
			io.WriteString(w, page)
		}))
		defer site.Close()
		w.deploy(t, "resting", events.AppOptions{ErrorPage: site.URL + "/oops.html"})
		testenv.Eventually(t, "the app's error page replaces the router's", func() bool {
			resp, body := w.get(t, "resting", "/")
			if string(body) == page {
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(routing.ErrorHeader) != "no_container" {
					t.Fatalf("the app's page came with %d %q", resp.StatusCode, resp.Header.Get(routing.ErrorHeader))
				}
				return true
			}
			wantError(t, resp, body, http.StatusServiceUnavailable, "no_container") // the router's page meanwhile
			return false
		})
		// Cached: more errors fetch nothing; JSON clients still get JSON.
		for range 5 {
			w.get(t, "resting", "/")
		}
		if fetches.Load() != 1 {
			t.Fatalf("the page was fetched %d times, want once", fetches.Load())
		}
		resp, body := w.get(t, "resting", "/", "Accept", "application/json")
		wantError(t, resp, body, http.StatusServiceUnavailable, "no_container")
	})
	t.Run("page too large", func(t *testing.T) {
		site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, strings.Repeat("x", routing.MaxErrorPageSize+1))
		}))
		defer site.Close()
		w.deploy(t, "huge", events.AppOptions{ErrorPage: site.URL})
		for range 20 {
			resp, body := w.get(t, "huge", "/")
			wantError(t, resp, body, http.StatusServiceUnavailable, "no_container")
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func TestStickySessions(t *testing.T) {
	w := newWorld(t, routing.Config{})
	cs := []*testenv.Container{testenv.StartContainer(t, "app", "a"), testenv.StartContainer(t, "app", "b"), testenv.StartContainer(t, "app", "c")}
	w.deploy(t, "app", events.AppOptions{Sticky: true}, cs...)

	resp, body := w.get(t, "app", "/")
	first := container(t, body)
	cookie := resp.Cookies()
	if len(cookie) != 1 || cookie[0].Name != routing.StickyCookie || cookie[0].MaxAge != 86400 || !cookie[0].HttpOnly {
		t.Fatalf("sticky cookie %v, want %s for 24h, HttpOnly", resp.Header.Values("Set-Cookie"), routing.StickyCookie)
	}
	for range 6 {
		resp, body := w.get(t, "app", "/", "Cookie", cookie[0].String())
		if got := container(t, body); got != first {
			t.Fatalf("with the cookie of %s, served by %s", first, got)
		}
		if len(resp.Cookies()) != 0 {
			t.Fatal("the cookie was set again though it still names a running container")
		}
	}
	// Its container goes: the cookie is ignored and replaced.
	var rest []*testenv.Container
	for _, c := range cs {
		if c.ID != first {
			rest = append(rest, c)
		}
	}
	w.replace(t, "app", rest...)
	resp, body = w.get(t, "app", "/", "Cookie", cookie[0].String())
	if resp.StatusCode != http.StatusOK || container(t, body) == first {
		t.Fatalf("with the cookie of a removed container: %d from %s", resp.StatusCode, container(t, body))
	}
	if c := resp.Cookies(); len(c) != 1 || c[0].Value == cookie[0].Value {
		t.Fatalf("no new cookie after its container left: %v", resp.Header.Values("Set-Cookie"))
	}
	// An app that is not sticky sets no cookie.
	w.deploy(t, "plain", events.AppOptions{}, testenv.StartContainer(t, "plain", "p"))
	if resp, _ := w.get(t, "plain", "/"); len(resp.Cookies()) != 0 {
		t.Fatal("a cookie from an app that is not sticky")
	}
}

func TestAdmissionCap(t *testing.T) {
	w := newWorld(t, routing.Config{MaxInflight: 2})
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))

	// 2 slots on the one container, and a queue of 2: four slow requests
	// are taken, the fifth is refused at once.
	results := make(chan int, 4)
	for range 4 {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/sleep/2s", nil)
			req.Host = "app.example.com"
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				results <- 0
				return
			}
			resp.Body.Close()
			results <- resp.StatusCode
		}()
	}
	waitInflight(t, w.r, "app", 2)
	waitQueued(t, w.r, "app", 2)
	// The fifth is refused without waiting for a slot.
	probe := &http.Client{Timeout: time.Second}
	req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/", nil)
	req.Host = "app.example.com"
	req.Header.Set("Accept", "application/json")
	resp, err := probe.Do(req)
	if err != nil {
		t.Fatalf("a request beyond the cap and queue: %v, want it refused at once", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantError(t, resp, body, http.StatusServiceUnavailable, "queue_full")
	for range 4 {
		if got := <-results; got != http.StatusOK {
			t.Fatalf("a request within the cap and queue: %d, want 200", got)
		}
	}

	// Streams the container has answered hold no slot: three open event
	// streams leave room for requests.
	for range 3 {
		req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/sse/1/10ms", nil)
		req.Host = "app.example.com"
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
	}
	waitInflight(t, w.r, "app", 3)
	if resp, body := w.get(t, "app", "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("a request with 3 event streams open and a cap of 2: %d %s", resp.StatusCode, body)
	}
}

// Requests waiting for a busy app's slot go to a container the app is scaled
// up with at once, without waiting for a slot of the old ones.
func TestScaleUpServesTheQueue(t *testing.T) {
	w := newWorld(t, routing.Config{MaxInflight: 1})
	a, b := testenv.StartContainer(t, "app", "a"), testenv.StartContainer(t, "app", "b")
	w.deploy(t, "app", events.AppOptions{}, a)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/sleep/5s", nil)
		req.Host = "app.example.com"
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitInflight(t, w.r, "app", 1)
	queued := w.getLater(t, "app", "/")
	waitQueued(t, w.r, "app", 1)
	start := time.Now()
	w.replace(t, "app", a, b)
	select {
	case body := <-queued:
		if got := container(t, body); got != "b" {
			t.Fatalf("the queued request went to %q, want the new container b", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("the queued request still waits %v after the scale up", time.Since(start))
	}
}

func TestLeastConnThroughTheProxy(t *testing.T) {
	w := newWorld(t, routing.Config{})
	a, b := testenv.StartContainer(t, "app", "a"), testenv.StartContainer(t, "app", "b")
	w.deploy(t, "app", events.AppOptions{Balance: events.BalanceLeastConn}, a, b)
	// A long request holds one container: every other request goes to the
	// other one.
	done := w.getLater(t, "app", "/sleep/500ms")
	waitInflight(t, w.r, "app", 1)
	busy := "a"
	if a.Hits() == 0 {
		busy = "b"
	}
	for range 6 {
		if _, body := w.get(t, "app", "/"); container(t, body) == busy {
			t.Fatalf("least-conn sent a request to %s, which has one in flight", busy)
		}
	}
	<-done
}

// The router keeps its connections to a container open between requests,
// as many as it has concurrent requests for (Go's default transport keeps 2
// per host, and would open a connection for nearly every request here).
func TestContainerConnectionsAreReused(t *testing.T) {
	w := newWorld(t, routing.Config{})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	const clients, rounds = 16, 20
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer client.CloseIdleConnections()
	for range rounds {
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/", nil)
				req.Host = "app.example.com"
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
		wg.Wait()
	}
	if hits, conns := c.Hits(), c.Conns(); hits != clients*rounds || conns > clients {
		t.Fatalf("%d requests reached the container over %d connections, want %d over at most %d", hits, conns, clients*rounds, clients)
	}
}

func TestForwardedHeaders(t *testing.T) {
	check := func(t *testing.T, trusted []netip.Prefix, xff, wantXFF, wantReal string) {
		w := newWorld(t, routing.Config{TrustedProxies: trusted})
		w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))
		before := time.Now().UnixMilli()
		_, body := w.get(t, "app", "/", "X-Forwarded-For", xff, "Connection", "X-Hop", "X-Hop", "secret")
		var reply testenv.Reply
		must(t, json.Unmarshal(body, &reply))
		h := reply.Header
		if got := h.Get("X-Forwarded-For"); got != wantXFF {
			t.Errorf("X-Forwarded-For %q, want %q", got, wantXFF)
		}
		if got := h.Get("X-Real-Ip"); got != wantReal {
			t.Errorf("X-Real-IP %q, want %q", got, wantReal)
		}
		start, err := strconv.ParseInt(strings.TrimPrefix(h.Get("X-Request-Start"), "t="), 10, 64)
		if err != nil || start < before || start > time.Now().UnixMilli() {
			t.Errorf("X-Request-Start %q, want t=<unix ms> of the request", h.Get("X-Request-Start"))
		}
		if h.Get("X-Hop") != "" {
			t.Error("a hop-by-hop header named by Connection reached the container")
		}
	}
	t.Run("edge", func(t *testing.T) {
		check(t, nil, "203.0.113.7", "127.0.0.1", "127.0.0.1")
	})
	t.Run("behind a trusted proxy", func(t *testing.T) {
		check(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")},
			"203.0.113.7, 10.1.2.3", "203.0.113.7, 10.1.2.3, 127.0.0.1", "203.0.113.7")
	})
}

func TestAccessLogLine(t *testing.T) {
	w := newWorld(t, routing.Config{})
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))
	req, _ := http.NewRequest(http.MethodPost, w.r.URL+"/sleep/50ms", strings.NewReader("hello"))
	req.Host = "app.example.com"
	resp, _ := testenv.Do(t, req)
	l := w.waitLog(t, "for the POST", func(l map[string]any) bool { return l["method"] == "POST" })
	for field, want := range map[string]any{"app": "app", "container": "a", "status": 200.0, "bytes_in": 5.0, "request_id": resp.Header.Get(routing.RequestIDHeader)} {
		if l[field] != want {
			t.Errorf("%s = %v, want %v", field, l[field], want)
		}
	}
	for _, field := range []string{"connect_ms", "ttfb_ms", "duration_ms", "bytes_out"} {
		if v, ok := l[field].(float64); !ok || v <= 0 {
			t.Errorf("%s = %v, want a positive number", field, l[field])
		}
	}
	if l["ttfb_ms"].(float64) < 50 || l["duration_ms"].(float64) < l["ttfb_ms"].(float64) {
		t.Errorf("ttfb %v ms and total %v ms for a container that answers after 50ms", l["ttfb_ms"], l["duration_ms"])
	}
	if _, ok := l["error"]; ok {
		t.Errorf("error %v on a request that went well", l["error"])
	}
}

// dial opens a raw connection to the router's HTTP listener and sends
// request on it.
func dial(t *testing.T, r *testenv.Router, request string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.URL, "http://"))
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = io.WriteString(conn, request)
	must(t, err)
	return conn
}

// A client that stops taking its response or sending its body holds its
// connection and the router's handler no longer than the idle window.
func TestClientIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	w := newWorld(t, routing.Config{IdleTimeout: idle})
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))
	soon := func(t *testing.T, start time.Time) {
		t.Helper()
		if got := time.Since(start); got > 8*idle { // loose: the machine may be busy
			t.Fatalf("the stalled exchange ended after %v, want within a few %v windows", got, idle)
		}
	}

	t.Run("response never read", func(t *testing.T) {
		const size = 1 << 30
		start := time.Now()
		conn := dial(t, w.r, "GET /bytes/"+strconv.Itoa(size)+" HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
		l := w.waitLog(t, "for the unread response", func(l map[string]any) bool { return l["path"] == "/bytes/"+strconv.Itoa(size) })
		soon(t, start)
		if l["error"] != "client_timeout" {
			t.Errorf("error %v, want client_timeout", l["error"])
		}
		must(t, conn.SetReadDeadline(time.Now().Add(testenv.Timeout)))
		n, err := io.Copy(io.Discard, conn)
		if err != nil || n >= size {
			t.Fatalf("the client read %d bytes then %v; want the connection closed before the end", n, err)
		}
	})
	t.Run("upload stalls", func(t *testing.T) {
		start := time.Now()
		conn := dial(t, w.r, "POST /upload HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 100\r\n\r\nabc")
		must(t, conn.SetReadDeadline(time.Now().Add(testenv.Timeout)))
		if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
			if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(routing.ErrorHeader) != "client_timeout" {
				t.Errorf("got %d %q, want 408 client_timeout", resp.StatusCode, resp.Header.Get(routing.ErrorHeader))
			}
			resp.Body.Close()
		}
		l := w.waitLog(t, "for the stalled upload", func(l map[string]any) bool { return l["path"] == "/upload" })
		soon(t, start)
		if l["error"] != "client_timeout" || l["bytes_in"] != 3.0 {
			t.Errorf("error %v with %v bytes in, want client_timeout after 3", l["error"], l["bytes_in"])
		}
	})
	t.Run("websocket client stops reading", func(t *testing.T) {
		ws, _, err := websocket.Dial(ctx(t), "ws"+strings.TrimPrefix(w.r.URL, "http")+"/ws/echo", &websocket.DialOptions{Host: "app.example.com"})
		must(t, err)
		defer ws.CloseNow()
		// The container echoes 16 MB, more than the sockets' buffers
		// hold, which the client never takes.
		must(t, ws.Write(ctx(t), websocket.MessageBinary, make([]byte, 16<<20)))
		start := time.Now()
		l := w.waitLog(t, "for the WebSocket", func(l map[string]any) bool { return l["path"] == "/ws/echo" })
		soon(t, start)
		if l["status"] != 101.0 {
			t.Errorf("status %v, want 101", l["status"])
		}
	})
}

// An upgraded connection's log line has its 101 and the bytes it relayed
// each way.
func TestWebSocketAccessLog(t *testing.T) {
	w := newWorld(t, routing.Config{})
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))
	ws, _, err := websocket.Dial(ctx(t), "ws"+strings.TrimPrefix(w.r.URL, "http")+"/ws/echo", &websocket.DialOptions{Host: "app.example.com"})
	must(t, err)
	defer ws.CloseNow()
	ws.SetReadLimit(-1)
	msg := make([]byte, 100_000)
	must(t, ws.Write(ctx(t), websocket.MessageBinary, msg))
	if _, got, err := ws.Read(ctx(t)); err != nil || len(got) != len(msg) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	ws.Close(websocket.StatusNormalClosure, "")
	l := w.waitLog(t, "for the WebSocket", func(l map[string]any) bool { return l["path"] == "/ws/echo" })
	if l["status"] != 101.0 {
		t.Errorf("status %v, want 101", l["status"])
	}
	for _, field := range []string{"bytes_in", "bytes_out"} {
		if n, _ := l[field].(float64); n < float64(len(msg)) || n > float64(len(msg)+1000) {
			t.Errorf("%s = %v, want the %d-byte message and its framing", field, l[field], len(msg))
		}
	}
}

// A container that sends the request's id back does not make the client
// get it twice.
func TestOneRequestID(t *testing.T) {
	w := newWorld(t, routing.Config{})
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))
	const id = "client-chosen-id-0123456789"
	for _, tt := range []struct{ name, sent, want string }{
		{"generated", "", ""},
		{"the client's", id, id},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := w.get(t, "app", "/request-id", routing.RequestIDHeader, tt.sent)
			got := resp.Header.Values(routing.RequestIDHeader)
			var reply testenv.Reply
			must(t, json.Unmarshal(body, &reply))
			if len(got) != 1 || got[0] != reply.Header.Get(routing.RequestIDHeader) || tt.want != "" && got[0] != tt.want {
				t.Fatalf("the client got X-Request-Id %q, the container %q; want exactly one, the same", got, reply.Header.Get(routing.RequestIDHeader))
			}
		})
	}
}

// A request whose container refused the connection, while the app's other
// containers are at their admission cap, waits in the app's queue for them
// like any request, instead of failing.
func TestRetryWaitsInTheQueue(t *testing.T) {
	w := newWorld(t, routing.Config{MaxInflight: 1})
	a, b := testenv.StartContainer(t, "app", "a"), testenv.StartContainer(t, "app", "b")
	w.deploy(t, "app", events.AppOptions{}, b)
	slow := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/sleep/300ms", nil)
		req.Host = "app.example.com"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	waitInflight(t, w.r, "app", 1)
	// a crashed before the router found out: it is its turn, as b is full.
	a.Stop()
	w.replace(t, "app", a, b)
	resp, body := w.get(t, "app", "/")
	if resp.StatusCode != http.StatusOK || container(t, body) != "b" {
		t.Fatalf("got %d %s, want 200 from b once its slot came free", resp.StatusCode, body)
	}
	if got := <-slow; got != http.StatusOK {
		t.Fatalf("the slow request: %d", got)
	}
	w.waitLog(t, "with one retry", func(l map[string]any) bool { return l["path"] == "/" && l["retries"] == 1.0 })
}

// A request that is not idempotent is never sent twice, even on a reused
// keep-alive connection that the container closes without answering (Go's
// transport sends an idempotent one again on a new connection then).
func TestPostOnReusedConnectionIsNotResent(t *testing.T) {
	w := newWorld(t, routing.Config{})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	if resp, _ := w.get(t, "app", "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("warm-up: %d", resp.StatusCode)
	}
	hits := c.Hits()
	req, _ := http.NewRequest(http.MethodPost, w.r.URL+"/close", strings.NewReader("order #1"))
	req.Host = "app.example.com"
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantError(t, resp, body, http.StatusBadGateway, "container_error")
	if got := c.Hits() - hits; got != 1 {
		t.Fatalf("the container got the POST %d times, want once", got)
	}
	if got := c.Conns(); got != 1 {
		t.Fatalf("the container accepted %d connections, want 1: the POST went on the warm-up's", got)
	}
}

// The router's pooled connections to containers do not outlive it.
func TestStopClosesContainerConnections(t *testing.T) {
	w := newWorld(t, routing.Config{})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	w.get(t, "app", "/")
	if c.OpenConns() != 1 {
		t.Fatalf("%d connections open to the container, want the pooled one", c.OpenConns())
	}
	w.r.Stop(t)
	testenv.Eventually(t, "the stopped router's connection to the container is closed", func() bool { return c.OpenConns() == 0 })
}

// Redirects are decided before any container is needed, and the router's
// own answers over HTTPS for an app that forces it carry HSTS.
func TestRedirectsNeedNoContainer(t *testing.T) {
	w := newWorld(t, routing.Config{})
	ca := testenv.NewCA(t)
	must(t, w.pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: "shop", Generation: w.gen.Add(1),
		Domains: []string{"shop.example.com", "www.shop.example.com"}, Options: events.AppOptions{ForceHTTPS: true, Canonical: "shop.example.com"}}))
	must(t, w.pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: "blog", Generation: w.gen.Add(1),
		Domains: []string{"blog.example.com"}}))
	w.r.WaitRoutes(t, "shop and blog, without containers", func(s *routing.Snapshot) bool {
		_, shop := s.Lookup("www.shop.example.com")
		_, blog := s.Lookup("blog.example.com")
		return shop && blog
	})
	for _, d := range []string{"shop.example.com", "www.shop.example.com", "blog.example.com"} {
		waitCert(t, w.r, ca, d, w.publishCert(t, ca, d, testenv.CertOptions{}))
	}
	_, httpsPort, _ := net.SplitHostPort(w.r.HTTPSAddr)
	client := httpsClient(w.r, ca)
	const hsts = "max-age=31536000"

	t.Run("scaled to zero, over HTTP", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/cart", nil)
		req.Host = "shop.example.com"
		resp, err := http.DefaultTransport.RoundTrip(req)
		must(t, err)
		resp.Body.Close()
		wantRedirect(t, resp, "https://shop.example.com:"+httpsPort+"/cart")
	})
	t.Run("canonical over HTTPS has HSTS", func(t *testing.T) {
		resp, err := client.Get("https://www.shop.example.com/")
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Strict-Transport-Security") != hsts {
			t.Fatalf("got %d with HSTS %q, want 301 with %q", resp.StatusCode, resp.Header.Get("Strict-Transport-Security"), hsts)
		}
	})
	t.Run("error page over HTTPS has HSTS", func(t *testing.T) {
		resp, err := client.Get("https://shop.example.com/")
		must(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantError(t, resp, body, http.StatusServiceUnavailable, "no_container")
		if got := resp.Header.Get("Strict-Transport-Security"); got != hsts {
			t.Fatalf("HSTS %q, want %q", got, hsts)
		}
	})
	t.Run("no HSTS for an app that does not force HTTPS", func(t *testing.T) {
		resp, err := client.Get("https://blog.example.com/")
		must(t, err)
		resp.Body.Close()
		if got := resp.Header.Get("Strict-Transport-Security"); resp.StatusCode != http.StatusServiceUnavailable || got != "" {
			t.Fatalf("got %d with HSTS %q, want 503 without", resp.StatusCode, got)
		}
	})
}

// Each error the router makes carries its code in X-Sluice-Error and in its
// page, HTML by default and JSON when the client asks for it.
func TestEveryErrorCodeInBothFormats(t *testing.T) {
	w := newWorld(t, routing.Config{ResponseTimeout: 150 * time.Millisecond, MaxInflight: 1, MaxRequestBody: 1000})
	ca := testenv.NewCA(t)
	w.deploy(t, "app", events.AppOptions{}, testenv.StartContainer(t, "app", "a"))
	w.deploy(t, "busy", events.AppOptions{}, testenv.StartContainer(t, "busy", "b"))
	w.deploy(t, "empty", events.AppOptions{})
	down := testenv.StartContainer(t, "down", "d")
	down.Stop()
	w.deploy(t, "down", events.AppOptions{}, down)
	waitCert(t, w.r, ca, "app.example.com", w.publishCert(t, ca, "app.example.com", testenv.CertOptions{}))
	https := httpsClient(w.r, ca)

	send := func(client *http.Client, method, url, host, accept string, body io.Reader, header ...string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, url, body)
		req.Host = host
		req.Header.Set("Accept", accept)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	get := func(host, path, accept string, header ...string) (*http.Response, []byte) {
		return send(http.DefaultClient, http.MethodGet, w.r.URL+path, host, accept, nil, header...)
	}
	// hold keeps busy's one slot taken (a request whose body never ends
	// is never answered) until the subtest ends.
	hold := func(t *testing.T) {
		pr, pw := io.Pipe()
		done := make(chan struct{})
		t.Cleanup(func() {
			pw.CloseWithError(io.ErrUnexpectedEOF)
			<-done
			waitInflight(t, w.r, "busy", 0)
		})
		go func() {
			defer close(done)
			req, _ := http.NewRequest(http.MethodPost, w.r.URL+"/hang", pr)
			req.Host = "busy.example.com"
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		_, _ = pw.Write([]byte("x"))
		waitInflight(t, w.r, "busy", 1)
	}
	for _, tt := range []struct {
		code   string
		status int
		do     func(t *testing.T, accept string) (*http.Response, []byte)
	}{
		{"missing_host", http.StatusBadRequest, func(t *testing.T, accept string) (*http.Response, []byte) {
			conn, br := dialRouter(t, w)
			_, err := io.WriteString(conn, "GET / HTTP/1.0\r\nAccept: "+accept+"\r\n\r\n")
			must(t, err)
			return readResponse(t, br, http.MethodGet)
		}},
		{"unknown_host", http.StatusNotFound, func(t *testing.T, accept string) (*http.Response, []byte) {
			return get("nope.example.com", "/", accept)
		}},
		{"misdirected", http.StatusMisdirectedRequest, func(t *testing.T, accept string) (*http.Response, []byte) {
			return send(https, http.MethodGet, "https://app.example.com/", "busy.example.com", accept, nil)
		}},
		{"body_too_large", http.StatusRequestEntityTooLarge, func(t *testing.T, accept string) (*http.Response, []byte) {
			return send(http.DefaultClient, http.MethodPost, w.r.URL+"/", "app.example.com", accept, strings.NewReader(strings.Repeat("x", 1001)))
		}},
		{"header_too_large", http.StatusRequestHeaderFieldsTooLarge, func(t *testing.T, accept string) (*http.Response, []byte) {
			return get("app.example.com", "/", accept, "X-Big", strings.Repeat("x", routing.MaxHeaderField))
		}},
		{"no_container", http.StatusServiceUnavailable, func(t *testing.T, accept string) (*http.Response, []byte) {
			return get("empty.example.com", "/", accept)
		}},
		{"queue_full", http.StatusServiceUnavailable, func(t *testing.T, accept string) (*http.Response, []byte) {
			hold(t)
			// Another request waits in the one-place queue; this one is
			// turned away, unless the other timed out of the queue first.
			var resp *http.Response
			var body []byte
			testenv.Eventually(t, "a request is refused while another waits in the queue", func() bool {
				waiter := make(chan struct{})
				go func() { defer close(waiter); get("busy.example.com", "/", "") }()
				testenv.Eventually(t, "another request waits in busy's queue", func() bool {
					select {
					case <-waiter: // it timed out of the queue already
						return true
					default:
						app, _ := w.r.Table().Snapshot().App("busy")
						return app.Queued() > 0
					}
				})
				resp, body = get("busy.example.com", "/", accept)
				<-waiter
				return resp.Header.Get(routing.ErrorHeader) != "queue_timeout"
			})
			return resp, body
		}},
		{"queue_timeout", http.StatusGatewayTimeout, func(t *testing.T, accept string) (*http.Response, []byte) {
			hold(t)
			return get("busy.example.com", "/", accept)
		}},
		{"container_unreachable", http.StatusBadGateway, func(t *testing.T, accept string) (*http.Response, []byte) {
			return get("down.example.com", "/", accept)
		}},
		{"container_error", http.StatusBadGateway, func(t *testing.T, accept string) (*http.Response, []byte) {
			return get("app.example.com", "/close", accept)
		}},
		{"container_timeout", http.StatusGatewayTimeout, func(t *testing.T, accept string) (*http.Response, []byte) {
			return get("app.example.com", "/hang", accept)
		}},
	} {
		for _, format := range []struct{ name, accept, contentType string }{
			{"html", "", "text/html; charset=utf-8"},
			{"json", "application/json", "application/json"},
		} {
			t.Run(tt.code+"/"+format.name, func(t *testing.T) {
				resp, body := tt.do(t, format.accept)
				wantError(t, resp, body, tt.status, tt.code)
				if got := resp.Header.Get("Content-Type"); got != format.contentType {
					t.Fatalf("Content-Type %q, want %q", got, format.contentType)
				}
				if format.name == "json" {
					var e struct {
						Status int    `json:"status"`
						Code   string `json:"code"`
					}
					if err := json.Unmarshal(body, &e); err != nil || e.Status != tt.status || e.Code != tt.code {
						t.Fatalf("JSON page %s (%v), want status %d code %s", body, err, tt.status, tt.code)
					}
				}
			})
		}
	}
}

// A client that goes away before the answer is logged with 499.
func TestClientClosedIsLogged(t *testing.T) {
	w := newWorld(t, routing.Config{})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	conn := dial(t, w.r, "GET /hang HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
	waitInflight(t, w.r, "app", 1)
	conn.Close()
	l := w.waitLog(t, "for the abandoned request", func(l map[string]any) bool { return l["path"] == "/hang" })
	if l["status"] != 499.0 || l["error"] != "client_closed" {
		t.Fatalf("logged %v %v, want 499 client_closed", l["status"], l["error"])
	}
}

// A connection that a container resets before the router wrote any of the
// request is retried on another container, like a refused one.
func TestResetBeforeSendingIsRetried(t *testing.T) {
	rst, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer rst.Close()
	go func() {
		for {
			c, err := rst.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetLinger(0) // close with a reset
			c.Close()
		}
	}()
	// The router's connections to rst are handed over once the reset
	// has arrived, so that it comes before the request is written.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil || addr != rst.Addr().String() {
			return c, err
		}
		_ = c.SetReadDeadline(time.Now().Add(testenv.Timeout))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			return nil, errors.New("the resetting container sent a byte")
		}
		_ = c.SetReadDeadline(time.Time{})
		return c, nil
	}
	w := newWorld(t, routing.Config{DialContext: dial})
	good := testenv.StartContainer(t, "app", "good")
	must(t, w.pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: "app", Generation: w.gen.Add(1), Domains: []string{"app.example.com"}}))
	must(t, w.pub.Deploy(ctx(t), "app", w.gen.Add(1), []events.Container{{ID: "rst", Address: rst.Addr().String()}, good.Event()}))
	w.r.WaitRoutes(t, "app routed", testenv.Routed("app.example.com", "app", "rst", "good"))
	for range 2 { // round-robin sends one of them to rst first
		resp, body := w.get(t, "app", "/")
		if resp.StatusCode != http.StatusOK || container(t, body) != "good" {
			t.Fatalf("got %d from %s, want 200 from good", resp.StatusCode, body)
		}
	}
	w.waitLog(t, "with a retry", func(l map[string]any) bool { return l["retries"] == 1.0 && l["container"] == "good" })
}
