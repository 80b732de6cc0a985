package routing

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// pieceConn is a net.Conn that reads src in pieces of at most n bytes and
// keeps what is written to it.
type pieceConn struct {
	src     []byte
	n       int
	written bytes.Buffer
}

func (c *pieceConn) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.src)
	c.src = c.src[k:]
	return k, nil
}

func (c *pieceConn) Write(p []byte) (int, error)      { return c.written.Write(p) }
func (c *pieceConn) Close() error                     { return nil }
func (c *pieceConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *pieceConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *pieceConn) SetDeadline(time.Time) error      { return nil }
func (c *pieceConn) SetReadDeadline(time.Time) error  { return nil }
func (c *pieceConn) SetWriteDeadline(time.Time) error { return nil }

// throughGuard reads src through a guardConn, in pieces of n bytes, with
// reads of m bytes, and returns what the server would read and what the
// guard answered.
func throughGuard(p *Proxy, src []byte, n, m int) (read, answered []byte) {
	pc := &pieceConn{src: src, n: n}
	g := &guardConn{Conn: pc, proxy: p, maxHead: 1 << 10}
	var out bytes.Buffer
	buf := make([]byte, m)
	for range 4*len(src) + 8 {
		k, err := g.Read(buf)
		out.Write(buf[:k])
		if err != nil {
			break
		}
	}
	return out.Bytes(), pc.written.Bytes()
}

// validRequests makes a sequence of valid requests from spec, each byte
// one request: GET, bodies by length, chunked bodies with extensions and
// trailers, HTTP/1.0, 100-continue.
func validRequests(spec []byte) []byte {
	var b strings.Builder
	for i, s := range spec {
		path := "/r" + strconv.Itoa(i)
		body := strings.Repeat("x", int(s>>3))
		switch s % 7 {
		case 0:
			b.WriteString("GET " + path + " HTTP/1.1\r\nHost: a.example\r\n\r\n")
		case 1:
			b.WriteString("POST " + path + " HTTP/1.1\r\nHost: a.example\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
		case 2:
			b.WriteString("POST " + path + " HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n")
			for _, c := range []string{body, body[:len(body)/2]} {
				if c != "" {
					b.WriteString(strconv.FormatInt(int64(len(c)), 16) + ";n=v\r\n" + c + "\r\n")
				}
			}
			b.WriteString("0\r\nX-Trailer: t\r\n\r\n")
		case 3:
			b.WriteString("PUT " + path + " HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
		case 4:
			b.WriteString("POST " + path + " HTTP/1.1\r\nHost: a.example\r\nExpect: 100-Continue\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
		case 5:
			b.WriteString("GET " + path + " HTTP/1.1\nhost: a.example\ncontent-length: 0\n\n")
		case 6:
			b.WriteString("POST " + path + " HTTP/1.1\r\nHost: a.example\r\nExpect:\r\nExpect: other\r\nContent-Length: 000000000000000000000" + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
		}
	}
	return []byte(b.String())
}

// FuzzGuard feeds bytes through the request head guard: it must never
// panic, never change the bytes it lets through, and let valid request
// sequences through whole without answering anything.
func FuzzGuard(f *testing.F) {
	p := NewProxy(NewTable(zerolog.Nop(), nil), Config{})
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), []byte{0, 1, 2}, uint8(3), uint8(7))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), []byte{5, 4, 3}, uint8(1), uint8(1))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"), []byte{255, 17, 42}, uint8(200), uint8(64))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n"), []byte{}, uint8(9), uint8(2))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n"), []byte{6, 13, 20}, uint8(5), uint8(3))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: x\r\nContent-Length: 09223372036854775807\r\n\r\n"), []byte{6}, uint8(255), uint8(255))
	f.Fuzz(func(t *testing.T, data, spec []byte, n, m uint8) {
		pieces, reads := max(int(n), 1), max(int(m), 1)
		read, _ := throughGuard(p, data, pieces, reads)
		if !bytes.HasPrefix(data, read) {
			t.Fatalf("the guard changed the bytes:\n in %q\nout %q", data, read)
		}
		valid := validRequests(spec[:min(len(spec), 64)])
		read, answered := throughGuard(p, valid, pieces, reads)
		if !bytes.Equal(read, valid) || len(answered) > 0 {
			t.Fatalf("valid requests\n%q\ncame out as\n%q\nanswered %q", valid, read, answered)
		}
	})
}

// goneConn reads src with err, as from a client that sent src and went
// away, then only EOF.
type goneConn struct {
	pieceConn
	err error
}

func (c *goneConn) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.src)
	c.src = c.src[n:]
	return n, c.err
}

// A client that goes away in the middle of a head: the server reads what
// it sent, then the error that ended the connection.
func TestGuardPassesReadError(t *testing.T) {
	sent := []byte("GET / HTTP/1.1\r\nHo")
	gone := errors.New("connection reset by peer")
	g := &guardConn{Conn: &goneConn{pieceConn: pieceConn{src: sent}, err: gone}, maxHead: 1 << 10}
	got, err := io.ReadAll(g)
	if !bytes.Equal(got, sent) || !errors.Is(err, gone) {
		t.Fatalf("the server read %q, %v; want %q, %v", got, err, sent, gone)
	}
}

// parseLength reads the Content-Length values net/http reads, and only
// those.
func TestParseLength(t *testing.T) {
	for _, v := range []string{
		"0", "16", "000000000000000000000000016", "999999999999999999", "9223372036854775807",
		"09223372036854775807", "9223372036854775808", "18446744073709551616", "99999999999999999999",
		"", "+3", "-3", "3 ", "0x10", "1_000", "1e3", "٣",
	} {
		t.Run(v, func(t *testing.T) {
			u, err := strconv.ParseUint(v, 10, 63)
			got, ok := parseLength([]byte(v))
			if want := err == nil; ok != want || ok && uint64(got) != u {
				t.Fatalf("parseLength(%q) = %d, %v; want %d, %v", v, got, ok, u, want)
			}
		})
	}
}

// loopConn reads req over and over, in one piece per read.
type loopConn struct {
	pieceConn
	req []byte
}

func (c *loopConn) Read(p []byte) (int, error) { return copy(p, c.req), nil }

// BenchmarkGuard measures the guard's cost per request: a typical browser
// head and a small body, checked and read by the server in one read each.
func BenchmarkGuard(b *testing.B) {
	req := []byte("POST /cart/items?id=42 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
		"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\n" +
		"Accept-Encoding: gzip, deflate, br\r\nCookie: session=0123456789abcdef0123456789abcdef\r\nContent-Type: application/json\r\n" +
		"Content-Length: 16\r\nConnection: keep-alive\r\n\r\n{\"quantity\": 1}\n")
	g := &guardConn{Conn: &loopConn{req: req}, maxHead: 64 << 10}
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		for n := 0; n < len(req); {
			k, err := g.Read(buf)
			if err != nil {
				b.Fatal(err)
			}
			n += k
		}
	}
}
