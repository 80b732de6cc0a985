// Package testenv is the test harness of sluice: an embedded NATS server
// with JetStream on a random port and a temporary store, fake app containers
// on 127.0.0.1 that say who they are, and routers wired to both. Tests
// wait with Eventually, or Logs.WaitLine for a log line, rather than
// sleep. Every helper takes a testing.TB and stops what it started in
// t.Cleanup.
// Production code never imports testenv.
package testenv

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
)

// Region is the region the helpers use unless told otherwise.
const Region = "test-1"

// Timeout bounds every wait of the helpers.
const Timeout = 10 * time.Second

// Logger returns a logger that writes to the test's log, or nothing unless
// SLUICE_TEST_LOG is set, to keep test output short.
func Logger(t testing.TB) zerolog.Logger {
	if os.Getenv("SLUICE_TEST_LOG") == "" {
		return zerolog.Nop()
	}
	return zerolog.New(zerolog.NewTestWriter(t)).With().Timestamp().Logger()
}

// NATS is an embedded NATS server with JetStream.
type NATS struct {
	Server *server.Server
	// Dir is the JetStream store; a server restarted on it keeps the
	// streams.
	Dir  string
	addr string // HOST:PORT, kept for a restart
}

// StartNATS starts a NATS server on a random loopback port with its store in
// a temporary directory.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	return StartNATSIn(t, t.TempDir())
}

// StartNATSIn starts a NATS server on a random loopback port with its store
// in dir.
func StartNATSIn(t testing.TB, dir string) *NATS {
	t.Helper()
	ns, err := events.StartServer(events.ServerConfig{Listen: "127.0.0.1:0", DataDir: dir, Logger: Logger(t)})
	if err != nil {
		t.Fatalf("start NATS: %v", err)
	}
	n := &NATS{Server: ns, Dir: dir, addr: ns.Addr().String()}
	t.Cleanup(n.Stop)
	return n
}

// Restart starts the server again after Stop, on the same address and
// store, as an operator's restart of NATS: clients reconnect to it.
func (n *NATS) Restart(t testing.TB) {
	t.Helper()
	ns, err := events.StartServer(events.ServerConfig{Listen: n.addr, DataDir: n.Dir, Logger: Logger(t)})
	if err != nil {
		t.Fatalf("restart NATS: %v", err)
	}
	n.Server = ns
}

// URL returns the URL clients connect to.
func (n *NATS) URL() string { return n.Server.ClientURL() }

// Stop shuts the server down and waits for it; it may be called twice.
func (n *NATS) Stop() {
	n.Server.Shutdown()
	n.Server.WaitForShutdown()
}

// Connect returns a client connection, closed at cleanup.
func (n *NATS) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection.
func (n *NATS) JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(n.Connect(t))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// Publisher returns a publisher for region, creating the region's stream
// as a router would.
func (n *NATS) Publisher(t testing.TB, region string) *events.Publisher {
	t.Helper()
	js := n.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if _, err := events.EnsureStream(ctx, js, region, 1); err != nil {
		t.Fatalf("stream: %v", err)
	}
	p, err := events.NewPublisher(js, region)
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	return p
}

// Container is a fake app container: an HTTP server on 127.0.0.1 that
// reads each request's body and answers with a Reply naming its app and id,
// except on these paths:
//
//	/bytes/N     answers N bytes (Content-Length: N)
//	/sleep/D     answers after the duration D (e.g. 300ms)
//	/hang        never answers (until the client or the container goes)
//	/close       closes the connection without an answer
//	/cut         sends headers and half the body it announces, then closes
//	/sse/N/D     sends N server-sent events, one every D, then waits until
//	             the client goes
//	/ws/echo     a WebSocket that sends every message back
//	/ws/push/N   a WebSocket that sends N bytes (binary messages of 32 KiB)
//	             then closes normally
//	/ws/sink/N   a WebSocket that reads N bytes, then sends one text
//	             message with the number of bytes it read and closes
//	/hsts        a reply with the app's own Strict-Transport-Security
//	/request-id  a reply that sends back the X-Request-Id it got, as
//	             frameworks that log it do
type Container struct {
	App  string
	ID   string
	Port int
	hits atomic.Int64
	read atomic.Int64 // request body bytes read, all requests together
	// conns counts the connections accepted, open those not closed yet.
	conns, open atomic.Int64
	srv         *http.Server
	host        string // the IP it listens on
}

