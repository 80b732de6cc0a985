package routing

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/sluice-router/sluice/shaping"
)

// errPeeked stops the handshake PeekServerName runs once it has the
// ClientHello.
var errPeeked = errors.New("client hello read")

// PeekServerName reads a TLS ClientHello from r and returns its server name
// (SNI, "" if none) and every byte it read, to be replayed to whatever
// handles the connection. crypto/tls parses the ClientHello: nothing is
// written back and no handshake happens.
func PeekServerName(r io.Reader) (string, []byte, error) {
	rec := &recordingConn{r: r}
	var name string
	found := false
	err := tls.Server(rec, &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			name, found = hello.ServerName, true
			return nil, errPeeked
		},
	}).Handshake()
	if !found {
		return "", rec.buf.Bytes(), err
	}
	return name, rec.buf.Bytes(), nil
}

// recordingConn is the net.Conn PeekServerName hands crypto/tls: reads come
// from r and are kept, writes (alerts) are dropped.
type recordingConn struct {
	r   io.Reader
	buf bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.buf.Write(p[:n])
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *recordingConn) Close() error                     { return nil }
func (c *recordingConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *recordingConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *recordingConn) SetDeadline(time.Time) error      { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }

// prefixConn replays bytes already read from a connection before reading
// on.
type prefixConn struct {
	net.Conn
	prefix *bytes.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if c.prefix.Len() > 0 {
		return c.prefix.Read(p)
	}
	return c.Conn.Read(p)
}

// sniListener accepts the HTTPS listener's connections and reads each one's
// ClientHello (on a goroutine of its own, so a slow client holds no one
// else up): connections for apps with TLS passthrough are relayed to a
// container, the others are handed to the HTTPS server, which terminates
// TLS.
type sniListener struct {
	net.Listener
	proxy   *Proxy
	timeout time.Duration // bound on reading the ClientHello, and on the handshake
	// tlsConfig terminates TLS; guard wraps an HTTP/1.1 connection in the
	// request guard.
	tlsConfig *tls.Config
	guard     func(net.Conn, *tls.ConnectionState) *guardConn
	conns     chan net.Conn
	done      chan struct{} // closed by Close: no more connections
	relays    chan struct{} // closed by stopRelays: relayed connections end
	once      sync.Once
	wg        sync.WaitGroup // connection goroutines
}

func newSNIListener(ln net.Listener, p *Proxy, timeout time.Duration, cfg *tls.Config, guard func(net.Conn, *tls.ConnectionState) *guardConn) *sniListener {
	l := &sniListener{Listener: ln, proxy: p, timeout: timeout, tlsConfig: cfg, guard: guard,
		conns: make(chan net.Conn), done: make(chan struct{}), relays: make(chan struct{})}
	l.wg.Go(l.acceptLoop)
	return l
}

// Bounds of the wait before accepting again after a failure, as in
// net/http.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// acceptLoop accepts connections until the listener is closed. Any other
// failure (too many open files, a connection reset before it was accepted)
// is waited out, the wait doubling from minAcceptDelay to maxAcceptDelay,
// so that a passing shortage does not stop HTTPS.
func (l *sniListener) acceptLoop() {
	var delay time.Duration
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.Close()
				return
			}
			delay = min(max(2*delay, minAcceptDelay), maxAcceptDelay)
			l.proxy.log.Warn().Err(err).Dur("retry_in", delay).Msg("https accept failed")
			select {
			case <-time.After(delay):
			case <-l.done:
				return
			}
			continue
		}
		delay = 0
		l.wg.Go(func() { l.sort(conn) })
	}
}

// sort reads the ClientHello of conn and sends conn on its way.
func (l *sniListener) sort(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(l.timeout))
	name, hello, err := PeekServerName(conn)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		// Not TLS, or too slow: only plain HTTP gets an answer.
		var rhe tls.RecordHeaderError
		if errors.As(err, &rhe) && looksLikeHTTP(rhe.RecordHeader[:]) {
			_ = conn.SetWriteDeadline(time.Now().Add(l.timeout))
			_, _ = io.WriteString(conn, plainHTTPAnswer)
		}
		conn.Close()
		return
	}
	if app, ok := l.proxy.table.Snapshot().Lookup(name); ok && app.Options.TLSPassthrough {
		l.proxy.relay(conn, hello, name, app, l.relays)
		return
	}
	// The handshake is done here, not by the server, so that HTTP/1.1
	// requests go through the request guard as on plain HTTP; HTTP/2
	// frames its messages itself.
	tc := tls.Server(&prefixConn{Conn: conn, prefix: bytes.NewReader(hello)}, l.tlsConfig)
	_ = conn.SetDeadline(time.Now().Add(l.timeout))
	err = tc.Handshake()
	_ = conn.SetDeadline(time.Time{})
	if err != nil {
		// A server name without a certificate is logged by
		// Certs.GetCertificate already; crypto/tls says only "no
		// certificates configured" of it.
		if !strings.HasSuffix(err.Error(), "no certificates configured") {
			l.proxy.log.Debug().Str("sni", name).Stringer("remote", conn.RemoteAddr()).Err(err).Msg("TLS handshake failed")
		}
		conn.Close()
		return
	}
	var c net.Conn = tc
	if st := tc.ConnectionState(); st.NegotiatedProtocol != "h2" {
		c = l.guard(tc, &st)
	}
	select {
	case l.conns <- c:
	case <-l.done:
		conn.Close()
	}
}

