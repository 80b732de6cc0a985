package routing

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The router's answers to request heads the guard refuses.
var (
	ErrDuplicateHost     = &Error{Status: http.StatusBadRequest, Code: "duplicate_host", Message: "The request names several hosts."}
	ErrAmbiguousLength   = &Error{Status: http.StatusBadRequest, Code: "ambiguous_length", Message: "The request's length is ambiguous (Content-Length with Transfer-Encoding, or Content-Length values that differ or are not numbers)."}
	ErrTransferEncoding  = &Error{Status: http.StatusNotImplemented, Code: "unsupported_transfer_encoding", Message: "The only transfer coding accepted is chunked."}
	ErrExpectationFailed = &Error{Status: http.StatusExpectationFailed, Code: "expectation_failed", Message: "The only expectation supported is 100-continue."}
)

// Sizes of the guard's work.
const (
	guardBufSize   = 4 << 10 // first read buffer of a connection
	maxChunkLine   = 4 << 10 // a longer chunk-size line makes the guard step aside
	guardLinger    = 500 * time.Millisecond
	maxLingerBytes = 256 << 10
)

// guardListener wraps the plain HTTP listener: each connection it accepts
// is a guardConn, which checks the heads of the requests read from it
// before net/http's server sees them.
type guardListener struct {
	net.Listener
	proxy   *Proxy
	maxHead int // a longer head makes the guard step aside
	// headTimeout is the server's ReadHeaderTimeout, which the guard
	// applies to the heads after the first on a connection (0: none).
	headTimeout time.Duration
}

func (l *guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.guard(c, nil), nil
}

// guard returns c behind a guardConn. tlsState is the state of the TLS
// connection c is, nil for plain HTTP: the server cannot see it through the
// guard, so withTLSState hands it to the requests.
func (l *guardListener) guard(c net.Conn, tlsState *tls.ConnectionState) *guardConn {
	// The server times the first head from the moment it accepts the
	// connection.
	return &guardConn{Conn: c, proxy: l.proxy, maxHead: l.maxHead, headTimeout: l.headTimeout, headTimed: true, tlsState: tlsState}
}

// tlsStateKey is the context key of a guarded TLS connection's state.
type tlsStateKey struct{}

// withTLSState is the http.Server.ConnContext hook that keeps the TLS state
// of a guarded HTTPS connection for its requests (see Proxy.ServeHTTP).
func withTLSState(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*guardConn); ok && g.tlsState != nil {
		return context.WithValue(ctx, tlsStateKey{}, g.tlsState)
	}
	return ctx
}

// guardConnState is the http.Server.ConnState hook that tells a guardConn
// whether the server is between requests: a refused request is answered
// only then, so that the answer never mixes with the response to an
// earlier request on the same connection.
func guardConnState(c net.Conn, s http.ConnState) {
	if g, ok := c.(*guardConn); ok {
		g.busy.Store(s == http.StateActive)
	}
}

// guardState is where a guardConn is in the HTTP/1.1 message framing.
type guardState uint8

const (
	stateHead      guardState = iota // reading a request head
	stateBody                        // remaining bytes of a Content-Length body
	stateChunkSize                   // a chunk-size line
	stateChunkData                   // remaining bytes of a chunk
	stateChunkEnd                    // the CRLF after a chunk
	stateTrailer                     // the trailer after the last chunk
	statePass                        // not guarding any more: bytes go through
)

// guardConn follows the HTTP/1.1 message framing of the bytes read from a
// client: it holds back each request head until it is whole and checked,
// and lets the bodies through as they come. A head that makes the length
// of the request ambiguous (request smuggling) or that net/http would
// refuse without a code is answered by the router's error page, logged,
// and the connection ends: the server reads EOF. Whatever the guard does
// not understand (a malformed head, an upgrade, CONNECT) makes it step
// aside for the rest of the connection, so it never changes the bytes of
// a request the server would serve.
//
// Between requests, the server waits for the next one under its
// keep-alive deadline and starts its ReadHeaderTimeout only once the first
// bytes of the head are read; as the guard holds a head until it is whole,
// it starts that timeout itself when the head's first bytes arrive.
//
// Reads come from one goroutine at a time (net/http serialises them);
// busy is set by the server's goroutine through guardConnState.
type guardConn struct {
	net.Conn
	proxy       *Proxy
	maxHead     int
	headTimeout time.Duration

	// buf[r:rel] is checked and not yet read by the server; buf[rel:w] is
	// held until the parser gets past it. scan is where the parser's search
	// for a line end resumes, lineStart where the current line of a head
	// starts, both relative to rel.
	buf             []byte
	r, rel, w       int
	scan, lineStart int
	state           guardState
	remaining       int64  // bytes left in a body or chunk
	rerr            error  // a read error, returned once the bytes before it are read
	refusal         *Error // the refused request's answer, until it is sent
	refused         *http.Request
	done            bool                 // the answer is sent: only EOF from now on
	headTimed       bool                 // the read deadline of the head being read is set
	busy            atomic.Bool          // the server is handling a request
	tlsState        *tls.ConnectionState // of an HTTPS connection; nil for HTTP
}

