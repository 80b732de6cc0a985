package shaping_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
	"github.com/sluice-router/sluice/testenv"
)

// every is the heartbeat interval of the routers in the restart test and
// of the heartbeats the tests publish for a router that is no Peers.
const every = 100 * time.Millisecond

// long is the heartbeat interval of the routers in the counting test: so
// long that a router counted, or counted out, well within it can only have
// been by an answer to a newcomer, a goodbye or its expiry, not by a tick.
// The exact timings are tested in explicit time in census_test.go.
const long = 4 * time.Second

// peer runs a Peers loop with its own connection and Limiter until stopped.
type peer struct {
	limiter *shaping.Limiter
	conn    *nats.Conn
	stop    context.CancelFunc
	done    sync.WaitGroup
}

func startPeer(t *testing.T, n *testenv.NATS, id string, interval time.Duration, opts ...nats.Option) *peer {
	t.Helper()
	nc, err := nats.Connect(n.URL(), append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(10 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{limiter: shaping.NewLimiter(shaping.Limits{}), conn: nc, stop: cancel}
	run := &shaping.Peers{Conn: p.conn, Region: testenv.Region, ID: id, Interval: interval, Limiter: p.limiter, Logger: testenv.Logger(t)}
	p.done.Go(func() {
		if err := run.Run(ctx); err != nil {
			t.Errorf("peers %s: %v", id, err)
		}
	})
	t.Cleanup(p.halt)
	return p
}

func (p *peer) halt() { p.stop(); p.done.Wait() }

// waitPeers polls until every limiter counts want peers.
func waitPeers(t *testing.T, want int, ps ...*peer) {
	t.Helper()
	for i, p := range ps {
		testenv.Eventually(t, fmt.Sprintf("router %d of %d counts %d peers", i+1, len(ps), want), func() bool {
			return p.limiter.Peers() == want
		})
	}
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
	a := startPeer(t, n, "a", long)
	// A router counts itself, without waiting for its own beat.
	if got := a.limiter.Peers(); got != 1 {
		t.Errorf("a lone router counts %d peers, want 1", got)
	}
	// nor on NATS echoing its beats back to it.
	b := startPeer(t, n, "b", long, nats.NoEcho())
	waitPeers(t, 2, a, b)

	// A newcomer is counted, and counts the others, at once: they answer
	// its first beat rather than wait for their next tick.
	start := time.Now()
	c := startPeer(t, n, "c", long)
	waitPeers(t, 3, a, b, c)
	if took := time.Since(start); took >= long/2 {
		t.Errorf("a newcomer took %v to be counted, want much less than an interval (%v)", took, long)
	}

	// A router that stops says so: the others count it out at once, not
	// after its missed beats.
	start = time.Now()
	c.halt()
	waitPeers(t, 2, a, b)
	if took := time.Since(start); took >= long/2 {
		t.Errorf("a goodbye took %v to count, want much less than an interval (%v)", took, long)
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

	// A router that dies without a word is counted out after its missed
	// beats (three of its own intervals): not before two, and by its
	// expiry, long before the next tick of the others.
	last := time.Now()
	publish(t, nc, here, shaping.Heartbeat{V: 1, Router: "ghost", IntervalMS: every.Milliseconds()})
	waitPeers(t, 3, a, b)
	waitPeers(t, 2, a, b)
	if gone := time.Since(last); gone < 2*every || gone >= long/2 {
		t.Errorf("a silent router counted out %v after its last beat, want about %v (from 2 intervals, %v, to well before the others' next tick)", gone, 3*every, 2*every)
	}
}

func TestPeersSurviveANATSRestart(t *testing.T) {
	n := testenv.StartNATS(t)
	a := startPeer(t, n, "a", every)
	b := startPeer(t, n, "b", every)
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
	testenv.Eventually(t, "the routers see NATS gone", func() bool {
		return !a.conn.IsConnected() && !b.conn.IsConnected()
	})
	// An outage longer than the missed beats: every deadline passes, as
	// nothing was heard since the routers lost NATS.
	time.Sleep((3 + 1) * every)
	n.Restart(t)
	testenv.Eventually(t, "the routers reconnect to NATS", func() bool {
		return a.conn.IsConnected() && b.conn.IsConnected()
	})
	// Past a count after the reconnection, when a router that forgot the
	// others would count itself alone: every beat a router publishes is
	// followed by a count, so two beats mean one count at least.
	beats := func(p *peer) uint64 { return p.conn.Stats().OutMsgs }
	fromA, fromB := beats(a), beats(b)
	testenv.Eventually(t, "each router counts after the reconnection", func() bool {
		return beats(a) >= fromA+2 && beats(b) >= fromB+2
	})
	stop()
	if low := <-lowest; low != 2 {
		t.Errorf("the count fell to %d across a NATS restart, want it to stay 2", low)
	}
	waitPeers(t, 2, a, b)
}