// Reply is what a Container answers, as JSON.
type Reply struct {
	App       string      `json:"app"`
	Container string      `json:"container"`
	Host      string      `json:"host"`
	Path      string      `json:"path"`
	Header    http.Header `json:"header"`
	// BodyBytes is the size of the request body the container read.
	BodyBytes int64 `json:"body_bytes"`
	// Proto is the protocol the request reached the container in.
	Proto string `json:"proto"`
}

// StartContainer starts a container of app on a free loopback port, as
// the platform does with $PORT.
func StartContainer(t testing.TB, app, id string) *Container {
	t.Helper()
	return StartContainerAt(t, app, id, "127.0.0.1:0")
}

// StartContainerAt starts a container of app listening on addr, e.g. the
// address of a container that stopped, to bring it back.
func StartContainerAt(t testing.TB, app, id, addr string) *Container {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("container listener: %v", err)
	}
	c := &Container{App: app, ID: id, Port: ln.Addr().(*net.TCPAddr).Port, host: ln.Addr().(*net.TCPAddr).IP.String()}
	c.srv = &http.Server{Handler: c.handler(), ReadHeaderTimeout: Timeout, ConnState: c.connState}
	go func() { _ = c.srv.Serve(ln) }()
	t.Cleanup(c.Stop)
	return c
}

// handler serves the paths listed on Container.
func (c *Container) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", c.serve)
	mux.HandleFunc("/bytes/{n}", c.serveBytes)
	mux.HandleFunc("/sleep/{d}", c.serveSleep)
	mux.HandleFunc("/hang", c.serveHang)
	mux.HandleFunc("/close", c.serveClose)
	mux.HandleFunc("/cut", c.serveCut)
	mux.HandleFunc("/sse/{n}/{d}", c.serveSSE)
	mux.HandleFunc("/ws/echo", c.serveEcho)
	mux.HandleFunc("/ws/push/{n}", c.servePush)
	mux.HandleFunc("/ws/sink/{n}", c.serveSink)
	mux.HandleFunc("/request-id", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", r.Header.Get("X-Request-Id"))
		c.serve(w, r)
	})
	mux.HandleFunc("/hsts", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", AppHSTS)
		c.serve(w, r)
	})
	return mux
}

// AppHSTS is the Strict-Transport-Security a container sets on /hsts.
const AppHSTS = "max-age=60"

// StartTLSContainer starts a container of app that terminates TLS itself
// with the given PEM chain and key, for TLS passthrough.
func StartTLSContainer(t testing.TB, app, id, addr, certPEM, keyPEM string) *Container {
	t.Helper()
	cert, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("container listener: %v", err)
	}
	c := &Container{App: app, ID: id, Port: ln.Addr().(*net.TCPAddr).Port, host: ln.Addr().(*net.TCPAddr).IP.String()}
	c.srv = &http.Server{Handler: c.handler(), ReadHeaderTimeout: Timeout, ConnState: c.connState}
	go func() { _ = c.srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})) }()
	t.Cleanup(c.Stop)
	return c
}

func (c *Container) serve(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	n, _ := io.Copy(io.Discard, readerFunc(func(p []byte) (int, error) {
		n, err := r.Body.Read(p)
		c.read.Add(int64(n))
		return n, err
	}))
	c.reply(w, r, n)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func (c *Container) serveBytes(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "want /bytes/N", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	_, _ = io.CopyN(w, zeros{}, n)
}

func (c *Container) reply(w http.ResponseWriter, r *http.Request, bodyBytes int64) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(Reply{App: c.App, Container: c.ID, Host: r.Host, Path: r.URL.Path, Header: r.Header, BodyBytes: bodyBytes, Proto: r.Proto})
}

func (c *Container) serveSleep(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	d, err := time.ParseDuration(r.PathValue("d"))
	if err != nil {
		http.Error(w, "want /sleep/DURATION", http.StatusBadRequest)
		return
	}
	select {
	case <-time.After(d):
	case <-r.Context().Done():
		return
	}
	c.reply(w, r, 0)
}