func (c *guardConn) Read(p []byte) (int, error) {
	for {
		if c.r < c.rel {
			n := copy(p, c.buf[c.r:c.rel])
			c.r += n
			return n, nil
		}
		if c.refusal != nil || c.done {
			return c.refuse()
		}
		if c.rerr != nil {
			err := c.rerr
			c.rerr = nil
			if c.w > c.rel && !isTimeout(err) {
				// The client is gone mid-head: the server gets
				// what it sent, and the error after it.
				c.pass()
				c.rerr = err
				continue
			}
			return 0, err
		}
		if c.state == statePass {
			c.buf = nil
			return c.Conn.Read(p)
		}
		if c.state == stateBody && c.w == c.rel && len(p) > 0 {
			// Nothing held: the body goes straight to the server.
			n, err := c.Conn.Read(p[:min(int64(len(p)), c.remaining)])
			if c.remaining -= int64(n); c.remaining == 0 {
				c.state = stateHead
			}
			return n, err
		}
		c.fill()
	}
}

// fill reads once from the connection into buf and parses what it got.
func (c *guardConn) fill() {
	switch {
	case c.buf == nil:
		c.buf = make([]byte, guardBufSize)
	case c.r == c.w:
		c.r, c.rel, c.w = 0, 0, 0
	case c.w == len(c.buf) && c.r > 0:
		n := copy(c.buf, c.buf[c.r:c.w])
		c.rel -= c.r
		c.r, c.w = 0, n
	}
	if c.w == len(c.buf) {
		c.buf = append(c.buf, make([]byte, len(c.buf))...)
	}
	if c.state == stateHead && c.rel < c.w && !c.headTimed && !c.busy.Load() && c.headTimeout > 0 {
		// A head has begun and the server waits for it: it has from
		// now (when its first bytes came, or when the server finished
		// the request it was reading ahead of) as the server gives.
		c.headTimed = true
		_ = c.SetReadDeadline(time.Now().Add(c.headTimeout))
	}
	n, err := c.Conn.Read(c.buf[c.w:])
	c.w += n
	c.parse()
	c.rerr = err
}

// pass releases what is held and stops guarding.
func (c *guardConn) pass() {
	c.state = statePass
	c.rel = c.w
}

// parse moves rel past the bytes whose place in the framing is known.
func (c *guardConn) parse() {
	for c.refusal == nil && c.state != statePass {
		data := c.buf[c.rel:c.w]
		switch c.state {
		case stateHead:
			end := c.line(data, c.maxHead, true)
			if end < 0 {
				return
			}
			c.checkHead(data[:end])
			if c.refusal != nil || c.state == statePass {
				return
			}
			c.rel += end
			c.headTimed = false // the next head is not timed yet
		case stateBody, stateChunkData:
			k := int(min(int64(len(data)), c.remaining))
			if k == 0 {
				return
			}
			c.rel += k
			if c.remaining -= int64(k); c.remaining == 0 {
				if c.state == stateBody {
					c.state = stateHead
				} else {
					c.state = stateChunkEnd
				}
			}
		case stateChunkEnd:
			if len(data) < 2 {
				return
			}
			if data[0] != '\r' || data[1] != '\n' {
				c.pass()
				return
			}
			c.rel += 2
			c.state = stateChunkSize
		case stateChunkSize:
			end := c.line(data, maxChunkLine, false)
			if end < 0 {
				return
			}
			size, ok := chunkSize(data[:end])
			if !ok {
				c.pass()
				return
			}
			c.rel += end
			c.state, c.remaining = stateChunkData, size
			if size == 0 {
				c.state = stateTrailer
			}
		case stateTrailer:
			end := c.line(data, c.maxHead, false)
			if end < 0 {
				return
			}
			c.rel += end
			if isEmptyLine(data[:end]) {
				c.state = stateHead
			}
		}
	}
}

// line returns the length of data up to and including the end of its first
// line (or, with head, of its first empty line), -1 if it is not there yet.
// Beyond limit bytes without it, the guard steps aside.
func (c *guardConn) line(data []byte, limit int, head bool) int {
	for {
		i := bytes.IndexByte(data[c.scan:], '\n')
		if i < 0 {
			c.scan = len(data)
			if len(data) > limit {
				c.pass()
			}
			return -1
		}
		end := c.scan + i + 1
		if !head || isEmptyLine(data[c.lineStart:end]) {
			c.scan, c.lineStart = 0, 0
			return end
		}
		c.scan, c.lineStart = end, end
	}
}

