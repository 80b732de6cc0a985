package shaping

import (
	"testing"
	"time"
)

// beat returns the heartbeat of router announcing interval.
func beat(router string, interval time.Duration) Heartbeat {
	return Heartbeat{V: 1, Router: router, IntervalMS: interval.Milliseconds()}
}

func TestCensus(t *testing.T) {
	const every = time.Second
	t0 := time.Unix(1_000_000, 0)
	at := func(intervals float64) time.Time { return t0.Add(time.Duration(intervals * float64(every))) }
	check := func(t *testing.T, c *census, now time.Time, want int) {
		t.Helper()
		if got := c.count(now); got != want {
			t.Errorf("at %v: count %d, want %d", now.Sub(t0), got, want)
		}
	}

	t.Run("this router counts without hearing itself", func(t *testing.T) {
		c := newCensus("me")
		check(t, c, t0, 1)
		if newcomer, ok := c.heard(beat("me", every), t0); newcomer || !ok {
			t.Errorf("its own echo: newcomer %v, ok %v; want false, true", newcomer, ok)
		}
		check(t, c, at(10), 1)
	})

	t.Run("a newcomer counts at its first beat", func(t *testing.T) {
		c := newCensus("me")
		if newcomer, _ := c.heard(beat("b", every), t0); !newcomer {
			t.Error("the first beat of b is not a newcomer's")
		}
		check(t, c, t0, 2)
		if newcomer, _ := c.heard(beat("b", every), at(1)); newcomer {
			t.Error("the second beat of b is a newcomer's")
		}
	})

	t.Run("a goodbye counts out at once", func(t *testing.T) {
		c := newCensus("me")
		c.heard(beat("b", every), t0)
		bye := beat("b", every)
		bye.Leaving = true
		c.heard(bye, at(0.1))
		check(t, c, at(0.1), 1)
	})

	t.Run("a silent router counts out after its missed beats", func(t *testing.T) {
		c := newCensus("me")
		c.heard(beat("b", every), t0)
		check(t, c, at(2.99), 2)
		if next, ok := c.next(); !ok || !next.Equal(at(3)) {
			t.Errorf("next deadline %v, %v; want %v", next.Sub(t0), ok, at(3).Sub(t0))
		}
		check(t, c, at(3), 1)
		if _, ok := c.next(); ok {
			t.Error("a deadline with nobody to count out")
		}
	})

	t.Run("a router beating on time stays counted", func(t *testing.T) {
		c := newCensus("me")
		for i := range 10 {
			c.heard(beat("b", every), at(float64(i)))
			check(t, c, at(float64(i)+2.99), 2)
		}
		check(t, c, at(12), 1)
	})

	t.Run("each router by its own interval", func(t *testing.T) {
		c := newCensus("me")
		c.heard(beat("slow", 2*every), t0)
		c.heard(beat("fast", every/2), t0)
		check(t, c, at(1.4), 3)
		check(t, c, at(1.5), 2)
		check(t, c, at(5.9), 2)
		check(t, c, at(6), 1)
	})

	t.Run("an outage does not count everyone out", func(t *testing.T) {
		c := newCensus("me")
		c.heard(beat("b", every), t0)
		c.heard(beat("c", every), t0)
		// Cut off from NATS from 0.5 to 60: every deadline has passed.
		c.resume(at(60))
		check(t, c, at(60), 3)
		check(t, c, at(62.9), 3)
		// b speaks again; c died meanwhile.
		c.heard(beat("b", every), at(61))
		check(t, c, at(63), 2)
	})

	t.Run("intervals are bounded", func(t *testing.T) {
		c := newCensus("me")
		for _, hb := range []Heartbeat{
			{V: 1, Router: "zero", IntervalMS: 0},
			{V: 1, Router: "negative", IntervalMS: -5},
			{V: 2, Router: "future", IntervalMS: 1000},
			{V: 1, Router: "", IntervalMS: 1000},
		} {
			if _, ok := c.heard(hb, t0); ok {
				t.Errorf("%+v heard, want it refused", hb)
			}
		}
		check(t, c, t0, 1)
		// Hours, or so long that the deadline would overflow: MaxInterval.
		c.heard(Heartbeat{V: 1, Router: "hours", IntervalMS: int64(3 * time.Hour / time.Millisecond)}, t0)
		c.heard(Heartbeat{V: 1, Router: "overflow", IntervalMS: 1 << 62}, t0)
		check(t, c, t0.Add(missedBeats*MaxInterval-time.Millisecond), 3)
		check(t, c, t0.Add(missedBeats*MaxInterval), 1)
		// Just under MaxInterval is believed as announced.
		c = newCensus("me")
		under := MaxInterval - time.Millisecond
		c.heard(beat("under", under), t0)
		check(t, c, t0.Add(missedBeats*under-time.Millisecond), 2)
		check(t, c, t0.Add(missedBeats*under), 1)
	})
}
