package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrStale is returned by Publisher when the stream already holds the same
// aspect of the app at a generation at least as high.
var ErrStale = errors.New("stale generation")

// ErrNoStream is returned by Publisher when the region has no stream yet:
// no router of the region has ever started, and nobody created it.
var ErrNoStream = errors.New("no event stream for the region (start a router of the region first, or create the stream: see docs/events.md)")

// casAttempts bounds the retries of a publish that lost a race with another
// publisher of the same subject.
const casAttempts = 5

// Publisher publishes the lifecycle events of one region. It validates each
// event before sending it, and publishes with compare-and-set on the
// subject's last sequence so that the stream never keeps an older
// generation over a newer one, whatever the order publishers race in.
//
// On a domains event it fills ClaimedAt, which decides who owns a domain two
// apps claim: a domain the app's previous domains message listed keeps the
// time given there, a domain new to the app is claimed now.
type Publisher struct {
	// Now is the clock new claims are dated by; nil means time.Now.
	Now func() time.Time

	js     jetstream.JetStream
	region string

	mu     sync.Mutex
	stream jetstream.Stream // looked up on first use
}

// NewPublisher returns a Publisher for region over js.
func NewPublisher(js jetstream.JetStream, region string) (*Publisher, error) {
	if err := ValidateRegion(region); err != nil {
		return nil, err
	}
	return &Publisher{js: js, region: region}, nil
}

// Deploy publishes that app now runs exactly containers.
func (p *Publisher) Deploy(ctx context.Context, app string, gen uint64, containers []Container) error {
	return p.Publish(ctx, Event{Kind: KindDeploy, App: app, Generation: gen, Containers: containers})
}

// Restart publishes that app was restarted and now runs exactly containers.
func (p *Publisher) Restart(ctx context.Context, app string, gen uint64, containers []Container) error {
	return p.Publish(ctx, Event{Kind: KindRestart, App: app, Generation: gen, Containers: containers})
}

// Scale publishes that app was scaled and now runs exactly containers (none:
// scaled to zero, the app answers 503).
func (p *Publisher) Scale(ctx context.Context, app string, gen uint64, containers []Container) error {
	return p.Publish(ctx, Event{Kind: KindScale, App: app, Generation: gen, Containers: containers})
}

// Domains publishes that app now owns exactly domains, each since the time
// the app first claimed it (see Publisher).
func (p *Publisher) Domains(ctx context.Context, app string, gen uint64, domains []string) error {
	return p.Publish(ctx, Event{Kind: KindDomains, App: app, Generation: gen, Domains: domains})
}

// Cert publishes the certificate of domain: a PEM chain, leaf first, and its
// PEM private key. It is refused unless the key matches, the certificate is
// valid now and covers domain.
func (p *Publisher) Cert(ctx context.Context, domain string, gen uint64, certPEM, keyPEM string) error {
	return p.Publish(ctx, Event{Kind: KindCert, Domain: domain, Generation: gen, Cert: certPEM, Key: keyPEM})
}

// DeleteCert publishes that domain has no certificate any more.
func (p *Publisher) DeleteCert(ctx context.Context, domain string, gen uint64) error {
	return p.Publish(ctx, Event{Kind: KindCertDelete, Domain: domain, Generation: gen})
}

// Delete publishes that app is gone, with its containers and domains.
func (p *Publisher) Delete(ctx context.Context, app string, gen uint64) error {
	return p.Publish(ctx, Event{Kind: KindDelete, App: app, Generation: gen})
}

// Publish validates ev and stores it in the region's stream. It returns
// ErrStale if the stream holds this aspect of the app at a generation at
// least as high (publishing the very same event again is not an error), and
// ErrNoStream if the region has no stream. A domains event's ClaimedAt is
// filled for the domains it gives no time for (see Publisher). A subject
// whose last message is not a valid event (published by hand) is judged by
// its newest valid event, which routers fall back to.
func (p *Publisher) Publish(ctx context.Context, ev Event) error {
	if err := ev.Validate(); err != nil {
		return err
	}
	st, err := p.eventStream(ctx)
	if err != nil {
		return err
	}
	subject := ev.Subject(p.region)
	for range casAttempts {
		cur, err := readSubject(ctx, st, subject)
		if err != nil {
			return err
		}
		data, err := p.encode(ctx, st, ev, cur)
		if err != nil {
			return err
		}
		if cur.event.Generation >= ev.Generation {
			switch again, _ := Encode(cur.event); {
			case !bytes.Equal(again, data) || cur.event.Generation != ev.Generation:
				return fmt.Errorf("%w: %s already at generation %d, this event has %d", ErrStale, subject, cur.event.Generation, ev.Generation)
			case !cur.junk:
				return nil // stored already
			}
			// The very same event again, to cover the junk after it.
		}
		_, err = p.js.Publish(ctx, subject, data,
			jetstream.WithExpectStream(StreamName(p.region)),
			jetstream.WithExpectLastSequencePerSubject(cur.lastSeq))
		if !isWrongLastSequence(err) {
			if err != nil {
				return fmt.Errorf("publish %s: %w", subject, err)
			}
			return nil
		}
	}
	return fmt.Errorf("publish %s: other publishers kept changing it, %d attempts", subject, casAttempts)
}

