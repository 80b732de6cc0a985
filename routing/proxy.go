package routing

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/shaping"
)

// RequestIDHeader carries the request's id to the container and back to the
// client.
const RequestIDHeader = "X-Request-Id"

// NewTransport returns the transport the proxy reaches containers with:
// HTTP/1.1 only, keep-alive connections pooled per container and sized for a
// proxy (Go's default keeps 2 idle connections per host), and no transparent
// compression, so that the client's Accept-Encoding reaches the app.
func NewTransport(connectTimeout time.Duration) *http.Transport {
	if connectTimeout <= 0 {
		connectTimeout = 5 * time.Second
	}
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		MaxIdleConns:          0, // no global limit
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
}

// Proxy is the HTTP handler that routes each request by its Host header to
// a container of the app that owns it, and writes one access-log line per
// request.
type Proxy struct {
	table *Table
	log   zerolog.Logger
	rp    *httputil.ReverseProxy
}

var _ http.Handler = (*Proxy)(nil)

// NewProxy returns a Proxy over table. A nil transport means
// NewTransport(0).
func NewProxy(table *Table, transport http.RoundTripper, logger zerolog.Logger) *Proxy {
	if transport == nil {
		transport = NewTransport(0)
	}
	p := &Proxy{table: table, log: logger}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		ModifyResponse: shapeResponse,
		Transport:      transport,
		ErrorHandler:   p.proxyError,
		ErrorLog:       log.New(logWriter{logger}, "", 0),
		// Streams (SSE, chunked) reach the client as the app writes them.
		FlushInterval: -1,
	}
	return p
}

// exchange is what the proxy knows of one request on its way.
type exchange struct {
	app       *App
	container Container
	requestID string
	err       *Error
	// up and down pace the request's bytes to the container and the
	// response's back; nil when shaping is off.
	up, down *shaping.Pacer
}

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

type exchangeKey struct{}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	x := &exchange{requestID: requestID(r)}
	rec.Header().Set(RequestIDHeader, x.requestID)
	switch app, ok := p.table.Snapshot().Lookup(r.Host); {
	case r.Host == "":
		x.err = ErrMissingHost
	case !ok:
		x.err = ErrUnknownHost
	default:
		x.app = app
		if x.container, ok = app.Pick(); !ok {
			x.err = ErrNoContainer
		}
	}
	if x.err != nil {
		writeError(rec, x.err)
	} else {
		p.rp.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
	}
	p.logAccess(r, rec, x, time.Since(start))
}

// rewrite turns the client's request into the container's.
func rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = x.container.Address
	// The router is the edge: X-Forwarded-* headers from the client are
	// dropped (ReverseProxy removes them) and set from the connection.
	pr.SetXForwarded()
	if port := localPort(pr.In); port != "" {
		pr.Out.Header.Set("X-Forwarded-Port", port)
	}
	pr.Out.Header.Set(RequestIDHeader, x.requestID)
	if b := x.container.Bucket(); b != nil {
		x.up = b.Pacer(pr.In.Context(), shaping.Upload)
		x.down = b.Pacer(pr.In.Context(), shaping.Download)
		if pr.Out.Body != nil && pr.Out.Body != http.NoBody {
			pr.Out.Body = &pacedBody{ReadCloser: pr.Out.Body, pacer: x.up}
		}
	}
}

// shapeResponse paces the response body, or both ways of an upgraded
// connection (WebSocket), with the container's bucket.
func shapeResponse(resp *http.Response) error {
	x := resp.Request.Context().Value(exchangeKey{}).(*exchange)
	switch {
	case x.down == nil || resp.Body == nil || resp.Body == http.NoBody:
	case resp.StatusCode == http.StatusSwitchingProtocols:
		if conn, ok := resp.Body.(io.ReadWriteCloser); ok {
			resp.Body = &pacedConn{ReadWriteCloser: conn, down: x.down, up: x.up}
		}
	default:
		resp.Body = &pacedBody{ReadCloser: resp.Body, pacer: x.down}
	}
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

func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	x.err = upstreamError(r.Context(), err)
	writeError(w, x.err)
}

func (p *Proxy) logAccess(r *http.Request, rec *recorder, x *exchange, d time.Duration) {
	e := p.log.Info()
	if e == nil {
		return
	}
	status := rec.status
	if x.err != nil {
		status = x.err.Status
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
	e.Str("host", r.Host).
		Str("method", r.Method).
		Str("path", r.URL.Path).
		Int("status", status).
		Int64("bytes", rec.bytes).
		Dur("duration_ms", d).
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
