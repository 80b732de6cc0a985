package routing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/shaping"
	"github.com/sluice-router/sluice/testenv"
)

// Transfers of 2 MB through a router that allows each container 1 MB/s
// with a 0.5 MB burst: the burst goes at once, the rest at 1 MB/s.
const (
	shapedRate  = 1_000_000
	shapedBurst = 500_000
	shapedSize  = 2_000_000
	predicted   = time.Duration(shapedSize-shapedBurst) * time.Second / shapedRate
)

func within10(t *testing.T, what string, got time.Duration) {
	t.Helper()
	if math.Abs(float64(got-predicted)) > 0.1*float64(predicted) {
		t.Errorf("%s took %v, the bucket predicts %v (±10%%)", what, got, predicted)
	}
}

func TestShapingThroughTheProxy(t *testing.T) {
	n := testenv.StartNATS(t)
	logs := &testenv.Logs{}
	r := testenv.StartRouterConfig(t, n.Connect(t), routing.Config{
		Region:  region,
		Shaping: shaping.Limits{Rate: shapedRate, Burst: shapedBurst},
		Logger:  zerolog.New(logs),
	})
	r.WaitReady(t)
	pub := n.Publisher(t, region)
	// One app per transfer, so that each has a container of its own, with
	// a full bucket.
	for _, app := range []string{"down", "up", "ws", "wsdown", "wsup"} {
		c := testenv.StartContainer(t, app, app+"-1")
		must(t, pub.Domains(ctx(t), app, 1, []string{app + ".example.com"}))
		must(t, pub.Deploy(ctx(t), app, 2, testenv.Containers(c)))
		r.WaitRoutes(t, app+" routed", testenv.Routed(app+".example.com", app, app+"-1"))
	}

	t.Run("transfers", func(t *testing.T) {
		// All at once, each timed alone: concurrent subtests that are not
		// parallel ones, which -parallel (GOMAXPROCS) would queue.
		var wg sync.WaitGroup
		defer wg.Wait()
		run := func(name string, f func(t *testing.T)) { wg.Go(func() { t.Run(name, f) }) }
		run("download", func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, r.URL+"/bytes/"+itoa(shapedSize), nil)
			req.Host = "down.example.com"
			start := time.Now()
			resp, err := http.DefaultClient.Do(req)
			must(t, err)
			got, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || got != shapedSize {
				t.Fatalf("read %d bytes (%v), want %d", got, err, shapedSize)
			}
			within10(t, "a 2 MB download", time.Since(start))
		})
		run("upload", func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, r.URL+"/", bytes.NewReader(make([]byte, shapedSize)))
			req.Host = "up.example.com"
			start := time.Now()
			resp, reply := testenv.Do(t, req)
			if resp.StatusCode != http.StatusOK || reply.BodyBytes != shapedSize {
				t.Fatalf("status %d, the container read %d bytes; want 200, %d", resp.StatusCode, reply.BodyBytes, shapedSize)
			}
			within10(t, "a 2 MB upload", time.Since(start))
		})
		run("websocket", func(t *testing.T) {
			// The container echoes: 2 MB go up and come back down, each way
			// paced by its own bucket, at the same time.
			ws, _, err := websocket.Dial(ctx(t), "ws"+strings.TrimPrefix(r.URL, "http")+"/ws/echo", &websocket.DialOptions{Host: "ws.example.com"})
			must(t, err)
			defer ws.CloseNow()
			ws.SetReadLimit(-1)
			const msg = 50_000
			start := time.Now()
			errs := make(chan error, 1)
			go func() {
				for range shapedSize / msg {
					if err := ws.Write(ctx(t), websocket.MessageBinary, make([]byte, msg)); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
			received := 0
			for received < shapedSize {
				_, data, err := ws.Read(ctx(t))
				must(t, err)
				received += len(data)
			}
			must(t, <-errs)
			within10(t, "a 2 MB WebSocket echo", time.Since(start))
		})
		// Each direction of a WebSocket on its own, so that neither can
		// hide behind the other as in an echo.
		run("websocket download", func(t *testing.T) {
			ws := dialWS(t, r, "wsdown.example.com", "/ws/push/"+itoa(shapedSize))
			start := time.Now()
			received := 0
			for {
				_, data, err := ws.Read(ctx(t))
				if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
					break
				}
				must(t, err)
				received += len(data)
			}
			if received != shapedSize {
				t.Fatalf("received %d bytes, want %d", received, shapedSize)
			}
			within10(t, "a 2 MB WebSocket download", time.Since(start))
		})
		run("websocket upload", func(t *testing.T) {
			ws := dialWS(t, r, "wsup.example.com", "/ws/sink/"+itoa(shapedSize))
			start := time.Now()
			const msg = 50_000
			for range shapedSize / msg {
				must(t, ws.Write(ctx(t), websocket.MessageBinary, make([]byte, msg)))
			}
			// The container says how much it read once it has it all.
			_, data, err := ws.Read(ctx(t))
			must(t, err)
			if string(data) != itoa(shapedSize) {
				t.Fatalf("the container read %s bytes, want %d", data, shapedSize)
			}
			within10(t, "a 2 MB WebSocket upload", time.Since(start))
		})

	})

	// What the buckets carried and how long they held traffic back shows in
	// /routes and in the access log.
	resp, err := http.Get(r.AdminURL + "/routes")
	must(t, err)
	var routes struct {
		Routes []struct {
			Name       string `json:"name"`
			Containers []struct {
				Shaping shaping.Stats `json:"shaping"`
			} `json:"containers"`
		} `json:"routes"`
	}
	must(t, json.NewDecoder(resp.Body).Decode(&routes))
	resp.Body.Close()
	stats := map[string]shaping.Stats{}
	for _, a := range routes.Routes {
		stats[a.Name] = a.Containers[0].Shaping
	}
	// Time spent reading and writing refills the bucket instead of
	// waiting, more so on a busy machine: half the predicted wait is
	// enough to tell shaped from not (no wait at all).
	minWait := 0.5 * float64(predicted/time.Millisecond)
	for app, flows := range map[string][]shaping.FlowStats{
		"down": {stats["down"].Download},
		"up":   {stats["up"].Upload},
		// An echo: what comes down waits on what goes up, so the wait
		// falls on either side.
		"ws":     {stats["ws"].Download, stats["ws"].Upload},
		"wsdown": {stats["wsdown"].Download},
		"wsup":   {stats["wsup"].Upload},
	} {
		st := stats[app]
		if st.Rate != shapedRate || st.Burst != shapedBurst || st.Peers != 1 {
			t.Errorf("%s: /routes shows rate %d, burst %d, %d peers; want %d, %d, 1", app, st.Rate, st.Burst, st.Peers, shapedRate, shapedBurst)
		}
		waited := 0.0
		for _, f := range flows {
			waited += f.WaitedMS
			if f.Bytes < shapedSize {
				t.Errorf("%s: /routes shows %d bytes carried, want ≥ %d", app, f.Bytes, shapedSize)
			}
		}
		if waited < minWait {
			t.Errorf("%s: /routes shows %.0f ms waited, want ≥ %.0f", app, waited, minWait)
		}
	}
	if up := stats["down"].Upload; up.Bytes != 0 || up.WaitedMS != 0 {
		t.Errorf("down: the upload side carried %d bytes, waited %.0f ms; want nothing", up.Bytes, up.WaitedMS)
	}
	// The router writes the access-log line after the client has the last
	// byte: wait for it.
	testenv.Eventually(t, fmt.Sprintf("the access log says throttled_ms ≥ %.0f for down and up", minWait), func() bool {
		throttled := throttledByApp(logs.String())
		return throttled["down"] >= minWait && throttled["up"] >= minWait
	})
}

