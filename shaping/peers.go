package shaping

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
)

// Heartbeat is what a router publishes on events.RoutersSubject every
// interval, and once with Leaving set when it stops.
type Heartbeat struct {
	V          int    `json:"v"`
	Router     string `json:"router"`
	IntervalMS int64  `json:"interval_ms"`
	Leaving    bool   `json:"leaving,omitempty"`
}

// missedBeats is how many intervals without a heartbeat make a router count
// as gone.
const missedBeats = 3

// Peers announces this router to the others of its region and counts them
// from their heartbeats: every router that published one in the last three
// of its intervals, this one included. With a Limiter, it keeps the
// Limiter's peer count equal to that number.
type Peers struct {
	// Conn is the NATS connection heartbeats go through. Required.
	Conn *nats.Conn
	// Region is the router's region. Required.
	Region string
	// ID names this router among its peers; empty means the host name and
	// a random suffix.
	ID string
	// Interval is the time between two heartbeats; zero means one second.
	Interval time.Duration
	// Limiter, if set, gets the peer count; nil only announces this router
	// (for a router whose peer count is fixed).
	Limiter *Limiter
	// Logger receives peer changes.
	Logger zerolog.Logger
}

// Run announces the router and counts its peers until ctx is done, then
// announces that it leaves, so that the others stop counting it at once.
func (p *Peers) Run(ctx context.Context) error {
	interval := p.Interval
	if interval <= 0 {
		interval = time.Second
	}
	id := p.ID
	if id == "" {
		id = newID()
	}
	subject := events.RoutersSubject(p.Region)
	msgs := make(chan *nats.Msg, 256)
	sub, err := p.Conn.ChanSubscribe(subject, msgs)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	beat := func(leaving bool) {
		data, _ := json.Marshal(Heartbeat{V: 1, Router: id, IntervalMS: interval.Milliseconds(), Leaving: leaving})
		// A failed publish is a missed beat; peers tolerate a few, and
		// nats.go buffers them while it reconnects.
		_ = p.Conn.Publish(subject, data)
	}
	seen := map[string]time.Time{} // router → when it stops counting
	count := func(now time.Time) {
		if !p.Conn.IsConnected() {
			return // nothing can be heard: keep the last count
		}
		for r, until := range seen {
			if now.After(until) {
				delete(seen, r)
			}
		}
		n := max(len(seen), 1)
		if p.Limiter != nil && p.Limiter.Peers() != n {
			p.Limiter.SetPeers(n)
			p.Logger.Info().Int("peers", n).Msg("shaping peers changed: each container's allowance is shared by this many routers")
		}
	}

	beat(false)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			beat(true)
			_ = p.Conn.FlushTimeout(time.Second)
			return nil
		case now := <-tick.C:
			beat(false)
			count(now)
		case m := <-msgs:
			var hb Heartbeat
			if err := json.Unmarshal(m.Data, &hb); err != nil || hb.V != 1 || hb.Router == "" || hb.IntervalMS <= 0 {
				p.Logger.Debug().Str("data", string(m.Data)).Msg("heartbeat ignored: malformed")
				continue
			}
			_, known := seen[hb.Router]
			if hb.Leaving {
				delete(seen, hb.Router)
			} else {
				if !known && hb.Router != id {
					beat(false) // a newcomer learns of this router at once
				}
				seen[hb.Router] = time.Now().Add(missedBeats * time.Duration(hb.IntervalMS) * time.Millisecond)
			}
			count(time.Now())
		}
	}
}

// newID returns the host name with a random suffix, unique among restarts.
func newID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "router"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}
