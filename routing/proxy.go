package routing

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
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

// NewTransport returns the transport the proxy reaches containers with:
// HTTP/1.1 only, keep-alive connections pooled per container and sized for a
// proxy (Go's default keeps 2 idle connections per host), no transparent
// compression (the client's Accept-Encoding reaches the app), cfg's connect
// and response timeouts, and connections closed after cfg.IdleTimeout
// without a byte either way. Zero durations take Config's defaults.
func NewTransport(cfg Config) *http.Transport {
	cfg.setTimeouts()
	d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			start := time.Now()
			c, err := d.DialContext(ctx, network, addr)
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
	d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	p.dial = d.DialContext
	p.quarantine = newQuarantine(d.DialContext, cfg.ConnectTimeout, cfg.ProbeInterval, 30*time.Second, p.log)
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
// done.
func (p *Proxy) Run(ctx context.Context) error {
	go p.pages.run(ctx)
	err := p.quarantine.Run(ctx)
	p.pages.wait()
	return err
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
	connect  atomic.Int64 // nanoseconds spent connecting to containers
	ttfb     atomic.Int64 // nanoseconds from start to the response's headers
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
	x := &exchange{start: time.Now(), requestID: requestID(r), secure: r.TLS != nil}
	rec := &recorder{ResponseWriter: w}
	rec.Header().Set(RequestIDHeader, x.requestID)
	defer func() {
		x.drop()
		// ReverseProxy aborts the connection (panic) when a response
		// breaks after its headers were sent: log it, then let it go on.
		v := recover()
		if v == http.ErrAbortHandler && x.err == nil {
			x.err = streamError(r.Context(), x.bodyErr)
		}
		p.logAccess(r, rec, x)
		if v != nil {
			panic(v)
		}
	}()
	if x.err = p.admit(r, x); x.err != nil {
		p.writeError(rec, r, x)
		return
	}
	if to := p.redirect(r, x.app); to != "" {
		x.drop()
		x.redirect = to
		rec.Header().Set("Location", to)
		rec.Header().Set("Cache-Control", "no-store")
		rec.WriteHeader(http.StatusMovedPermanently)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		x.bytesIn.ReadCloser = http.MaxBytesReader(rec, r.Body, p.cfg.MaxRequestBody)
		r.Body = &x.bytesIn
	}
	p.rp.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
}

// admit checks the request, finds its app and takes a slot on one of the
// app's containers, waiting in the app's queue if they are all busy.
func (p *Proxy) admit(r *http.Request, x *exchange) *Error {
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
	var timeout <-chan time.Time
	for {
		x.app = app
		if len(app.Containers) == 0 {
			return ErrNoContainer
		}
		c, res := app.pick(x.sticky, p.cfg.MaxInflight, nil)
		if res == picked {
			x.take(c)
			return nil
		}
		q := &app.ref.queue
		wake, ok := q.join(int(max(p.cfg.MaxInflight, 1)) * len(app.Containers))
		if !ok {
			return ErrQueueFull
		}
		// A slot may have come free before this request joined the queue.
		if c, res := app.pick(x.sticky, p.cfg.MaxInflight, nil); res == picked {
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
		case <-r.Context().Done():
			q.leave(wake)
			return upstreamError(r.Context(), r.Context().Err())
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
// for an app that forces it, and to the app's canonical domain.
func (p *Proxy) redirect(r *http.Request, app *App) string {
	o := app.Options
	toHTTPS := o.ForceHTTPS && r.TLS == nil
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
// connection to it can be established (refused, connect timeout), nothing
// was sent: the container is quarantined and the request goes to another
// container of the app, until each has been tried once. It is never retried
// once sent.
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
		resp, err := p.transport.RoundTrip(req)
		if err == nil || !isDialError(err) || out.Context().Err() != nil {
			return resp, err
		}
		p.quarantine.add(x.app.Name, x.container, err)
		x.tried = append(x.tried, x.container.b)
		x.drop()
		c, res := x.app.pick(x.sticky, p.cfg.MaxInflight, x.tried)
		if res != picked {
			return nil, &unreachableError{tried: len(x.tried), err: err}
		}
		x.take(c)
		req = new(http.Request)
		*req = *out
		u := *out.URL
		u.Host = c.Address
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
// read the body, and gives a sticky app's client its cookie.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	x := exchangeOf(resp.Request)
	x.ttfb.Store(int64(time.Since(x.start)))
	x.answered()
	if x.secure && x.app.Options.ForceHTTPS && resp.Header.Get("Strict-Transport-Security") == "" {
		resp.Header.Set("Strict-Transport-Security", "max-age=31536000")
	}
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

// countingBody counts the bytes read from the client's request body.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := exchangeOf(r)
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
	if n := len(x.tried); n > 0 {
		e.Int("retries", n)
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
		Int64("bytes_out", rec.bytes).
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

// recorder notes the status and size of a response. Unwrap lets
// http.ResponseController (used by ReverseProxy for flushing and protocol
// upgrades) reach the connection's own writer.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 || r.status < 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

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
