package routing

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/shaping"
)

// RequestIDHeader carries the request's id to the container and back to the
// client.
const RequestIDHeader = "X-Request-Id"

// StickyCookie names the cookie that sends a client of a sticky app back to
// the same container.
const StickyCookie = "sluice_sticky"

// stickyMaxAge is how long a sticky-session cookie lasts.
const stickyMaxAge = 24 * time.Hour

// MaxHeaderField bounds one request header, name and value (431 beyond).
const MaxHeaderField = 8 << 10

// dialer returns the function that connects to containers, each attempt
// bounded by ConnectTimeout.
func (c *Config) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.DialContext == nil {
		d := &net.Dialer{Timeout: c.ConnectTimeout, KeepAlive: 30 * time.Second}
		return d.DialContext
	}
	dial, timeout := c.DialContext, c.ConnectTimeout
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return dial(ctx, network, addr)
	}
}

// NewTransport returns the transport the proxy reaches containers with:
// HTTP/1.1 only, keep-alive connections pooled per container and sized for a
// proxy (Go's default keeps 2 idle connections per host), no transparent
// compression (the client's Accept-Encoding reaches the app), cfg's connect
// and response timeouts, and connections closed after cfg.IdleTimeout
// without a byte either way. Zero durations take Config's defaults.
func NewTransport(cfg Config) *http.Transport {
	cfg.setTimeouts()
	dial := cfg.dialer()
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			start := time.Now()
			c, err := dial(ctx, network, addr)
			// The dial runs with the request's context: the proxy's
			// access log counts the time spent connecting.
			if x, ok := ctx.Value(exchangeKey{}).(*exchange); ok {
				x.connect.Add(int64(time.Since(start)))
			}
			if err != nil {
				return nil, err
			}
			return newIdleConn(c, cfg.IdleTimeout), nil
		},
		MaxIdleConns:        0, // no global limit
		MaxIdleConnsPerHost: 128,
		// Idle pooled connections are closed by the pool before the
		// rolling idle deadline could fire on one being reused.
		IdleConnTimeout:       cfg.IdleTimeout / 2,
		ResponseHeaderTimeout: cfg.ResponseTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
}

// Proxy is the HTTP handler that routes each request by its Host header to
// a container of the app that owns it, and writes one access-log line per
// request. Run probes the containers it quarantines and fetches the apps'
// error pages.
type Proxy struct {
	table      *Table
	cfg        Config
	log        zerolog.Logger
	rp         *httputil.ReverseProxy
	transport  http.RoundTripper
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	quarantine *quarantine
	pages      *errorPages
	// httpsPort is the port HTTPS redirects name; "" for 443. Set before
	// serving.
	httpsPort string
}

var (
	_ http.Handler      = (*Proxy)(nil)
	_ http.RoundTripper = (*Proxy)(nil)
)

// NewProxy returns a Proxy over table, configured by cfg (zero fields take
// their documented defaults). Call Run to start its background work.
func NewProxy(table *Table, cfg Config) *Proxy {
	cfg.setDefaults()
	p := &Proxy{table: table, cfg: cfg, log: cfg.Logger.With().Str("component", "proxy").Logger(), transport: cfg.Transport}
	p.dial = cfg.dialer()
	p.quarantine = newQuarantine(p.dial, cfg.ConnectTimeout, cfg.ProbeInterval, 30*time.Second, p.log)
	p.pages = newErrorPages(p.log, cfg.ErrorPageNetworks)
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		ModifyResponse: p.modifyResponse,
		Transport:      p,
		ErrorHandler:   p.proxyError,
		ErrorLog:       log.New(logWriter{p.log}, "", 0),
		// Streams (SSE, chunked) reach the client as the app writes them.
		FlushInterval: -1,
		BufferPool:    &bufferPool{},
	}
	return p
}

