package events_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/testenv"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	t.Cleanup(cancel)
	return c
}

func lastGeneration(t *testing.T, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	st, err := js.Stream(ctx(t), events.StreamName(testenv.Region))
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx(t), subject)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.Decode(m.Subject, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return ev.Generation
}

func TestPublisherKeepsNewestGeneration(t *testing.T) {
	n := testenv.StartNATS(t)
	pub := n.Publisher(t, testenv.Region)
	js := n.JetStream(t)
	cs := []events.Container{{ID: "a", Address: "10.0.0.1:80"}}
	subject := events.Subject(testenv.Region, "app", events.AspectContainers)

	if err := pub.Deploy(ctx(t), "app", 10, cs); err != nil {
		t.Fatal(err)
	}
	// The same event again (a retry) is fine.
	if err := pub.Deploy(ctx(t), "app", 10, cs); err != nil {
		t.Fatalf("republishing the same event: %v", err)
	}
	// Anything not newer is refused, and the stream keeps generation 10.
	for _, gen := range []uint64{9, 10} {
		err := pub.Scale(ctx(t), "app", gen, nil)
		if !errors.Is(err, events.ErrStale) {
			t.Fatalf("generation %d after 10: err = %v, want ErrStale", gen, err)
		}
	}
	if got := lastGeneration(t, js, subject); got != 10 {
		t.Fatalf("stream holds generation %d, want 10", got)
	}
	// Aspects are independent: a domains event at a lower generation than
	// the containers is about another subject.
	if err := pub.Domains(ctx(t), "app", 11, []string{"app.example.com"}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Restart(ctx(t), "app", 12, cs); err != nil {
		t.Fatal(err)
	}
	if got := lastGeneration(t, js, subject); got != 12 {
		t.Fatalf("stream holds generation %d, want 12", got)
	}
}

func TestPublisherRefusesBeforeSending(t *testing.T) {
	n := testenv.StartNATS(t)
	pub := n.Publisher(t, testenv.Region)
	js := n.JetStream(t)
	bad := []error{
		pub.Deploy(ctx(t), "Bad.App", 1, nil),
		pub.Deploy(ctx(t), "app", 1, []events.Container{{ID: "a", Address: "nowhere"}}),
		pub.Domains(ctx(t), "app", 1, []string{"UPPER.example.com"}),
		pub.Delete(ctx(t), "app", 0),
	}
	for i, err := range bad {
		if !errors.Is(err, events.ErrInvalid) {
			t.Errorf("case %d: err = %v, want ErrInvalid", i, err)
		}
	}
	st, err := js.Stream(ctx(t), events.StreamName(testenv.Region))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("stream has %d messages after refused events", info.State.Msgs)
	}
}

func TestPublisherWithoutStream(t *testing.T) {
	n := testenv.StartNATS(t)
	pub, err := events.NewPublisher(n.JetStream(t), "nowhere")
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Delete(ctx(t), "app", 1); !errors.Is(err, events.ErrNoStream) {
		t.Fatalf("err = %v, want ErrNoStream", err)
	}
	if _, err := events.NewPublisher(n.JetStream(t), "Bad Region"); !errors.Is(err, events.ErrInvalid) {
		t.Fatalf("bad region: err = %v, want ErrInvalid", err)
	}
}

func TestEnsureStreamIsIdempotent(t *testing.T) {
	n := testenv.StartNATS(t)
	js := n.JetStream(t)
	for range 2 {
		st, err := events.EnsureStream(ctx(t), js, "r1", 1)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		if cfg.MaxMsgsPerSubject != events.SubjectHistory || cfg.Subjects[0] != "sluice.r1.app.*.*" || cfg.Storage != jetstream.FileStorage {
			t.Fatalf("stream config %+v", cfg)
		}
	}
}

// Junk on a subject does not let an older generation in: the publisher
// compares with the newest valid event, and may send that event again to
// cover the junk.
func TestPublisherComparesWithNewestValidEvent(t *testing.T) {
	n := testenv.StartNATS(t)
	pub := n.Publisher(t, testenv.Region)
	js := n.JetStream(t)
	cs := []events.Container{{ID: "a", Address: "10.0.0.1:80"}}
	subject := events.Subject(testenv.Region, "app", events.AspectContainers)
	if err := pub.Deploy(ctx(t), "app", 10, cs); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx(t), subject, []byte("junk")); err != nil {
		t.Fatal(err)
	}
	if err := pub.Scale(ctx(t), "app", 9, nil); !errors.Is(err, events.ErrStale) {
		t.Fatalf("generation 9 over junk after 10: err = %v, want ErrStale", err)
	}
	if err := pub.Deploy(ctx(t), "app", 10, cs); err != nil {
		t.Fatalf("republishing the newest valid event over junk: %v", err)
	}
	if got := lastGeneration(t, js, subject); got != 10 {
		t.Fatalf("stream holds generation %d, want 10", got)
	}
}