func (c *Container) serveHang(_ http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	<-r.Context().Done()
}

// hijack takes the connection over, or fails the test's container.
func hijack(w http.ResponseWriter) net.Conn {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err) // an http.Server always lets HTTP/1 handlers hijack
	}
	return conn
}

func (c *Container) serveClose(w http.ResponseWriter, _ *http.Request) {
	c.hits.Add(1)
	hijack(w).Close()
}

func (c *Container) serveCut(w http.ResponseWriter, _ *http.Request) {
	c.hits.Add(1)
	conn := hijack(w)
	defer conn.Close()
	_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n0123456789")
}

func (c *Container) serveSSE(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	n, err1 := strconv.Atoi(r.PathValue("n"))
	every, err2 := time.ParseDuration(r.PathValue("d"))
	if err1 != nil || err2 != nil {
		http.Error(w, "want /sse/N/DURATION", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	for i := range n {
		select {
		case <-time.After(every):
		case <-r.Context().Done():
			return
		}
		if _, err := io.WriteString(w, "data: "+strconv.Itoa(i)+"\n\n"); err != nil {
			return
		}
		_ = rc.Flush()
	}
	<-r.Context().Done()
}

// zeros is an endless source of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func (c *Container) serveEcho(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered the client
	}
	defer ws.CloseNow()
	ws.SetReadLimit(-1)
	for {
		typ, msg, err := ws.Read(r.Context())
		if err != nil {
			return
		}
		if err := ws.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}

// wsSize accepts a WebSocket whose path ends in a byte count, or answers
// 400 and returns nil.
func wsSize(w http.ResponseWriter, r *http.Request) (*websocket.Conn, int64) {
	n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "want a byte count", http.StatusBadRequest)
		return nil, 0
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return nil, 0 // Accept has answered the client
	}
	ws.SetReadLimit(-1)
	return ws, n
}

func (c *Container) servePush(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	ws, n := wsSize(w, r)
	if ws == nil {
		return
	}
	defer ws.CloseNow()
	msg := make([]byte, 32<<10)
	for n > 0 {
		chunk := min(n, int64(len(msg)))
		if err := ws.Write(r.Context(), websocket.MessageBinary, msg[:chunk]); err != nil {
			return
		}
		n -= chunk
	}
	_ = ws.Close(websocket.StatusNormalClosure, "")
}

func (c *Container) serveSink(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	ws, n := wsSize(w, r)
	if ws == nil {
		return
	}
	defer ws.CloseNow()
	var got int64
	for got < n {
		_, msg, err := ws.Read(r.Context())
		if err != nil {
			return
		}
		got += int64(len(msg))
	}
	if err := ws.Write(r.Context(), websocket.MessageText, []byte(strconv.FormatInt(got, 10))); err != nil {
		return
	}
	_ = ws.Close(websocket.StatusNormalClosure, "")
}

// Address returns the container's HOST:PORT, as events carry it.
func (c *Container) Address() string { return net.JoinHostPort(c.host, strconv.Itoa(c.Port)) }

// Event returns the container as events carry it.
func (c *Container) Event() events.Container { return events.Container{ID: c.ID, Address: c.Address()} }

// BodyBytes returns the number of request body bytes the container has
// read so far, all requests together, as they arrive.
func (c *Container) BodyBytes() int64 { return c.read.Load() }

// connState counts the container's connections.
func (c *Container) connState(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		c.conns.Add(1)
		c.open.Add(1)
	case http.StateClosed, http.StateHijacked:
		c.open.Add(-1)
	}
}

// Conns returns the number of connections the container has accepted.
func (c *Container) Conns() int64 { return c.conns.Load() }

// OpenConns returns the number of the container's connections still open
// (a hijacked one counts as closed).
func (c *Container) OpenConns() int64 { return c.open.Load() }

// Hits returns the number of requests the container has answered.
func (c *Container) Hits() int64 { return c.hits.Load() }

// Stop closes the container's listener and connections at once, as a
// crash would.
func (c *Container) Stop() { _ = c.srv.Close() }