// isEmptyLine reports whether l, a line with its end, is empty.
func isEmptyLine(l []byte) bool {
	return len(l) == 1 || len(l) == 2 && l[0] == '\r'
}

// chunkSize parses a chunk-size line (extensions ignored) as net/http does.
func chunkSize(line []byte) (int64, bool) {
	line = bytes.TrimRight(line, " \t\r\n")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, b := range line {
		switch {
		case '0' <= b && b <= '9':
			b -= '0'
		case 'a' <= b && b <= 'f':
			b -= 'a' - 10
		case 'A' <= b && b <= 'F':
			b -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int64(b)
	}
	return n, true
}

// checkHead checks a whole request head, and sets the framing of what
// follows it, or the refusal, or steps aside.
func (c *guardConn) checkHead(head []byte) {
	nl := bytes.IndexByte(head, '\n')
	reqLine := bytes.TrimSuffix(head[:nl], []byte{'\r'})
	sp1, sp2 := bytes.IndexByte(reqLine, ' '), bytes.LastIndexByte(reqLine, ' ')
	if sp1 <= 0 || sp2 == sp1 {
		c.pass() // net/http answers a malformed request line
		return
	}
	method, proto := reqLine[:sp1], reqLine[sp2+1:]
	if !bytes.Equal(proto, []byte("HTTP/1.1")) && !bytes.Equal(proto, []byte("HTTP/1.0")) ||
		bytes.Equal(method, []byte("CONNECT")) {
		c.pass()
		return
	}
	var (
		hosts, tes      int
		length          []byte
		n               int64 // the body's length, by length
		badLength, isTE bool
		badTE, badExp   bool
		expect, upgrade bool
		page            pageFields
	)
	for rest := head[nl+1:]; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		line := bytes.TrimSuffix(rest[:i], []byte{'\r'})
		rest = rest[i+1:]
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			c.pass() // folded or malformed: net/http answers or reads it its own way
			return
		}
		name, value := line[:colon], bytes.Trim(line[colon+1:], " \t")
		switch len(name) { // most fields are none of these: compare only the same lengths
		case 4, 6, 7, 10, 12, 14, 17:
		default:
			continue
		}
		switch {
		case bytes.EqualFold(name, []byte("Host")):
			hosts++
			if hosts == 1 {
				page.host = value
			}
		case bytes.EqualFold(name, []byte("Accept")):
			if page.accept == nil {
				page.accept = value
			} else {
				page.accept = slices.Concat(page.accept, []byte(", "), value)
			}
		case bytes.EqualFold(name, []byte(RequestIDHeader)):
			if page.requestID == nil {
				page.requestID = value
			}
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length == nil {
				var ok bool
				n, ok = parseLength(value)
				badLength = !ok
			} else if !bytes.Equal(value, length) {
				badLength = true
			}
			length = value
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			tes++
			isTE = true
			badTE = badTE || tes > 1 || !bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Expect")):
			// net/http reads the first value only, and ignores it empty.
			if !expect {
				expect = true
				badExp = len(value) > 0 && !hasWord(value, "100-continue")
			}
		case bytes.EqualFold(name, []byte("Upgrade")):
			upgrade = true
		case bytes.EqualFold(name, []byte("Connection")):
			upgrade = upgrade || hasToken(value, "upgrade")
		}
	}
	switch {
	case hosts > 1:
		c.refuseHead(ErrDuplicateHost, reqLine, sp1, sp2, &page)
	case hosts == 0 && proto[len(proto)-1] == '1':
		c.refuseHead(ErrMissingHost, reqLine, sp1, sp2, &page)
	case badLength || isTE && (length != nil || proto[len(proto)-1] == '0'):
		// net/http reads an HTTP/1.0 body by its length alone.
		c.refuseHead(ErrAmbiguousLength, reqLine, sp1, sp2, &page)
	case badTE:
		c.refuseHead(ErrTransferEncoding, reqLine, sp1, sp2, &page)
	case badExp:
		c.refuseHead(ErrExpectationFailed, reqLine, sp1, sp2, &page)
	case upgrade:
		// After a 101 the bytes are not HTTP any more.
		c.pass()
	case isTE:
		c.state = stateChunkSize
	case n > 0:
		c.state, c.remaining = stateBody, n
	}
}

// tokenChars marks the bytes of an RFC 9110 token.
var tokenChars = func() (t [256]bool) {
	for b := '!'; b <= '~'; b++ {
		t[b] = !strings.ContainsRune(`"(),/:;<=>?@[\]{}`, b)
	}
	return t
}()

