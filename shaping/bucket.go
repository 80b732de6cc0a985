package shaping

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Limiter is the router-wide side of shaping: the default Limits of a
// container, and the number of routers that share each container's
// allowance. It makes the Buckets.
type Limiter struct {
	defaults Limits
	peers    atomic.Int64
	// epoch counts SetPeers calls; a Bucket compares it with the epoch
	// it last applied to notice a change on its next use.
	epoch atomic.Uint64
}

// NewLimiter returns a Limiter whose containers get defaults (zero fields:
// DefaultLimits) unless their app has its own allowance, with one peer.
func NewLimiter(defaults Limits) *Limiter {
	l := &Limiter{defaults: defaults.Or(DefaultLimits)}
	l.peers.Store(1)
	return l
}

// Defaults returns the limits of a container whose app sets none.
func (l *Limiter) Defaults() Limits { return l.defaults }

// Peers returns the number of routers sharing each allowance.
func (l *Limiter) Peers() int { return int(l.peers.Load()) }

// SetPeers sets the number of routers that carry traffic for the same
// containers (values below 1 count as 1): each Bucket then enforces rate/n
// and burst/n, from its next use on.
func (l *Limiter) SetPeers(n int) {
	n = max(n, 1)
	if l.peers.Swap(int64(n)) != int64(n) {
		l.epoch.Add(1)
	}
}

// Bucket returns a new, full bucket pair for one container whose app's
// allowance is limits (zero fields: the Limiter's defaults).
func (l *Limiter) Bucket(limits Limits) *Bucket {
	b := &Bucket{l: l}
	b.limits = limits.Or(l.defaults)
	b.applied.Store(l.epoch.Load())
	eff := b.limits.share(l.Peers())
	for i := range b.flows {
		b.flows[i].lim = rate.NewLimiter(rate.Limit(eff.Rate), int(eff.Burst))
	}
	return b
}

// Direction is the way bytes travel, seen from the container.
type Direction int

// The two directions of a container's traffic.
const (
	Download Direction = iota // container → client
	Upload                    // client → container
)

// Bucket shapes the traffic of one container: a token bucket each way.
// The route table keeps it for as long as the container is routed, so that
// every connection and request to the container through this router draws
// from it.
type Bucket struct {
	l     *Limiter
	flows [2]flow

	mu     sync.Mutex // guards limits and the flows' settings
	limits Limits     // the container's allowance, before the peers' share
	// applied is the Limiter epoch the flows' settings come from.
	applied atomic.Uint64
}

type flow struct {
	lim    *rate.Limiter
	bytes  atomic.Int64
	waited atomic.Int64 // nanoseconds
}

// Limits returns the container's allowance, before the peers' share.
func (b *Bucket) Limits() Limits {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limits
}

// SetLimits changes the container's allowance (zero fields: the Limiter's
// defaults), keeping the tokens it has.
func (b *Bucket) SetLimits(limits Limits) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limits = limits.Or(b.l.defaults)
	b.applyLocked()
}

// sync applies a peer count changed since the last use.
func (b *Bucket) sync() {
	if b.applied.Load() == b.l.epoch.Load() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.applyLocked()
}

func (b *Bucket) applyLocked() {
	epoch := b.l.epoch.Load()
	eff := b.limits.share(b.l.Peers())
	now := time.Now()
	for i := range b.flows {
		b.flows[i].lim.SetLimitAt(now, rate.Limit(eff.Rate))
		b.flows[i].lim.SetBurstAt(now, int(eff.Burst))
	}
	b.applied.Store(epoch)
}

// Stats is what a Bucket has carried and how long it made traffic wait.
type Stats struct {
	Limits
	// Peers is the number of routers the allowance is shared by: this
	// router enforces Rate/Peers and Burst/Peers.
	Peers    int       `json:"peers"`
	Download FlowStats `json:"download"`
	Upload   FlowStats `json:"upload"`
}

// FlowStats describes one direction of a Bucket.
type FlowStats struct {
	Bytes    int64   `json:"bytes"`
	WaitedMS float64 `json:"waited_ms"`
}

// Stats returns the bucket's allowance and counters.
func (b *Bucket) Stats() Stats {
	st := Stats{Limits: b.Limits(), Peers: b.l.Peers()}
	for i, fs := range []*FlowStats{&st.Download, &st.Upload} {
		fs.Bytes = b.flows[i].bytes.Load()
		fs.WaitedMS = float64(b.flows[i].waited.Load()) / float64(time.Millisecond)
	}
	return st
}

// Pacer charges the bytes of one stream (a request body, a response body,
// one way of an upgraded connection) to one direction of a Bucket, and
// counts the time it made that stream wait.
type Pacer struct {
	ctx    context.Context
	b      *Bucket
	f      *flow
	waited atomic.Int64
}

// Pacer returns a Pacer for dir. Its waits end with an error when ctx is
// done.
func (b *Bucket) Pacer(ctx context.Context, dir Direction) *Pacer {
	return &Pacer{ctx: ctx, b: b, f: &b.flows[dir]}
}

// Waited returns the time the stream has waited for tokens so far.
func (p *Pacer) Waited() time.Duration { return time.Duration(p.waited.Load()) }

// Read reads from r into buf at most what one wait may cover (the bucket's
// burst), then waits for the tokens of what it read before returning, so
// that the next read, and the sender, wait too. A nil Pacer reads from r
// unshaped.
func (p *Pacer) Read(r io.Reader, buf []byte) (int, error) {
	if p == nil {
		return r.Read(buf)
	}
	p.b.sync()
	if burst := p.f.lim.Burst(); len(buf) > burst {
		buf = buf[:burst]
	}
	n, err := r.Read(buf)
	if n > 0 {
		if werr := p.wait(n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// Write writes buf to w in pieces of at most the bucket's burst, each once
// its tokens are there. A nil Pacer writes buf to w unshaped.
func (p *Pacer) Write(w io.Writer, buf []byte) (int, error) {
	if p == nil {
		return w.Write(buf)
	}
	written := 0
	for len(buf) > 0 {
		p.b.sync()
		chunk := min(len(buf), p.f.lim.Burst())
		if err := p.wait(chunk); err != nil {
			return written, err
		}
		n, err := w.Write(buf[:chunk])
		written += n
		if err != nil {
			return written, err
		}
		buf = buf[chunk:]
	}
	return written, nil
}

// wait takes n tokens, in several waits if the burst shrank meanwhile.
func (p *Pacer) wait(n int) error {
	p.f.bytes.Add(int64(n))
	for n > 0 {
		chunk := min(n, p.f.lim.Burst())
		r := p.f.lim.ReserveN(time.Now(), chunk)
		if !r.OK() {
			continue // the burst changed between Burst and ReserveN
		}
		if d := r.Delay(); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				r.Cancel()
				return p.ctx.Err()
			}
			p.waited.Add(int64(d))
			p.f.waited.Add(int64(d))
		}
		n -= chunk
	}
	return nil
}