// dialWS opens a WebSocket to path on host through r, closed at the end
// of the test.
func dialWS(t *testing.T, r *testenv.Router, host, path string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(ctx(t), "ws"+strings.TrimPrefix(r.URL, "http")+path, &websocket.DialOptions{Host: host})
	must(t, err)
	t.Cleanup(func() { ws.CloseNow() })
	ws.SetReadLimit(-1)
	return ws
}

// throttledByApp sums the throttled_ms of the access-log lines by app.
func throttledByApp(log string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var l struct {
			Message   string  `json:"message"`
			App       string  `json:"app"`
			Throttled float64 `json:"throttled_ms"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Message == "request" {
			out[l.App] += l.Throttled
		}
	}
	return out
}

// shapingPeers returns the peer count r's /readyz reports.
func shapingPeers(t *testing.T, r *testenv.Router) int {
	t.Helper()
	resp, err := http.Get(r.AdminURL + "/readyz")
	must(t, err)
	defer resp.Body.Close()
	var st struct {
		Shaping struct {
			Peers int `json:"peers"`
		} `json:"shaping"`
	}
	must(t, json.NewDecoder(resp.Body).Decode(&st))
	return st.Shaping.Peers
}

func waitShapingPeers(t *testing.T, want int, rs ...*testenv.Router) {
	t.Helper()
	for _, r := range rs {
		testenv.Eventually(t, fmt.Sprintf("the router at %s counts %d shaping peers", r.URL, want), func() bool {
			return shapingPeers(t, r) == want
		})
	}
}

func TestRoutersOfARegionShareTheAllowance(t *testing.T) {
	n := testenv.StartNATS(t)
	a := testenv.StartRouter(t, n.Connect(t), region)
	b := testenv.StartRouter(t, n.Connect(t), region)
	other := testenv.StartRouter(t, n.Connect(t), "elsewhere")
	waitShapingPeers(t, 2, a, b)
	waitShapingPeers(t, 1, other)

	fixed := testenv.StartRouterConfig(t, n.Connect(t), routing.Config{Region: region, ShapingPeers: 5, Logger: testenv.Logger(t)})
	// A router with a fixed count still announces itself.
	waitShapingPeers(t, 3, a, b)
	waitShapingPeers(t, 5, fixed)

	b.Stop(t)
	fixed.Stop(t)
	waitShapingPeers(t, 1, a)
}

// countingReader is an endless body of zeros that counts what the client
// has taken from it to send.
type countingReader struct{ n atomic.Int64 }

func (r *countingReader) Read(p []byte) (int, error) {
	clear(p)
	r.n.Add(int64(len(p)))
	return len(p), nil
}

func TestShapingHoldsTheSenderBack(t *testing.T) {
	// The router paces an upload by reading no faster than the bucket
	// allows: the client can get ahead of what the container has read only
	// by what the sockets on the way hold (a few MB on loopback), never by
	// the whole body, which a router that buffered would take at once.
	const (
		rate     = 1_000_000
		burst    = 64 << 10
		size     = 48_000_000
		sockets  = 12_000_000 // generous: about 5 MB on Linux loopback
		watchFor = time.Second
	)
	n := testenv.StartNATS(t)
	r := testenv.StartRouterConfig(t, n.Connect(t), routing.Config{Region: region, Shaping: shaping.Limits{Rate: rate, Burst: burst}, Logger: testenv.Logger(t)})
	r.WaitReady(t)
	pub := n.Publisher(t, region)
	c := testenv.StartContainer(t, "big", "big-1")
	must(t, pub.Domains(ctx(t), "big", 1, []string{"big.example.com"}))
	must(t, pub.Deploy(ctx(t), "big", 2, testenv.Containers(c)))
	r.WaitRoutes(t, "big routed", testenv.Routed("big.example.com", "big", "big-1"))

	body := &countingReader{}
	upload, cancel := context.WithCancel(ctx(t))
	req, _ := http.NewRequestWithContext(upload, http.MethodPost, r.URL+"/", io.LimitReader(body, size))
	req.Host = "big.example.com"
	req.ContentLength = size
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	defer func() { cancel(); <-done }()

	start := time.Now()
	for time.Since(start) < watchFor {
		time.Sleep(50 * time.Millisecond)
		sent, read := body.n.Load(), c.BodyBytes()
		if lead := sent - read; lead > sockets {
			t.Fatalf("after %v the client has sent %d bytes, the container read %d: the router holds %d, want at most %d", time.Since(start), sent, read, lead, sockets)
		}
		if allowed := burst + int64(time.Since(start).Seconds()*rate) + 32<<10; read > allowed {
			t.Fatalf("after %v the container read %d bytes, more than the %d the bucket allows", time.Since(start), read, allowed)
		}
	}
	if read := c.BodyBytes(); read < burst+rate*int64(watchFor/time.Second)*8/10 {
		t.Errorf("the container read %d bytes in %v, want about %d", read, watchFor, burst+rate)
	}
}

func TestShapingTLSPassthrough(t *testing.T) {
	w := newWorld(t, routing.Config{Shaping: shaping.Limits{Rate: shapedRate, Burst: shapedBurst}})
	ca := testenv.NewCA(t)
	chain, key := ca.Issue(t, testenv.CertOptions{}, "secure.example.com")
	c := testenv.StartTLSContainer(t, "secure", "t1", "127.0.0.1:0", chain, key)
	w.deploy(t, "secure", events.AppOptions{TLSPassthrough: true}, c)

	// The container's TLS on top adds a little: a certificate, record
	// headers; well within the 10%.
	client := httpsClient(w.r, ca)
	start := time.Now()
	resp, err := client.Get("https://secure.example.com/bytes/" + itoa(shapedSize))
	must(t, err)
	got, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || got != shapedSize {
		t.Fatalf("read %d bytes (%v), want %d", got, err, shapedSize)
	}
	within10(t, "a 2 MB download through TLS passthrough", time.Since(start))
	client.CloseIdleConnections()

	// Every byte the client sent is charged as upload, the ClientHello the
	// router read to find the server name included.
	line := w.logs.WaitLine(t, "connection", map[string]string{"tls_passthrough": "true"})
	sent, _ := line["bytes_in"].(float64)
	if sent == 0 {
		t.Fatalf("the relayed connection's log line counts no byte from the client: %v", line)
	}
	app, _ := w.r.Table().Snapshot().App("secure")
	if up := app.Containers[0].Bucket().Stats().Upload.Bytes; up != int64(sent) {
		t.Errorf("the upload bucket was charged %d bytes, the client sent %.0f", up, sent)
	}
}