// Run probes quarantined containers and fetches error pages until ctx is
// done, then closes the idle connections to containers.
func (p *Proxy) Run(ctx context.Context) error {
	go p.pages.run(ctx)
	err := p.quarantine.Run(ctx)
	p.pages.wait()
	p.CloseIdleConnections()
	return err
}

// CloseIdleConnections closes the transport's pooled connections to
// containers that carry no request, if the transport pools any: their
// goroutines end with them. The router calls it again once the requests
// in flight at shutdown have ended.
func (p *Proxy) CloseIdleConnections() {
	if t, ok := p.transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// exchange is what the proxy knows of one request on its way.
type exchange struct {
	start     time.Time
	app       *App
	container Container
	holding   bool       // the request counts as active on container
	busy      bool       // and holds one of its slots until answered
	tried     []*backend // containers a connection failed to
	sticky    string     // the client's sticky cookie value
	secure    bool       // the client came over TLS
	redirect  string     // where the request was sent instead
	requestID string
	err       *Error
	bodyErr   error // a failure to read the container's response body
	// up and down pace the request's bytes to the container and the
	// response's back; nil when shaping is off.
	up, down *shaping.Pacer
	bytesIn  countingBody
	attempts int          // round trips tried, one per container
	connect  atomic.Int64 // nanoseconds spent connecting to containers
	ttfb     atomic.Int64 // nanoseconds from start to the response's headers
}

// hsts adds Strict-Transport-Security to h, a response over HTTPS of an app
// that forces HTTPS, unless the app set its own.
func (x *exchange) hsts(h http.Header) {
	if x.secure && x.app != nil && x.app.Options.ForceHTTPS && h.Get("Strict-Transport-Security") == "" {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
}

// take notes that pick gave c to the request.
func (x *exchange) take(c Container) { x.container, x.holding, x.busy = c, true, true }

// answered gives back the container's slot once it has started to answer:
// the admission cap bounds the requests a container has not answered yet,
// not the streams (WebSockets, events, downloads) it serves.
func (x *exchange) answered() {
	if x.busy {
		x.app.answered(x.container)
		x.busy = false
	}
}

// drop ends the request's use of its container.
func (x *exchange) drop() {
	x.answered()
	if x.holding {
		x.app.done(x.container)
		x.holding = false
	}
}

type exchangeKey struct{}

func exchangeOf(r *http.Request) *exchange { return r.Context().Value(exchangeKey{}).(*exchange) }

// throttled returns how long shaping made the exchange wait, both ways.
func (x *exchange) throttled() time.Duration {
	var d time.Duration
	for _, p := range []*shaping.Pacer{x.up, x.down} {
		if p != nil {
			d += p.Waited()
		}
	}
	return d
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		// An HTTPS/1.1 connection reaches the server through the request
		// guard, which hides its TLS from it.
		if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok {
			r.TLS = st
		}
	}
	x := &exchange{start: time.Now(), requestID: requestID(r), secure: r.TLS != nil}
	idle := &clientIdle{rc: http.NewResponseController(w), idle: p.cfg.IdleTimeout}
	rec := &recorder{ResponseWriter: w, idle: idle, in: &x.bytesIn.n}
	rec.Header().Set(RequestIDHeader, x.requestID)
	defer func() {
		x.drop()
		idle.finish()
		// ReverseProxy aborts the connection (panic) when a response
		// breaks after its headers were sent: log it, then let it go on.
		v := recover()
		if v == http.ErrAbortHandler && x.err == nil {
			x.err = streamError(r.Context(), idle.cause(x.bodyErr))
		}
		p.logAccess(r, rec, x)
		if v != nil {
			panic(v)
		}
	}()
	if x.err = p.route(r, x); x.err != nil {
		p.writeError(rec, r, x)
		return
	}
	// Redirects depend on the app's options alone: an app scaled to zero
	// or busy still redirects at once.
	if to := p.redirect(r, x.app); to != "" {
		x.redirect = to
		x.hsts(rec.Header())
		rec.Header().Set("Location", to)
		rec.Header().Set("Cache-Control", "no-store")
		rec.WriteHeader(http.StatusMovedPermanently)
		return
	}
	if x.err = p.acquire(r.Context(), x); x.err != nil {
		p.writeError(rec, r, x)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		x.bytesIn.ReadCloser = http.MaxBytesReader(rec, r.Body, p.cfg.MaxRequestBody)
		x.bytesIn.idle = idle
		r.Body = &x.bytesIn
	}
	p.rp.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
}

// route checks the request and finds its app.
func (p *Proxy) route(r *http.Request, x *exchange) *Error {
	if r.Host == "" {
		return ErrMissingHost
	}
	if e := p.checkLimits(r); e != nil {
		return e
	}
	snap := p.table.Snapshot()
	app, ok := snap.Lookup(r.Host)
	if r.TLS != nil && r.TLS.ServerName != "" {
		// The connection was opened for the app its server name names
		// (its certificate); another app's Host on it is misdirected.
		if sniApp, found := snap.Lookup(r.TLS.ServerName); found && (!ok || sniApp.ref != app.ref) {
			return ErrMisdirected
		}
	}
	if !ok {
		return ErrUnknownHost
	}
	if app.Options.Sticky {
		if c, err := r.Cookie(StickyCookie); err == nil {
			x.sticky = c.Value
		}
	}
	x.app = app
	return nil
}

// errAllTried is acquire's answer when every container of the app was
// tried. It is never sent: RoundTrip reports the failure to connect to
// them, which upstreamError maps.
var errAllTried = &Error{Code: "all_tried"}

// acquire takes a slot on one of x.app's containers that x has not tried,
// waiting in the app's queue while they are all busy: a request that
// failed to connect to one container waits for another like any request.
func (p *Proxy) acquire(ctx context.Context, x *exchange) *Error {
	app := x.app
	var timeout <-chan time.Time
	for {
		x.app = app
		if len(app.Containers) == 0 {
			return ErrNoContainer
		}
		c, res := app.pick(x.sticky, p.cfg.MaxInflight, x.tried)
		switch res {
		case picked:
			x.take(c)
			return nil
		case noneLeft:
			return errAllTried
		}
		q := &app.ref.queue
		wake, ok := q.join(int(max(p.cfg.MaxInflight, 1)) * len(app.Containers))
		if !ok {
			return ErrQueueFull
		}
		// A slot may have come free before this request joined the queue.
		if c, res := app.pick(x.sticky, p.cfg.MaxInflight, x.tried); res == picked {
			q.leave(wake)
			x.take(c)
			return nil
		}
		if timeout == nil {
			t := time.NewTimer(p.cfg.ResponseTimeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-wake:
		case <-ctx.Done():
			q.leave(wake)
			return upstreamError(ctx, ctx.Err())
		case <-timeout:
			q.leave(wake)
			return ErrQueueTimeout
		}
		// The app may have changed while the request waited.
		if app = app.ref.app.Load(); app == nil {
			return ErrUnknownHost
		}
	}
}

// redirect returns where a request must go instead, if anywhere: to HTTPS
// for an app that forces it or terminates TLS itself (passthrough), and to
// the app's canonical domain.
func (p *Proxy) redirect(r *http.Request, app *App) string {
	o := app.Options
	// A passthrough app's containers speak only TLS.
	toHTTPS := (o.ForceHTTPS || o.TLSPassthrough) && r.TLS == nil
	host := normalizeHost(r.Host)
	if !toHTTPS && (o.Canonical == "" || host == o.Canonical) {
		return ""
	}
	if o.Canonical != "" {
		host = o.Canonical
	}
	u := *r.URL
	u.Scheme, u.Host = "http", host
	switch {
	case r.TLS != nil || toHTTPS:
		u.Scheme = "https"
		if p.httpsPort != "" {
			u.Host = net.JoinHostPort(host, p.httpsPort)
		}
	default:
		if _, port, err := net.SplitHostPort(r.Host); err == nil && port != "80" {
			u.Host = net.JoinHostPort(host, port)
		}
	}
	return u.String()
}

// checkLimits enforces the limits on a request's headers and declared body
// size. The server enforces the rest (a header block far too large,
// several Host headers, conflicting lengths, Expect).
func (p *Proxy) checkLimits(r *http.Request) *Error {
	if r.ContentLength > p.cfg.MaxRequestBody {
		return ErrBodyTooLarge
	}
	total := len(r.Method) + len(r.RequestURI) + len(r.Host) + 20
	for k, vs := range r.Header {
		for _, v := range vs {
			n := len(k) + len(v) + 4 // ": " and CRLF
			if n > MaxHeaderField {
				return ErrHeaderTooLarge
			}
			total += n
		}
	}
	if total > p.cfg.MaxHeaderBytes {
		return ErrHeaderTooLarge
	}
	return nil
}

// rewrite turns the client's request into the container's.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	x := exchangeOf(pr.In)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = x.container.Address
	// X-Forwarded-* headers from the client are dropped (ReverseProxy
	// removes them) and set from the connection; a trusted proxy's
	// X-Forwarded-For chain is kept and extended.
	pr.SetXForwarded()
	client, chain := p.clientAddr(pr.In)
	if chain != "" {
		pr.Out.Header.Set("X-Forwarded-For", chain+", "+pr.Out.Header.Get("X-Forwarded-For"))
	}
	if client != "" {
		pr.Out.Header.Set("X-Real-Ip", client)
	}
	if port := localPort(pr.In); port != "" {
		pr.Out.Header.Set("X-Forwarded-Port", port)
	}
	pr.Out.Header.Set(RequestIDHeader, x.requestID)
	pr.Out.Header.Set("X-Request-Start", "t="+strconv.FormatInt(x.start.UnixMilli(), 10))
}

// clientAddr returns the client's address, and the X-Forwarded-For chain
// to extend if the connection comes from a trusted proxy ("" if not). The
// client of a trusted chain is its last address that is not a trusted
// proxy.
func (p *Proxy) clientAddr(r *http.Request) (client, chain string) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return "", ""
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !p.trusted(peer) {
		return host, ""
	}
	chain = strings.Join(r.Header.Values("X-Forwarded-For"), ", ")
	client = host
	hops := strings.Split(chain, ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		client = a.String()
		if !p.trusted(a) {
			break
		}
	}
	return client, chain
}