// Shutdown stops the container gracefully, as the platform's SIGTERM does:
// it stops accepting connections and waits for the requests in flight.
func (c *Container) Shutdown(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := c.srv.Shutdown(ctx); err != nil {
		t.Errorf("container %s shutdown: %v", c.ID, err)
	}
}

// Containers returns the event form of cs.
func Containers(cs ...*Container) []events.Container {
	out := make([]events.Container, len(cs))
	for i, c := range cs {
		out[i] = c.Event()
	}
	return out
}

// Router is a router on loopback ports, following a region on a NATS.
type Router struct {
	*routing.Router
	// URL is the base URL of the HTTP listener.
	URL string
	// AdminURL is the base URL of the admin listener.
	AdminURL string
	// HTTPSAddr is the address of the HTTPS listener ("" when off).
	HTTPSAddr string
	cancel    context.CancelFunc
	done      chan error
}

// StartRouter starts a router of region on nc's NATS. It does not wait for
// the region's state to load: see WaitReady.
func StartRouter(t testing.TB, nc *nats.Conn, region string) *Router {
	t.Helper()
	return StartRouterConfig(t, nc, routing.Config{Region: region, Logger: Logger(t)})
}

// StartRouterConfig starts a router configured by cfg on nc's NATS, with
// its listeners on random loopback ports unless cfg sets them. cfg.Logger is
// used as given (Logger(t) is the test's).
func StartRouterConfig(t testing.TB, nc *nats.Conn, cfg routing.Config) *Router {
	t.Helper()
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = "127.0.0.1:0"
	}
	if cfg.HTTPSAddr == "" {
		cfg.HTTPSAddr = "127.0.0.1:0"
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = Timeout
	}
	rt, err := routing.NewRouter(nc, cfg)
	if err != nil {
		t.Fatalf("router: %v", err)
	}
	if err := rt.Open(); err != nil {
		t.Fatalf("router: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{
		Router:   rt,
		URL:      "http://" + rt.HTTPAddr().String(),
		AdminURL: "http://" + rt.AdminAddr().String(),
		cancel:   cancel,
		done:     make(chan error, 1),
	}
	if a := rt.HTTPSAddr(); a != nil {
		r.HTTPSAddr = a.String()
	}
	go func() { r.done <- rt.Run(ctx) }()
	t.Cleanup(func() { r.Stop(t) })
	return r
}

// Stop stops the router and waits for it; it may be called twice.
func (r *Router) Stop(t testing.TB) {
	t.Helper()
	r.cancel()
	if err, ok := <-r.done; ok {
		close(r.done)
		if err != nil {
			t.Errorf("router stopped with: %v", err)
		}
	}
}

// WaitReady waits until the router has loaded its region's state.
func (r *Router) WaitReady(t testing.TB) {
	t.Helper()
	Eventually(t, "the router is ready", r.Ready)
}

// WaitRoutes waits until cond holds for the router's route table, and
// returns the snapshot it held for.
func (r *Router) WaitRoutes(t testing.TB, what string, cond func(*routing.Snapshot) bool) *routing.Snapshot {
	t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	for {
		s := r.Table().Snapshot()
		if cond(s) {
			return s
		}
		select {
		case <-s.Changed():
		case <-timer.C:
			t.Fatalf("after %s, still waiting for the routes: %s", Timeout, what)
		}
	}
}

// Routed returns a condition that holds when host routes to app with exactly
// the containers ids.
func Routed(host, app string, ids ...string) func(*routing.Snapshot) bool {
	return func(s *routing.Snapshot) bool {
		a, ok := s.Lookup(host)
		if !ok || a.Name != app || len(a.Containers) != len(ids) {
			return false
		}
		for i, c := range a.Containers {
			if c.ID != ids[i] {
				return false
			}
		}
		return true
	}
}

// Get sends GET path to the router with the Host header host.
func (r *Router) Get(t testing.TB, host, path string) (*http.Response, Reply) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	return Do(t, req)
}

// Do sends req and decodes a container's Reply if the response has one.
func Do(t testing.TB, req *http.Request) (*http.Response, Reply) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	var reply Reply
	if resp.Header.Get("Content-Type") == "application/json" && resp.Header.Get(routing.ErrorHeader) == "" {
		if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil {
			t.Fatalf("decode the container's reply: %v", err)
		}
	}
	return resp, reply
}
