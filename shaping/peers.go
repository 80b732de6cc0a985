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

// MaxInterval is the longest heartbeat interval a router is believed: a
// heartbeat announcing a longer one counts as announcing MaxInterval, so
// that a wrong or hostile peer is counted for at most missedBeats ×
// MaxInterval after its last word.
const MaxInterval = 10 * time.Second

// interval returns the time hb announces until its router's next beat,
// at most MaxInterval, and false if hb is malformed.
func (hb Heartbeat) interval() (time.Duration, bool) {
	if hb.V != 1 || hb.Router == "" || hb.IntervalMS <= 0 {
		return 0, false
	}
	if hb.IntervalMS >= MaxInterval.Milliseconds() {
		return MaxInterval, true
	}
	return time.Duration(hb.IntervalMS) * time.Millisecond, true
}

// Peers announces this router to the others of its region and counts them
// from their heartbeats: this router, and every other that published one in
// the last three of its intervals. With a Limiter, it keeps the Limiter's
// peer count equal to that number.
type Peers struct {
	// Conn is the NATS connection heartbeats go through. Required.
	Conn *nats.Conn
	// Region is the router's region. Required.
	Region string
	// ID names this router among its peers; empty means the host name and
	// a random suffix.
	ID string
	// Interval is the time between two heartbeats; zero means one second,
	// and more than MaxInterval means MaxInterval.
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
	interval = min(interval, MaxInterval)
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
	c := newCensus(id)
	// expiry fires when the next router is due to be counted out.
	expiry := time.NewTimer(interval)
	defer expiry.Stop()
	reconnects := p.Conn.Stats().Reconnects
	cutOff := false
	// awake reports whether NATS is connected. After an outage, during
	// which nobody could be heard, it first gives every router its missed
	// beats again from now rather than count them all out.
	awake := func(now time.Time) bool {
		if !p.Conn.IsConnected() {
			cutOff = true
			return false
		}
		if r := p.Conn.Stats().Reconnects; cutOff || r != reconnects {
			cutOff, reconnects = false, r
			c.resume(now)
		}
		return true
	}
	count := func(now time.Time) {
		if !awake(now) {
			return // nothing can be heard: keep the last count
		}
		n := c.count(now)
		if next, ok := c.next(); ok {
			expiry.Reset(next.Sub(now))
		}
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
		case <-tick.C:
			beat(false)
			count(time.Now())
		case <-expiry.C:
			count(time.Now())
		case m := <-msgs:
			var hb Heartbeat
			now := time.Now()
			awake(now) // after an outage, resume before this beat counts
			newcomer, ok := false, json.Unmarshal(m.Data, &hb) == nil
			if ok {
				newcomer, ok = c.heard(hb, now)
			}
			if !ok {
				p.Logger.Debug().Str("data", string(m.Data)).Msg("heartbeat ignored: malformed")
				continue
			}
			if newcomer {
				beat(false) // a newcomer learns of this router at once
			}
			count(now)
		}
	}
}

// census is the count of a router's peers, in explicit time: this router,
// and every other heard from in the last missedBeats of its intervals.
type census struct {
	self   string
	others map[string]peer
}

// peer is another router as last heard from.
type peer struct {
	interval time.Duration
	until    time.Time // when it stops counting
}

func newCensus(self string) *census {
	return &census{self: self, others: map[string]peer{}}
}

// heard records hb, received at now. It reports whether hb comes from a
// router not counted until then, and false for ok if hb is malformed.
// This router's own heartbeats, echoed by NATS, change nothing.
func (c *census) heard(hb Heartbeat, now time.Time) (newcomer, ok bool) {
	interval, ok := hb.interval()
	if !ok {
		return false, false
	}
	if hb.Router == c.self {
		return false, true
	}
	_, known := c.others[hb.Router]
	if hb.Leaving {
		delete(c.others, hb.Router)
		return false, true
	}
	c.others[hb.Router] = peer{interval: interval, until: now.Add(missedBeats * interval)}
	return !known, true
}

// resume gives every router missedBeats intervals from now, for a router
// that could hear no one until now.
func (c *census) resume(now time.Time) {
	for id, p := range c.others {
		p.until = now.Add(missedBeats * p.interval)
		c.others[id] = p
	}
}

// count counts out the routers silent until their deadline and returns the
// number left, this router included.
func (c *census) count(now time.Time) int {
	for id, p := range c.others {
		if !now.Before(p.until) {
			delete(c.others, id)
		}
	}
	return 1 + len(c.others)
}

// next returns the earliest deadline, false if no other router counts.
func (c *census) next() (time.Time, bool) {
	var first time.Time
	for _, p := range c.others {
		if first.IsZero() || p.until.Before(first) {
			first = p.until
		}
	}
	return first, !first.IsZero()
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