func (p *Proxy) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, pfx := range p.cfg.TrustedProxies {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}

// RoundTrip sends the request to the exchange's container. When no
// connection to it can be established (refused, connect timeout), or it
// failed before any byte of a request without a body was written to it
// (reset as it opened), nothing was sent: the container is quarantined and
// the request goes to another container of the app (waiting in the app's
// queue if they are all busy), until each has been tried once. It is never
// retried once a byte of it was written.
func (p *Proxy) RoundTrip(out *http.Request) (*http.Response, error) {
	x := exchangeOf(out)
	body := out.Body
	req := out // the first attempt sends ReverseProxy's request as it is
	for {
		if body != nil && body != http.NoBody {
			// The transport closes the body it is given, even when it
			// fails to connect; keep it open for the next attempt.
			var rd io.ReadCloser = keepOpen{body}
			if b := x.container.Bucket(); b != nil {
				x.up = b.Pacer(out.Context(), shaping.Upload)
				rd = &pacedBody{ReadCloser: rd, pacer: x.up}
			}
			req.Body = rd
		}
		x.attempts++
		var conn *idleConn
		var sent int64
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) {
				if c, ok := info.Conn.(*idleConn); ok {
					conn, sent = c, c.written.Load()
				}
			},
		}))
		resp, err := p.transport.RoundTrip(req)
		if err == nil || out.Context().Err() != nil {
			return resp, err
		}
		// A request without a body none of which reached the connection
		// (reset as it opened) is as if no connection had been made. One
		// with a body is not retried: the failed attempt may still be
		// reading it.
		unsent := (body == nil || body == http.NoBody) && conn != nil && conn.written.Load() == sent
		if !isDialError(err) && !unsent {
			return resp, err
		}
		p.quarantine.add(x.app.Name, x.container, err)
		x.tried = append(x.tried, x.container.b)
		x.drop()
		// The app may have changed since the request was admitted (a
		// deploy replaced the container that just refused it): the retry
		// goes to one of its current containers.
		if cur := x.app.ref.app.Load(); cur != nil {
			x.app = cur
		}
		switch e := p.acquire(out.Context(), x); e {
		case nil:
		case errAllTried:
			return nil, &unreachableError{tried: len(x.tried), err: err}
		default:
			return nil, e
		}
		req = new(http.Request)
		*req = *out
		u := *out.URL
		u.Host = x.container.Address
		req.URL = &u
	}
}

