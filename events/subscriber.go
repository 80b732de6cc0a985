package events

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Handler receives the valid events of a region, in stream order. Apply is
// called from one goroutine at a time; a batch holds the events that arrived
// together, so that a burst is applied at once.
type Handler interface {
	Apply(batch []Event)
}

// DefaultBatchSize is the most events a Subscriber hands over in one batch
// when BatchSize is zero.
const DefaultBatchSize = 1024

// Subscriber feeds a Handler with the events of one region: first the
// current state of every app (the last message of each subject, or the
// newest valid one when the last is invalid), then every change, in order.
// It creates the region's stream if it is missing. Invalid messages are
// logged with the reason and skipped.
type Subscriber struct {
	// JetStream is the connection to the region's NATS. Required.
	JetStream jetstream.JetStream
	// Region is the region whose events are read. Required.
	Region string
	// Handler receives the events. Required.
	Handler Handler
	// Replicas is the number of copies of the stream, used only when the
	// Subscriber creates it. Zero means 1.
	Replicas int
	// BatchSize bounds the events handed over in one call to Apply. Zero
	// means DefaultBatchSize.
	BatchSize int
	// RetryInterval is the wait between attempts to reach the stream at
	// start. Zero means one second.
	RetryInterval time.Duration
	// Logger receives rejected events and state changes. The zero value
	// logs nothing.
	Logger zerolog.Logger

	ready    atomic.Bool
	lastSeq  atomic.Uint64
	rejected atomic.Uint64
}

// Status describes how far a Subscriber has got.
type Status struct {
	// Ready is true once the complete state of the region, as it was when
	// the Subscriber started, has been handed to the Handler.
	Ready bool `json:"ready"`
	// LastSequence is the stream sequence of the last message handled.
	LastSequence uint64 `json:"last_sequence"`
	// Rejected counts the invalid messages skipped.
	Rejected uint64 `json:"rejected"`
}

// Status reports the Subscriber's progress; it is safe to call at any time.
func (s *Subscriber) Status() Status {
	return Status{Ready: s.ready.Load(), LastSequence: s.lastSeq.Load(), Rejected: s.rejected.Load()}
}

// Run reads events until ctx is done. It returns nil when ctx is done, and an
// error only when the Subscriber is misconfigured; a broker that cannot be
// reached is retried, keeping the events applied so far.
func (s *Subscriber) Run(ctx context.Context) error {
	if s.JetStream == nil || s.Handler == nil {
		return errors.New("events: Subscriber needs JetStream and Handler")
	}
	if err := ValidateRegion(s.Region); err != nil {
		return err
	}
	retry := s.RetryInterval
	if retry <= 0 {
		retry = time.Second
	}
	for {
		err := s.consume(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.Logger.Warn().Err(err).Str("region", s.Region).Dur("retry_in", retry).Msg("event stream unavailable; serving the last known routes")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retry):
		}
	}
}

// consume attaches to the stream and hands events over until ctx is done or
// the consumer cannot be set up.
func (s *Subscriber) consume(ctx context.Context) error {
	st, err := EnsureStream(ctx, s.JetStream, s.Region, s.Replicas)
	if err != nil {
		return err
	}
	// The state is loaded once the consumer has passed the last message
	// the stream held when we looked; an empty stream is loaded already.
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	loadedAt := info.State.LastSeq
	start := time.Now()
	// An ordered consumer is ephemeral, and resumes after the last message
	// it delivered when the connection comes back; starting from the last
	// message of each subject gives the current state in one pass.
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{RegionSubjects(s.Region), CertSubjects(s.Region)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	batchSize := s.BatchSize
	if batchSize <= 0 {
		batchSize = DefaultBatchSize
	}
	msgs := make(chan jetstream.Msg, batchSize)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		s.Logger.Warn().Err(err).Str("region", s.Region).Msg("event consumer")
	}))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer cc.Stop()
	// A consumer with nothing to deliver (the stream was never written, or
	// was purged: its last sequence is then above zero) has loaded it all.
	if ci := cons.CachedInfo(); ci != nil && ci.NumPending == 0 && !s.ready.Load() {
		s.markReady(loadedAt, start)
	}

	batch := make([]Event, 0, batchSize)
	for {
		var m jetstream.Msg
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m = <-msgs:
		}
		batch = batch[:0]
		caughtUp := false
		for {
			if ev, ok := s.decode(ctx, st, m, loadedAt); ok {
				batch = append(batch, ev)
			}
			if md, err := m.Metadata(); err == nil {
				s.lastSeq.Store(md.Sequence.Stream)
				caughtUp = md.NumPending == 0 || md.Sequence.Stream >= loadedAt
			}
			if len(batch) == batchSize || len(msgs) == 0 {
				break
			}
			m = <-msgs
		}
		if len(batch) > 0 {
			s.Handler.Apply(batch)
		}
		if caughtUp && !s.ready.Load() {
			s.markReady(loadedAt, start)
		}
	}
}

// decode returns the event m carries. An invalid message is logged with
// the reason and skipped; if it is part of the state the stream held when
// the consumer started (sequence up to loadedAt), the newest valid message
// of its subject stands in for it, so that junk published on a subject does
// not erase what the subject said before.
func (s *Subscriber) decode(ctx context.Context, st jetstream.Stream, m jetstream.Msg, loadedAt uint64) (Event, bool) {
	ev, err := Decode(m.Subject(), m.Data())
	if err == nil {
		return ev, true
	}
	s.rejected.Add(1)
	var seq uint64
	if md, mdErr := m.Metadata(); mdErr == nil {
		seq = md.Sequence.Stream
	}
	s.Logger.Warn().Str("subject", m.Subject()).Uint64("seq", seq).Str("reason", err.Error()).Msg("event rejected")
	if seq == 0 || seq > loadedAt {
		return Event{}, false
	}
	ev, validSeq, err := newestValid(ctx, st, m.Subject(), seq)
	switch {
	case err != nil:
		s.Logger.Warn().Err(err).Str("subject", m.Subject()).Uint64("seq", seq).Msg("no earlier event to stand in for the rejected one")
		return Event{}, false
	case validSeq == 0:
		s.Logger.Warn().Str("subject", m.Subject()).Uint64("seq", seq).Msg("no earlier valid event on the subject; the rejected one is skipped")
		return Event{}, false
	}
	s.Logger.Info().Str("subject", m.Subject()).Uint64("seq", seq).Uint64("used_seq", validSeq).Msg("rejected event replaced by the newest valid event of its subject")
	return ev, true
}

func (s *Subscriber) markReady(seq uint64, start time.Time) {
	s.ready.Store(true)
	s.Logger.Info().Str("region", s.Region).Uint64("seq", seq).Dur("took", time.Since(start)).Msg("region state loaded")
}
