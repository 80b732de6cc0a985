package shaping_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
	"github.com/sluice-router/sluice/testenv"
)

// every is the heartbeat interval of the routers in these tests.
const every = 100 * time.Millisecond

// peer runs a Peers loop with its own connection and Limiter until stopped.
type peer struct {
	limiter *shaping.Limiter
	conn    *nats.Conn
	stop    context.CancelFunc
	done    sync.WaitGroup
}

func startPeer(t *testing.T, n *testenv.NATS, id string, opts ...nats.Option) *peer {
	t.Helper()
	nc, err := nats.Connect(n.URL(), append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(10 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{limiter: shaping.NewLimiter(shaping.Limits{}), conn: nc, stop: cancel}
	run := &shaping.Peers{Conn: p.conn, Region: testenv.Region, ID: id, Interval: every, Limiter: p.limiter, Logger: testenv.Logger(t)}
	p.done.Go(func() {
		if err := run.Run(ctx); err != nil {
			t.Errorf("peers %s: %v", id, err)
		}
	})
	t.Cleanup(p.halt)
	return p
}

func (p *peer) halt() { p.stop(); p.done.Wait() }

// waitPeers polls until every limiter counts want peers, and returns how
// long that took.
func waitPeers(t *testing.T, want int, ps ...*peer) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(testenv.Timeout)
	for _, p := range ps {
		for p.limiter.Peers() != want {
			if time.Now().After(deadline) {
				t.Fatalf("a router counts %d peers, want %d", p.limiter.Peers(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return time.Since(start)
}

// publish sends a heartbeat as another router would.
func publish(t *testing.T, nc *nats.Conn, subject string, hb shaping.Heartbeat) {
	t.Helper()
	data, err := json.Marshal(hb)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subject, data); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestPeersCountRoutersOfTheRegion(t *testing.T) {
	n := testenv.StartNATS(t)
	a := startPeer(t, n, "a")
	// A router counts itself, without waiting for its own beat.
	if got := a.limiter.Peers(); got != 1 {
		t.Errorf("a lone router counts %d peers, want 1", got)
	}
	// nor on NATS echoing its beats back to it.
	b := startPeer(t, n, "b", nats.NoEcho())
	waitPeers(t, 2, a, b)

	// A newcomer is counted, and counts the others, within an interval:
	// they answer its first beat.
	start := time.Now()
	c := startPeer(t, n, "c")
	waitPeers(t, 3, a, b, c)
	if took := time.Since(start); took >= every {
		t.Errorf("a newcomer took %v to be counted, want less than an interval (%v)", took, every)
	}

	// A router that stops says so: the others count it out at once.
	start = time.Now()
	c.halt()
	waitPeers(t, 2, a, b)
	if took := time.Since(start); took >= every {
		t.Errorf("a goodbye took %v to count, want less than an interval (%v)", took, every)
	}

	// A heartbeat of another region, or a malformed one, counts for
	// nothing (each would be counted for a while).
	nc := n.Connect(t)
	here := events.RoutersSubject(testenv.Region)
	for _, m := range []struct{ subject, data string }{
		{events.RoutersSubject("elsewhere"), `{"v":1,"router":"x","interval_ms":60000}`},
		{here, `not json`},
		{here, `{"v":2,"router":"y","interval_ms":60000}`},
		{here, `{"v":1,"router":"","interval_ms":60000}`},
		{here, `{"v":1,"router":"z","interval_ms":0}`},
		{here, `{"v":1,"router":"z","interval_ms":-1}`},
	} {
		if err := nc.Publish(m.subject, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
	}

	// A router that dies without a word is counted out after three
	// missed beats: not before two, not after four.
	for range 3 {
		publish(t, nc, here, shaping.Heartbeat{V: 1, Router: "ghost", IntervalMS: every.Milliseconds()})
		waitPeers(t, 3, a, b)
		time.Sleep(every) // the ghost's life, at its pace
	}
	last := time.Now()
	publish(t, nc, here, shaping.Heartbeat{V: 1, Router: "ghost", IntervalMS: every.Milliseconds()})
	waitPeers(t, 3, a, b)
	waitPeers(t, 2, a, b)
	if gone := time.Since(last); gone < 2*every || gone > 4*every {
		t.Errorf("a silent router counted out %v after its last beat, want about %v (2 to 4 intervals)", gone, 3*every)
	}
}

func TestPeersSurviveANATSRestart(t *testing.T) {
	n := testenv.StartNATS(t)
	a := startPeer(t, n, "a")
	b := startPeer(t, n, "b")
	waitPeers(t, 2, a, b)

	// Watch the counts through the outage and the reconnection.
	lowest := make(chan int, 1)
	watching, stop := context.WithCancel(context.Background())
	go func() {
		low := 2
		for watching.Err() == nil {
			low = min(low, a.limiter.Peers(), b.limiter.Peers())
			time.Sleep(100 * time.Microsecond)
		}
		lowest <- low
	}()

	n.Stop()
	// An outage longer than the missed beats: every deadline passes.
	time.Sleep(5 * every)
	n.Restart(t)
	deadline := time.Now().Add(testenv.Timeout)
	for !a.conn.IsConnected() || !b.conn.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("the routers did not reconnect to NATS")
		}
		time.Sleep(time.Millisecond)
	}
	// Past the next beats, when a router that forgot the others would
	// count itself alone.
	time.Sleep(2 * every)
	stop()
	if low := <-lowest; low != 2 {
		t.Errorf("the count fell to %d across a NATS restart, want it to stay 2", low)
	}
	waitPeers(t, 2, a, b)
}