// bufferPool recycles the buffers ReverseProxy copies bodies through.
type bufferPool struct{ sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.Pool.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.Pool.Put(&buf) }

// isDialError reports whether err is a failure to establish a connection:
// nothing of the request was sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// keepOpen hides Close from the transport.
type keepOpen struct{ io.Reader }

func (keepOpen) Close() error { return nil }

// modifyResponse paces the response body, or both ways of an upgraded
// connection (WebSocket), with the container's bucket, notes a failure to
// read the body, and gives a sticky app's client its cookie. The client
// gets the router's X-Request-Id only, even from a container that sends
// one back.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	x := exchangeOf(resp.Request)
	x.ttfb.Store(int64(time.Since(x.start)))
	x.answered()
	resp.Header.Del(RequestIDHeader)
	x.hsts(resp.Header)
	if x.app.Options.Sticky && x.sticky != x.container.b.sticky {
		c := &http.Cookie{Name: StickyCookie, Value: x.container.b.sticky, Path: "/", MaxAge: int(stickyMaxAge / time.Second),
			HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: x.secure}
		resp.Header.Add("Set-Cookie", c.String())
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	if b := x.container.Bucket(); b != nil {
		x.down = b.Pacer(resp.Request.Context(), shaping.Download)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if conn, ok := resp.Body.(io.ReadWriteCloser); ok && x.down != nil {
			if x.up == nil {
				x.up = x.container.Bucket().Pacer(resp.Request.Context(), shaping.Upload)
			}
			resp.Body = &pacedConn{ReadWriteCloser: conn, down: x.down, up: x.up}
		}
		return nil
	}
	var body io.ReadCloser = resp.Body
	if x.down != nil {
		body = &pacedBody{ReadCloser: body, pacer: x.down}
	}
	resp.Body = &watchedBody{ReadCloser: body, x: x}
	return nil
}