// validFieldName reports whether name is an RFC 9110 token.
func validFieldName(name []byte) bool {
	for _, b := range name {
		if !tokenChars[b] {
			return false
		}
	}
	return true
}

// parseLength parses a Content-Length value as net/http does: decimal
// digits (leading zeros too) up to 2^63-1.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n uint64
	for _, b := range v {
		if b < '0' || b > '9' {
			return 0, false
		}
		d := uint64(b - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return int64(n), true
}

// hasToken reports whether the comma-separated list v holds token,
// compared without case.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		item := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if bytes.EqualFold(bytes.Trim(item, " \t"), []byte(token)) {
			return true
		}
	}
	return false
}

// hasWord reports whether word, compared without case, is in v between
// spaces, tabs, commas or the ends, as net/http looks for 100-continue.
func hasWord(v []byte, word string) bool {
	for len(v) > 0 {
		i := bytes.IndexAny(v, " \t,")
		if i < 0 {
			i = len(v)
		}
		if bytes.EqualFold(v[:i], []byte(word)) {
			return true
		}
		v = v[min(i+1, len(v)):]
	}
	return false
}

// pageFields are the fields of a head that shape the router's answer to
// it: the first Host (the app, for its pages), the Accept values joined
// (HTML or JSON) and the first X-Request-Id (nil when absent).
type pageFields struct {
	host, accept, requestID []byte
}

// refuseHead notes that the request whose head has the request line
// reqLine and the fields f gets e; the answer is sent when the server next
// reads (see refuse).
func (c *guardConn) refuseHead(e *Error, reqLine []byte, sp1, sp2 int, f *pageFields) {
	req := &http.Request{
		Method:     string(reqLine[:sp1]),
		URL:        &url.URL{},
		Proto:      string(reqLine[sp2+1:]),
		Header:     http.Header{},
		Host:       string(f.host),
		RemoteAddr: c.RemoteAddr().String(),
	}
	if u, err := url.ParseRequestURI(string(reqLine[sp1+1 : sp2])); err == nil {
		req.URL = u
	}
	if f.accept != nil {
		req.Header.Set("Accept", string(f.accept))
	}
	if f.requestID != nil {
		req.Header.Set(RequestIDHeader, string(f.requestID))
	}
	c.refusal, c.refused = e, req
}

// refuse sends the refused request's answer once the server is between
// requests, then ends the connection. Until then (the server reads ahead
// while its handler answers an earlier request), it waits for the read to
// be aborted, discarding what the client sends.
func (c *guardConn) refuse() (int, error) {
	if c.done {
		return 0, io.EOF
	}
	if c.busy.Load() {
		var scratch [512]byte
		for {
			if _, err := c.Conn.Read(scratch[:]); err != nil {
				if !isTimeout(err) {
					c.refusal, c.done = nil, true // the client is gone
				}
				return 0, err
			}
		}
	}
	c.answer()
	c.refusal, c.refused, c.done = nil, nil, true
	return 0, io.EOF
}

// answer writes the refusal as the proxy writes its errors, logs it, and
// half-closes the connection; it lingers a little reading what the client
// still sends, so that closing does not reset the connection before the
// client has read the answer.
func (c *guardConn) answer() {
	r := c.refused
	x := &exchange{start: time.Now(), requestID: requestID(r), err: c.refusal}
	w := &bufferedWriter{header: http.Header{}}
	// The answer is written to memory: its deadlines are the connection's.
	rec := &recorder{ResponseWriter: w, idle: &clientIdle{rc: http.NewResponseController(w), idle: c.proxy.cfg.IdleTimeout}}
	rec.Header().Set(RequestIDHeader, x.requestID)
	c.proxy.writeError(rec, r, x)
	c.proxy.logAccess(r, rec, x)
	h := w.header
	h.Set("Connection", "close")
	h.Set("Content-Length", strconv.Itoa(w.body.Len()))
	var out bytes.Buffer
	out.WriteString("HTTP/1.1 " + strconv.Itoa(w.status) + " " + http.StatusText(w.status) + "\r\n")
	_ = h.Write(&out)
	out.WriteString("\r\n")
	if r.Method != http.MethodHead {
		out.Write(w.body.Bytes())
	}
	_ = c.SetWriteDeadline(time.Now().Add(guardLinger))
	if _, err := c.Conn.Write(out.Bytes()); err != nil {
		return
	}
	closeWrite(c.Conn)
	_ = c.SetReadDeadline(time.Now().Add(guardLinger))
	_, _ = io.CopyN(io.Discard, c.Conn, maxLingerBytes)
}

// bufferedWriter is the http.ResponseWriter the guard's answers are made
// in before they are written to the connection.
type bufferedWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *bufferedWriter) Header() http.Header { return w.header }

func (w *bufferedWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *bufferedWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}
