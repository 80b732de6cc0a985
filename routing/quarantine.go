package routing

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// quarantine keeps the containers a connection failed to away from new
// requests, and probes each with a TCP connection, with exponential
// backoff, until it answers. It is this router's own view: other routers
// find out for themselves.
type quarantine struct {
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	timeout time.Duration // bound on one probe
	first   time.Duration // the first probe comes that long after the failure
	longest time.Duration // the backoff stops growing there
	log     zerolog.Logger
	mu      sync.Mutex
	probes  map[*backend]*probe
	probing sync.WaitGroup
}

type probe struct {
	app, id, addr string
	failures      int
	next          time.Time
	running       bool
}

func newQuarantine(dial func(ctx context.Context, network, addr string) (net.Conn, error), timeout, first, longest time.Duration, log zerolog.Logger) *quarantine {
	return &quarantine{dial: dial, timeout: timeout, first: first, longest: longest, log: log, probes: map[*backend]*probe{}}
}

// add quarantines container c of app, unless it is already.
func (q *quarantine) add(app string, c Container, cause error) {
	if !c.b.down.CompareAndSwap(false, true) {
		return
	}
	q.mu.Lock()
	q.probes[c.b] = &probe{app: app, id: c.ID, addr: c.Address, next: time.Now().Add(q.first)}
	q.mu.Unlock()
	q.log.Warn().Str("app", app).Str("container", c.ID).Str("address", c.Address).AnErr("cause", cause).
		Msg("container quarantined: a connection to it failed; probing it until it answers")
}

// Run probes the quarantined containers until ctx is done, and waits for
// the probes under way.
func (q *quarantine) Run(ctx context.Context) error {
	tick := time.NewTicker(max(q.first/2, time.Millisecond))
	defer tick.Stop()
	defer q.probing.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			q.startDue(ctx, now)
		}
	}
}

func (q *quarantine) startDue(ctx context.Context, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for b, p := range q.probes {
		switch {
		case b.retired.Load():
			delete(q.probes, b) // the container left its app: nothing to probe
		case !p.running && !now.Before(p.next):
			p.running = true
			q.probing.Go(func() { q.probe(ctx, b, p) })
		}
	}
}

func (q *quarantine) probe(ctx context.Context, b *backend, p *probe) {
	ctx, cancel := context.WithTimeout(ctx, q.timeout)
	conn, err := q.dial(ctx, "tcp", p.addr)
	cancel()
	q.mu.Lock()
	defer q.mu.Unlock()
	p.running = false
	if err == nil {
		conn.Close()
		delete(q.probes, b)
		b.down.Store(false)
		q.log.Info().Str("app", p.app).Str("container", p.id).Str("address", p.addr).Int("failed_probes", p.failures).
			Msg("container back from quarantine: it answered a probe")
		return
	}
	p.failures++
	p.next = time.Now().Add(min(q.first<<min(p.failures, 20), q.longest))
}