// pacedBody is a body whose reads wait for its pacer's tokens.
type pacedBody struct {
	io.ReadCloser
	pacer *shaping.Pacer
}

func (b *pacedBody) Read(p []byte) (int, error) { return b.pacer.Read(b.ReadCloser, p) }

// pacedConn is the container's side of an upgraded connection: what it
// sends is paced as download, what it is sent as upload.
type pacedConn struct {
	io.ReadWriteCloser
	down, up *shaping.Pacer
}

func (c *pacedConn) Read(p []byte) (int, error)  { return c.down.Read(c.ReadWriteCloser, p) }
func (c *pacedConn) Write(p []byte) (int, error) { return c.up.Write(c.ReadWriteCloser, p) }

// watchedBody notes the first failure to read the container's response.
type watchedBody struct {
	io.ReadCloser
	x *exchange
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.x.bodyErr == nil {
		b.x.bodyErr = err
	}
	return n, err
}

// countingBody counts the bytes read from the client's request body, and
// holds each read to the client's idle window. The bytes a client sends on
// an upgraded connection (WebSocket) are counted in n too.
type countingBody struct {
	io.ReadCloser
	n    atomic.Int64
	idle *clientIdle
}

func (b *countingBody) Read(p []byte) (int, error) {
	b.idle.reading()
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	b.idle.read(err)
	return n, err
}

