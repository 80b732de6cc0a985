package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

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
type Publisher struct {
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

// Domains publishes that app now owns exactly domains.
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
// ErrNoStream if the region has no stream.
func (p *Publisher) Publish(ctx context.Context, ev Event) error {
	data, err := Encode(ev)
	if err != nil {
		return err
	}
	st, err := p.eventStream(ctx)
	if err != nil {
		return err
	}
	subject := ev.Subject(p.region)
	for range casAttempts {
		var lastSeq uint64
		last, err := st.GetLastMsgForSubject(ctx, subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return fmt.Errorf("read the current state of %s: %w", subject, err)
		default:
			lastSeq = last.Sequence
			stored, err := decodePayload(last.Data)
			if err == nil && stored.Generation == ev.Generation && bytes.Equal(last.Data, data) {
				return nil
			}
			if err != nil {
				// Junk on the subject: routers use the newest valid
				// event before it, which this one must not go under;
				// the very same event is sent again, to cover the junk.
				if stored, _, err = newestValid(ctx, st, subject, last.Sequence); err != nil {
					return fmt.Errorf("read the current state of %s: %w", subject, err)
				}
				if again, _ := Encode(stored); bytes.Equal(again, data) {
					stored.Generation = 0
				}
			}
			if stored.Generation >= ev.Generation {
				return fmt.Errorf("%w: %s already at generation %d, this event has %d", ErrStale, subject, stored.Generation, ev.Generation)
			}
		}
		_, err = p.js.Publish(ctx, subject, data,
			jetstream.WithExpectStream(StreamName(p.region)),
			jetstream.WithExpectLastSequencePerSubject(lastSeq))
		if !isWrongLastSequence(err) {
			if err != nil {
				return fmt.Errorf("publish %s: %w", subject, err)
			}
			return nil
		}
	}
	return fmt.Errorf("publish %s: other publishers kept changing it, %d attempts", subject, casAttempts)
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
