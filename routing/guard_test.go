package routing_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/testenv"
)

// dialRouter opens a raw TCP connection to the router's HTTP listener.
func dialRouter(t *testing.T, w *world) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(w.r.URL, "http://"))
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	must(t, conn.SetDeadline(time.Now().Add(testenv.Timeout)))
	return conn, bufio.NewReader(conn)
}

// readResponse reads one final response and its body from br.
func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	for err == nil && resp.StatusCode < 200 {
		resp, err = http.ReadResponse(br, &http.Request{Method: method})
	}
	must(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	return resp, body
}

// wantClosed checks that the router ended the connection.
func wantClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if b, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the connection stayed open (read %q, %v)", b, err)
	}
}

// Heads that make a request's length ambiguous (request smuggling), or that
// net/http would refuse without a code, get the router's own answer.
func TestGuardRefusesAmbiguousHeads(t *testing.T) {
	w := newWorld(t, routing.Config{})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	const host = "Host: app.example.com\r\n"
	for _, tt := range []struct {
		name, request string
		status        int
		code          string
	}{
		{"two Host headers", "GET / HTTP/1.1\r\n" + host + "Host: other.example.com\r\n\r\n", 400, "duplicate_host"},
		{"no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400, "missing_host"},
		{"two different lengths", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 400, "ambiguous_length"},
		{"length not a number", "POST / HTTP/1.1\r\n" + host + "Content-Length: +3\r\n\r\nabc", 400, "ambiguous_length"},
		{"length and chunked", "POST / HTTP/1.1\r\n" + host + "Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + host + "\r\n", 400, "ambiguous_length"},
		{"chunked in HTTP/1.0", "POST / HTTP/1.0\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400, "ambiguous_length"},
		{"other transfer coding", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "unsupported_transfer_encoding"},
		{"chunked twice", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "unsupported_transfer_encoding"},
		{"unknown expectation", "GET / HTTP/1.1\r\n" + host + "Expect: 200-ok\r\n\r\n", 417, "expectation_failed"},
		{"unknown expectation first", "GET / HTTP/1.1\r\n" + host + "Expect: 200-ok\r\nExpect: 100-continue\r\n\r\n", 417, "expectation_failed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hits := c.Hits()
			conn, br := dialRouter(t, w)
			_, err := io.WriteString(conn, tt.request)
			must(t, err)
			resp, body := readResponse(t, br, "")
			wantError(t, resp, body, tt.status, tt.code)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") || !strings.Contains(string(body), "</html>") {
				t.Fatalf("not the router's HTML page: %s %s", ct, body)
			}
			wantClosed(t, br)
			if c.Hits() != hits {
				t.Fatal("the request reached the container")
			}
			id := resp.Header.Get(routing.RequestIDHeader)
			w.waitLog(t, "for "+tt.code, func(l map[string]any) bool {
				return l["error"] == tt.code && l["request_id"] == id && l["status"] == float64(tt.status)
			})
		})
	}
	t.Run("JSON page", func(t *testing.T) {
		const id = "client-request-0123456789"
		conn, br := dialRouter(t, w)
		_, err := io.WriteString(conn, "GET / HTTP/1.1\r\n"+host+"Accept: text/plain\r\nX-Request-Id: "+id+"\r\n"+
			"Accept: application/json\r\nExpect: nothing\r\n\r\n")
		must(t, err)
		resp, body := readResponse(t, br, "")
		wantError(t, resp, body, 417, "expectation_failed")
		if got := resp.Header.Get(routing.RequestIDHeader); got != id {
			t.Fatalf("request ID %q, want the client's %q", got, id)
		}
		var e struct{ Code string }
		if err := json.Unmarshal(body, &e); err != nil || e.Code != "expectation_failed" {
			t.Fatalf("not the JSON page: %s (%v)", body, err)
		}
	})
	t.Run("after a valid request on the same connection", func(t *testing.T) {
		hits := c.Hits()
		conn, br := dialRouter(t, w)
		// Pipelined: the refusal waits for the first answer.
		_, err := io.WriteString(conn, "GET /first HTTP/1.1\r\n"+host+"\r\n"+
			"POST /second HTTP/1.1\r\n"+host+"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		must(t, err)
		resp, body := readResponse(t, br, "")
		if resp.StatusCode != http.StatusOK || container(t, body) != "a" {
			t.Fatalf("first request: %d %s", resp.StatusCode, body)
		}
		resp, body = readResponse(t, br, "")
		wantError(t, resp, body, 400, "ambiguous_length")
		wantClosed(t, br)
		if got := c.Hits() - hits; got != 1 {
			t.Fatalf("the container got %d requests, want 1", got)
		}
	})
}

// Valid requests pass the guard untouched, pipelined on one connection and
// cut in small pieces.
func TestGuardPassesValidRequests(t *testing.T) {
	w := newWorld(t, routing.Config{})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	const host = "Host: app.example.com\r\n"
	requests := []struct {
		method, text, path string
		body               int64
	}{
		{"GET", "GET /one HTTP/1.1\r\n" + host + "Accept: */*\r\n\r\n", "/one", 0},
		{"POST", "POST /two HTTP/1.1\r\n" + host + "Content-Length: 11\r\nContent-Length: 11\r\n\r\nhello world", "/two", 11},
		{"POST", "POST /three HTTP/1.1\r\n" + host + "Transfer-Encoding: Chunked\r\nTrailer: X-Sum\r\nExpect: 100-continue\r\n\r\n" +
			"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Sum: 15\r\n\r\n", "/three", 15},
		{"HEAD", "HEAD /four HTTP/1.1\r\n" + host + "\r\n", "/four", 0},
		{"POST", "POST /five HTTP/1.0\r\n" + host + "Connection: keep-alive\r\nContent-Length: 4\r\n\r\n\r\n\r\n", "/five", 4},
		{"GET", "GET /six HTTP/1.1\n" + host + "\n", "/six", 0},
		// net/http reads any number of digits up to 2^63-1, and only the
		// first Expect, ignored when empty.
		{"POST", "POST /seven HTTP/1.1\r\n" + host + "Content-Length: 0000000000000000000005\r\nExpect:\r\n\r\nhello", "/seven", 5},
		{"POST", "POST /eight HTTP/1.1\r\n" + host + "Expect: 100-continue\r\nExpect: later\r\nContent-Length: 2\r\n\r\nhi", "/eight", 2},
	}
	var all strings.Builder
	for _, r := range requests {
		all.WriteString(r.text)
	}
	for _, piece := range []int{len(all.String()), 7, 1} {
		t.Run("pieces of "+itoa(piece), func(t *testing.T) {
			hits := c.Hits()
			conn, br := dialRouter(t, w)
			go func() {
				for s := all.String(); len(s) > 0; {
					n := min(piece, len(s))
					if _, err := io.WriteString(conn, s[:n]); err != nil {
						return
					}
					s = s[n:]
				}
			}()
			for _, r := range requests {
				resp, body := readResponse(t, br, r.method)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: %d %s", r.path, resp.StatusCode, body)
				}
				if r.method == "HEAD" {
					continue
				}
				var reply testenv.Reply
				must(t, json.Unmarshal(body, &reply))
				if reply.Path != r.path || reply.BodyBytes != r.body {
					t.Fatalf("the container got %s with %d bytes, want %s with %d", reply.Path, reply.BodyBytes, r.path, r.body)
				}
			}
			if got, want := c.Hits()-hits, int64(len(requests)); got != want {
				t.Fatalf("the container got %d requests, want %d", got, want)
			}
		})
	}
	t.Run("websocket", func(t *testing.T) {
		ws, _, err := websocket.Dial(ctx(t), "ws"+strings.TrimPrefix(w.r.URL, "http")+"/ws/echo", &websocket.DialOptions{Host: "app.example.com"})
		must(t, err)
		defer ws.CloseNow()
		for _, msg := range []string{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "hello"} {
			must(t, ws.Write(ctx(t), websocket.MessageText, []byte(msg)))
			_, got, err := ws.Read(ctx(t))
			must(t, err)
			if string(got) != msg {
				t.Fatalf("echo %q, want %q", got, msg)
			}
		}
		ws.Close(websocket.StatusNormalClosure, "")
	})
}

// A client that sends the head of a second request on a keep-alive
// connection slowly gets ReadHeaderTimeout for it, as for the first one,
// not the keep-alive timeout.
func TestGuardTimesLaterHeads(t *testing.T) {
	const timeout = 200 * time.Millisecond
	w := newWorld(t, routing.Config{ReadHeaderTimeout: timeout})
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	const head = "GET / HTTP/1.1\r\nHost: app.example.com\r\nAccept: */*\r\nUser-Agent: slow\r\n\r\n"
	conn, br := dialRouter(t, w)
	_, err := io.WriteString(conn, head)
	must(t, err)
	if resp, body := readResponse(t, br, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d %s", resp.StatusCode, body)
	}
	// The second head, a byte every 50ms: 3s in all.
	stop := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		tick := time.NewTicker(3 * time.Second / time.Duration(len(head)))
		defer tick.Stop()
		for i := range len(head) {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := io.WriteString(conn, head[i:i+1]); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-sent }()
	start := time.Now()
	if resp, err := http.ReadResponse(br, nil); err == nil {
		t.Fatalf("the slow head was answered %d", resp.StatusCode)
	}
	if d := time.Since(start); d > 5*timeout {
		t.Fatalf("the connection ended after %v, want about %v", d, timeout)
	}
}