func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := exchangeOf(r)
	if rec, ok := w.(*recorder); ok {
		err = rec.idle.cause(err)
	}
	x.err = upstreamError(r.Context(), err)
	p.writeError(w, r, x)
}

func (p *Proxy) logAccess(r *http.Request, rec *recorder, x *exchange) {
	e := p.log.Info()
	if e == nil {
		return
	}
	status := rec.status
	if x.err != nil {
		if status == 0 {
			status = x.err.Status
		}
		e.Str("error", x.err.Code)
		if x.err.Err != nil {
			e.Str("cause", x.err.Err.Error())
		}
	}
	if x.app != nil {
		e.Str("app", x.app.Name)
	}
	if x.container.ID != "" {
		e.Str("container", x.container.ID).Str("address", x.container.Address)
	}
	if d := x.throttled(); d > 0 {
		e.Dur("throttled_ms", d)
	}
	if x.attempts > 1 {
		e.Int("retries", x.attempts-1)
	}
	if x.redirect != "" {
		e.Str("redirect", x.redirect)
	}
	if r.TLS != nil {
		e.Str("sni", r.TLS.ServerName).Str("proto", r.Proto)
	}
	if d := x.connect.Load(); d > 0 {
		e.Dur("connect_ms", time.Duration(d))
	}
	if d := x.ttfb.Load(); d > 0 {
		e.Dur("ttfb_ms", time.Duration(d))
	}
	e.Str("host", r.Host).
		Str("method", r.Method).
		Str("path", r.URL.Path).
		Int("status", status).
		Int64("bytes_in", x.bytesIn.n.Load()).
		Int64("bytes_out", rec.bytes.Load()).
		Dur("duration_ms", time.Since(x.start)).
		Str("request_id", x.requestID).
		Str("remote", r.RemoteAddr).
		Msg("request")
}

// requestID returns the client's X-Request-Id if it is sane (20 to 128 of
// [A-Za-z0-9+/=_-]), else a new random one.
func requestID(r *http.Request) string {
	if id := r.Header.Get(RequestIDHeader); validRequestID(id) {
		return id
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

func validRequestID(id string) bool {
	if len(id) < 20 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '+' && c != '/' && c != '=' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// localPort returns the port of the listener the request came in on.
func localPort(r *http.Request) string {
	addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return ""
	}
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return ""
	}
	return port
}

// recorder notes the status and size of a response, and holds each write
// and flush to the client's idle window. Hijack, which ReverseProxy calls
// through http.ResponseController for a protocol upgrade (WebSocket),
// hands out the client's connection wrapped to count its bytes and close it
// when idle. Unwrap lets http.ResponseController reach the connection's own
// writer for the rest.
type recorder struct {
	http.ResponseWriter
	idle   *clientIdle
	in     *atomic.Int64 // counts what an upgraded client sends
	status int
	bytes  atomic.Int64 // an upgraded connection counts from its own goroutines
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 || r.status < 200 {
		r.status = code
	}
	r.idle.writing()
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.idle.writing()
	n, err := r.ResponseWriter.Write(b)
	r.bytes.Add(int64(n))
	r.idle.wrote(err)
	return n, err
}

// FlushError sends what the response has buffered to the client.
func (r *recorder) FlushError() error {
	r.idle.writing()
	err := r.idle.rc.Flush()
	r.idle.wrote(err)
	return err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack takes the client's connection over for an upgraded protocol: the
// response is then 101 Switching Protocols, its bytes both ways are
// counted, and the connection is closed after IdleTimeout without a byte
// either way.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := r.idle.rc.Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("hijack the client connection: %w", err)
	}
	if r.status == 0 || r.status < 200 {
		r.status = http.StatusSwitchingProtocols
	}
	c := &countedConn{Conn: newIdleConn(conn, r.idle.idle), in: r.in, out: &r.bytes}
	// What the client sent beyond the upgrade request stays in brw's
	// reader; writes go through the counted connection.
	return c, bufio.NewReadWriter(brw.Reader, bufio.NewWriter(c)), nil
}