// plainHTTPAnswer is what a plain HTTP request to the HTTPS listener gets.
const plainHTTPAnswer = "HTTP/1.1 400 Bad Request\r\n" + ErrorHeader + ": " + codePlainHTTP + "\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" +
	"This port speaks HTTPS: use an https:// URL.\n"

// codePlainHTTP is the error code of a plain HTTP request to the HTTPS
// listener.
const codePlainHTTP = "plain_http_on_https_port"

// looksLikeHTTP reports whether the first bytes of a connection are those
// of an HTTP/1 request line.
func looksLikeHTTP(head []byte) bool {
	for _, m := range []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "} {
		if bytes.HasPrefix([]byte(m), head) || bytes.HasPrefix(head, []byte(m)) {
			return true
		}
	}
	return false
}

func (l *sniListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; relayed connections go on until stopRelays.
func (l *sniListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

// stopRelays closes the relayed connections still open.
func (l *sniListener) stopRelays() { close(l.relays) }

// wait waits for the goroutines of the listener's connections.
func (l *sniListener) wait() { l.wg.Wait() }

// relay splices a TLS connection to a container of a passthrough app:
// hello (the bytes read to find the server name) first, then both ways
// until either side closes or stop closes. A failed connection moves on to
// the next container, as for HTTP. Both ways are shaped by the container's
// bucket, and the container side closes after the idle timeout.
func (p *Proxy) relay(client net.Conn, hello []byte, name string, app *App, stop <-chan struct{}) {
	defer client.Close()
	x := &exchange{start: time.Now(), app: app}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	// When the router stops, both ends are closed, which ends the copies.
	defer context.AfterFunc(ctx, func() { client.Close() })()
	var backend net.Conn
	var err error
	for {
		c, res := app.pick("", -1, x.tried)
		if res != picked {
			p.logRelay(x, name, client, 0, 0, &unreachableError{tried: len(x.tried), err: err})
			return
		}
		x.take(c)
		x.answered() // a relayed connection holds no admission slot
		if backend, err = p.dial(ctx, "tcp", c.Address); err == nil {
			break
		}
		p.quarantine.add(app.Name, c, err)
		x.tried = append(x.tried, c.b)
		x.drop()
	}
	defer x.drop()
	backend = newIdleConn(backend, p.cfg.IdleTimeout)
	defer backend.Close()
	defer context.AfterFunc(ctx, func() { backend.Close() })()
	var up, down io.Reader = client, backend
	if b := x.container.Bucket(); b != nil {
		x.up, x.down = b.Pacer(ctx, shaping.Upload), b.Pacer(ctx, shaping.Download)
		up = readerFunc(func(buf []byte) (int, error) { return x.up.Read(client, buf) })
		down = readerFunc(func(buf []byte) (int, error) { return x.down.Read(backend, buf) })
	}
	var in, out int64
	if _, err := x.up.Write(backend, hello); err == nil { // charged as upload
		in = int64(len(hello))
		done := make(chan int64, 1)
		go func() {
			n, _ := io.Copy(backend, up)
			closeWrite(backend)
			done <- n
		}()
		out, _ = io.Copy(client, down)
		closeWrite(client)
		// The container is done; the client gets the idle timeout to be
		// (or less, when the router stops and closes it).
		_ = client.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
		in += <-done
	}
	p.logRelay(x, name, client, in, out, nil)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// closeWrite half-closes a TCP connection, so that the other side sees the
// end of the stream and can finish its own.
func closeWrite(c net.Conn) {
	type writeCloser interface{ CloseWrite() error }
	if ic, ok := c.(*idleConn); ok {
		c = ic.Conn
	}
	if wc, ok := c.(writeCloser); ok {
		_ = wc.CloseWrite()
		return
	}
	_ = c.Close()
}

func (p *Proxy) logRelay(x *exchange, name string, client net.Conn, in, out int64, err error) {
	e := p.log.Info()
	if e == nil {
		return
	}
	if err != nil {
		x.err = upstreamError(context.Background(), err)
		e.Str("error", x.err.Code).Str("cause", err.Error())
	}
	if x.container.ID != "" {
		e.Str("container", x.container.ID).Str("address", x.container.Address)
	}
	if d := x.throttled(); d > 0 {
		e.Dur("throttled_ms", d)
	}
	e.Str("app", x.app.Name).Str("sni", name).Bool("tls_passthrough", true).
		Int64("bytes_in", in).Int64("bytes_out", out).
		Dur("duration_ms", time.Since(x.start)).
		Str("remote", client.RemoteAddr().String()).
		Msg("connection")
}
