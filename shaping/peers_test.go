package shaping_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
	"github.com/sluice-router/sluice/testenv"
)

// peer runs a Peers loop with its own connection and Limiter until stopped.
type peer struct {
	limiter *shaping.Limiter
	stop    context.CancelFunc
	done    sync.WaitGroup
}

func startPeer(t *testing.T, n *testenv.NATS, id string) *peer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{limiter: shaping.NewLimiter(shaping.Limits{}), stop: cancel}
	run := &shaping.Peers{Conn: n.Connect(t), Region: testenv.Region, ID: id, Interval: 50 * time.Millisecond, Limiter: p.limiter, Logger: testenv.Logger(t)}
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
	deadline := time.Now().Add(testenv.Timeout)
	for _, p := range ps {
		for p.limiter.Peers() != want {
			if time.Now().After(deadline) {
				t.Fatalf("a router counts %d peers, want %d", p.limiter.Peers(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestPeersCountRoutersOfTheRegion(t *testing.T) {
	n := testenv.StartNATS(t)
	a := startPeer(t, n, "a")
	waitPeers(t, 1, a)
	b := startPeer(t, n, "b")
	c := startPeer(t, n, "c")
	waitPeers(t, 3, a, b, c)

	// A router that stops says so: the others adjust at once.
	c.halt()
	waitPeers(t, 2, a, b)

	// A heartbeat of another region, or a malformed one, counts for
	// nothing (each would be counted for a minute).
	nc := n.Connect(t)
	here := events.RoutersSubject(testenv.Region)
	for _, m := range []struct{ subject, data string }{
		{events.RoutersSubject("elsewhere"), `{"v":1,"router":"x","interval_ms":60000}`},
		{here, `not json`},
		{here, `{"v":2,"router":"y","interval_ms":60000}`},
		{here, `{"v":1,"router":"","interval_ms":60000}`},
	} {
		if err := nc.Publish(m.subject, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
	}
	// A router that vanishes without a word is dropped after three missed
	// beats.
	if err := nc.Publish(here, []byte(`{"v":1,"router":"ghost","interval_ms":50}`)); err != nil {
		t.Fatal(err)
	}
	waitPeers(t, 3, a, b)
	waitPeers(t, 2, a, b)
}