// countedConn counts the bytes read from and written to a connection.
type countedConn struct {
	net.Conn
	in, out *atomic.Int64
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// clientIdle holds the client's side of an exchange to the rolling idle
// window, as idleConn holds the container's: each read of the request body
// and each write of the response first pushes the client connection's read
// or write deadline (the stream's, in HTTP/2) forward, so that a client
// that stops sending its body or taking the response is cut off. A
// deadline is moved at most every eighth of the window, and set to an
// eighth beyond it: a stalled client is cut off after between IdleTimeout
// and 9/8 of it.
//
// The transport may go on reading the request body after ServeHTTP has
// returned, while the connection waits for or serves the next request:
// from finish on, the reads of the body move no deadline.
type clientIdle struct {
	rc   *http.ResponseController
	idle time.Duration
	// readSet and writeSet are when each deadline was last set, in unix
	// nanoseconds (0: not set).
	readSet, writeSet atomic.Int64
	// stalled is set when a read or write hit its deadline.
	stalled atomic.Bool
	// mu is held while the read deadline is moved, and while done is
	// set: once finish has set it, no read deadline moves.
	mu   sync.Mutex
	done bool // the handler has returned
}

// arm moves a deadline unless it was moved within the last eighth of the
// window.
func (c *clientIdle) arm(set *atomic.Int64, move func(time.Time) error) {
	now := time.Now()
	if last := set.Load(); last != 0 && now.UnixNano()-last < int64(c.idle/8) {
		return
	}
	set.Store(now.UnixNano())
	_ = move(now.Add(c.idle + c.idle/8)) // ErrNotSupported: the server has no deadlines to move
}

// reading is called before each read of the request body.
func (c *clientIdle) reading() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.done {
		c.arm(&c.readSet, c.rc.SetReadDeadline)
	}
}

// read is called after each read of the request body with its error. At
// the end of the body the read deadline is lifted: the server then reads
// only to notice a client that goes away, which must not time out.
func (c *clientIdle) read(err error) {
	switch {
	case err == io.EOF:
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.done {
			c.readSet.Store(0)
			_ = c.rc.SetReadDeadline(time.Time{})
		}
	case isTimeout(err):
		c.stalled.Store(true)
	}
}

// writing is called before each write of the response.
func (c *clientIdle) writing() { c.arm(&c.writeSet, c.rc.SetWriteDeadline) }

// wrote is called after each write of the response with its error.
func (c *clientIdle) wrote(err error) {
	if isTimeout(err) {
		c.stalled.Store(true)
	}
}

// finish is called when the handler returns: it ends the moves of the
// read deadline, and gives the server's last flush of the response one
// more window; the server clears the write deadline after it.
func (c *clientIdle) finish() {
	c.mu.Lock()
	c.done = true
	c.mu.Unlock()
	if c.writeSet.Load() != 0 {
		_ = c.rc.SetWriteDeadline(time.Now().Add(c.idle))
	}
}

// cause returns err, marked as the client's stall if the client's side hit
// its idle deadline.
func (c *clientIdle) cause(err error) error {
	if !c.stalled.Load() {
		return err
	}
	if err == nil {
		return errClientIdle
	}
	return fmt.Errorf("%w: %w", errClientIdle, err)
}

// isTimeout reports whether err is a deadline that passed (a net.Error
// whose Timeout is true, os.ErrDeadlineExceeded among them).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// logWriter sends the standard library's log lines (from ReverseProxy and
// http.Server) to zerolog.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	n := len(p)
	if n > 0 && p[n-1] == '\n' {
		p = p[:n-1]
	}
	w.log.Warn().Str("source", "net/http").Msg(string(p))
	return n, nil
}

var _ io.Writer = logWriter{}