// subjectState is what the stream holds on one subject: the sequence of its
// last message (0: none), and its newest valid event (zero when none) with
// the time the stream stored it. junk is set when the last message is not
// that event but an invalid one.
type subjectState struct {
	lastSeq uint64
	event   Event
	stored  time.Time
	junk    bool
}

// readSubject reads the state of subject for a compare-and-set publish.
func readSubject(ctx context.Context, st jetstream.Stream, subject string) (subjectState, error) {
	last, err := st.GetLastMsgForSubject(ctx, subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return subjectState{}, nil
	case err != nil:
		return subjectState{}, fmt.Errorf("read the current state of %s: %w", subject, err)
	}
	cur := subjectState{lastSeq: last.Sequence, stored: last.Time}
	if cur.event, err = Decode(subject, last.Data); err == nil {
		return cur, nil
	}
	// Junk on the subject: routers use the newest valid event before it,
	// which a new event must not go under. Reading the subject's history
	// takes a direct get by sequence, which a publisher restricted to its
	// own subjects may not be allowed (docs/security.md): then, after
	// historyTimeout, the event is judged against nothing, as on an empty
	// subject.
	cur.junk, cur.stored = true, time.Time{}
	hctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	if ev, _, err := newestValid(hctx, st, subject, last.Sequence); err == nil {
		cur.event = ev
	} else if ctx.Err() != nil {
		return subjectState{}, fmt.Errorf("read the history of %s: %w", subject, err)
	}
	return cur, nil
}

// historyTimeout bounds the publisher's reading of a subject's history.
const historyTimeout = time.Second

// encode returns the JSON form of ev. On a domains event, it first dates
// the claims ev gives no time for: a domain that cur, the subject's newest
// valid event, lists keeps its time there (or, if that event has none, the
// time the stream stored it, when the claim already stood), unless the app
// was deleted since; any other domain is claimed now.
func (p *Publisher) encode(ctx context.Context, st jetstream.Stream, ev Event, cur subjectState) ([]byte, error) {
	if ev.Kind.Aspect() != AspectDomains || len(ev.ClaimedAt) == len(ev.Domains) {
		return Encode(ev)
	}
	var prev Event
	if cur.event.App == ev.App && cur.event.Kind.Aspect() == AspectDomains {
		prev = cur.event
	}
	if prev.Generation != 0 {
		deleted, err := p.deletedAfter(ctx, st, ev.App, prev.Generation)
		if err != nil {
			return nil, err
		}
		if deleted {
			prev = Event{}
		}
	}
	clock := time.Now
	if p.Now != nil {
		clock = p.Now
	}
	now := clock().UnixMilli()
	claimedAt := make(map[string]int64, len(ev.Domains))
	for _, d := range ev.Domains {
		switch at, ok := ev.ClaimedAt[d]; {
		case ok:
			claimedAt[d] = at
		case prev.ClaimedAt[d] != 0:
			claimedAt[d] = prev.ClaimedAt[d]
		case slices.Contains(prev.Domains, d) && !cur.stored.IsZero():
			claimedAt[d] = cur.stored.UnixMilli()
		default:
			claimedAt[d] = now
		}
	}
	ev.ClaimedAt = claimedAt
	return Encode(ev)
}

// deletedAfter reports whether the stream holds a delete of app at a
// generation above gen: the app's claims up to gen were released.
func (p *Publisher) deletedAfter(ctx context.Context, st jetstream.Stream, app string, gen uint64) (bool, error) {
	del, err := readSubject(ctx, st, Subject(p.region, app, AspectDelete))
	return del.event.Generation > gen, err
}

func (p *Publisher) eventStream(ctx context.Context) (jetstream.Stream, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stream != nil {
		return p.stream, nil
	}
	st, err := p.js.Stream(ctx, StreamName(p.region))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("region %s: %w", p.region, ErrNoStream)
	case err != nil:
		return nil, fmt.Errorf("look up the stream of region %s: %w", p.region, err)
	}
	p.stream = st
	return st, nil
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
