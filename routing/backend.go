package routing

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
)

// Container is one container of an App, with what this router knows of it
// beyond the events: its bandwidth bucket, its requests in flight, and
// whether it is quarantined. The route table carries that state over, by
// container id, across events that keep the container.
type Container struct {
	events.Container
	b *backend
}

// backend is the router's own state of one container.
type backend struct {
	bucket *shaping.Bucket // nil when shaping is off
	sticky string          // the sticky-session cookie value naming it
	// busy counts the requests sent to the container that it has not
	// started to answer: the admission cap bounds it. active counts the
	// requests and streams open on it, answered or not: least-connections
	// balances on it.
	busy, active atomic.Int64
	// down is set while the container is quarantined: a connection to it
	// failed, and it has not answered a probe since.
	down atomic.Bool
	// retired is set when the container leaves its app's container set.
	retired atomic.Bool
}

func newBackend(app, id string, bucket *shaping.Bucket) *backend {
	sum := sha256.Sum256([]byte(app + "/" + id))
	return &backend{bucket: bucket, sticky: hex.EncodeToString(sum[:8])}
}

// Bucket returns the container's bandwidth bucket, nil when shaping is off.
func (c Container) Bucket() *shaping.Bucket { return c.b.bucket }

// Inflight returns the number of requests and streams this router has open
// on the container.
func (c Container) Inflight() int64 { return c.b.active.Load() }

// Waiting returns the number of requests this router has sent to the
// container that it has not started to answer.
func (c Container) Waiting() int64 { return c.b.busy.Load() }

// Quarantined reports whether this router keeps new requests away from the
// container because a connection to it failed.
func (c Container) Quarantined() bool { return c.b.down.Load() }

// MarshalJSON writes the container's id and address, its requests in
// flight, whether it is quarantined, and its shaping allowance and counters
// when shaping is on.
func (c Container) MarshalJSON() ([]byte, error) {
	v := struct {
		events.Container
		Inflight    int64          `json:"inflight"`
		Waiting     int64          `json:"waiting"`
		Quarantined bool           `json:"quarantined,omitempty"`
		Shaping     *shaping.Stats `json:"shaping,omitempty"`
	}{Container: c.Container, Inflight: c.Inflight(), Waiting: c.Waiting(), Quarantined: c.Quarantined()}
	if c.b.bucket != nil {
		st := c.b.bucket.Stats()
		v.Shaping = &st
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads what MarshalJSON writes, keeping the id and address.
func (c *Container) UnmarshalJSON(data []byte) error {
	c.b = &backend{}
	return json.Unmarshal(data, &c.Container)
}

// acquire takes one of the container's request slots if fewer than limit
// are taken (limit <= 0: no limit). The request counts as busy until
// answered, and active until released.
func (b *backend) acquire(limit int64) bool {
	for {
		n := b.busy.Load()
		if limit > 0 && n >= limit {
			return false
		}
		if b.busy.CompareAndSwap(n, n+1) {
			b.active.Add(1)
			return true
		}
	}
}

// pickResult says why pick found no container.
type pickResult int

const (
	picked   pickResult = iota
	allBusy             // every candidate has limit requests in flight
	noneLeft            // no container left to try
)

// pick chooses a container for a request and takes one of its slots. It
// skips the containers already tried, prefers the one named by the sticky
// cookie value, then follows the app's balancing. Quarantined containers
// are used only when no other is left, in case they are back before their
// next probe.
func (a *App) pick(sticky string, limit int64, tried []*backend) (Container, pickResult) {
	candidate := func(c Container, allowDown bool) bool {
		for _, t := range tried {
			if t == c.b {
				return false
			}
		}
		return allowDown || !c.b.down.Load()
	}
	for _, allowDown := range []bool{false, true} {
		busy := false
		if sticky != "" {
			for _, c := range a.Containers {
				if c.b.sticky == sticky && candidate(c, allowDown) {
					if c.b.acquire(limit) {
						return c, picked
					}
					busy = true
				}
			}
		}
		if a.Options.Balance == events.BalanceLeastConn {
			for {
				best := -1
				for i, c := range a.Containers {
					if candidate(c, allowDown) && (limit <= 0 || c.b.busy.Load() < limit) &&
						(best < 0 || c.b.active.Load() < a.Containers[best].b.active.Load()) {
						best = i
					}
				}
				if best < 0 {
					// No candidate has a free slot: busy if any
					// candidate exists at all.
					busy = slices.ContainsFunc(a.Containers, func(c Container) bool { return candidate(c, allowDown) })
					break
				}
				if c := a.Containers[best]; c.b.acquire(limit) {
					return c, picked
				}
			}
		} else {
			n := uint64(len(a.Containers))
			start := a.ref.next.Add(1) - 1
			for i := range n {
				c := a.Containers[(start+i)%n]
				if !candidate(c, allowDown) {
					continue
				}
				if c.b.acquire(limit) {
					return c, picked
				}
				busy = true
			}
		}
		if busy {
			return Container{}, allBusy
		}
	}
	return Container{}, noneLeft
}

// Queued returns the number of requests waiting for a free container of
// the app on this router.
func (a *App) Queued() int64 { return a.ref.queue.n.Load() }

// answered gives back the slot a request took on c once c has started to
// answer it, and lets a request waiting for one of the app's containers try
// again.
func (a *App) answered(c Container) {
	c.b.busy.Add(-1)
	a.ref.queue.wake()
}

// done ends a request picked on c: it no longer counts as active.
func (a *App) done(c Container) { c.b.active.Add(-1) }

// waitQueue holds the requests waiting for a slot on one of an app's
// containers.
type waitQueue struct {
	n       atomic.Int64 // len(waiters), read without the lock
	mu      sync.Mutex
	waiters []chan struct{}
}

// join adds a waiter unless limit are waiting already. The channel is
// closed when a slot is released.
func (q *waitQueue) join(limit int) (chan struct{}, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiters) >= limit {
		return nil, false
	}
	ch := make(chan struct{})
	q.waiters = append(q.waiters, ch)
	q.n.Store(int64(len(q.waiters)))
	return ch, true
}

// leave removes ch if it is still waiting. If ch was woken meanwhile, the
// wake passes to the next waiter: the slot it announced is not lost.
func (q *waitQueue) leave(ch chan struct{}) {
	q.mu.Lock()
	i := slices.Index(q.waiters, ch)
	if i >= 0 {
		q.waiters = slices.Delete(q.waiters, i, i+1)
		q.n.Store(int64(len(q.waiters)))
	}
	q.mu.Unlock()
	if i < 0 {
		q.wake()
	}
}

// wake lets the first waiter try again.
func (q *waitQueue) wake() {
	if q.n.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiters) > 0 {
		close(q.waiters[0])
		q.waiters = q.waiters[1:]
		q.n.Store(int64(len(q.waiters)))
	}
}

// wakeAll lets every waiter try again: the app's containers changed.
func (q *waitQueue) wakeAll() {
	if q.n.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, w := range q.waiters {
		close(w)
	}
	q.waiters = nil
	q.n.Store(0)
}
