package events_test

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

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
	ev, _ := lastEvent(t, js, subject)
	return ev.Generation
}

// lastEvent returns the last event of subject in the stream and the time the
// stream stored it.
func lastEvent(t *testing.T, js jetstream.JetStream, subject string) (events.Event, time.Time) {
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
	return ev, m.Time
}

// TestPublisherDatesClaims checks that a domain keeps the time its app first
// claimed it across the app's domains events, since that time decides who
// owns a domain two apps claim.
func TestPublisherDatesClaims(t *testing.T) {
	n := testenv.StartNATS(t)
	pub := n.Publisher(t, testenv.Region)
	js := n.JetStream(t)
	var clock int64
	pub.Now = func() time.Time { return time.UnixMilli(clock) }
	subject := events.Subject(testenv.Region, "app", events.AspectDomains)
	step := func(what string, at int64, publish func() error, want map[string]int64) {
		t.Helper()
		clock = at
		if err := publish(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got, _ := lastEvent(t, js, subject); !maps.Equal(got.ClaimedAt, want) {
			t.Fatalf("%s: claimed_at %v, want %v", what, got.ClaimedAt, want)
		}
	}
	domains := func(gen uint64, ds ...string) func() error {
		return func() error { return pub.Domains(ctx(t), "app", gen, ds) }
	}
	step("first claims", 1000, domains(1, "a.example.com", "b.example.com"),
		map[string]int64{"a.example.com": 1000, "b.example.com": 1000})
	step("a kept, c added", 2000, domains(2, "a.example.com", "c.example.com"),
		map[string]int64{"a.example.com": 1000, "c.example.com": 2000})
	step("the same event again", 2500, domains(2, "a.example.com", "c.example.com"),
		map[string]int64{"a.example.com": 1000, "c.example.com": 2000})
	step("a released", 3000, domains(3, "c.example.com"),
		map[string]int64{"c.example.com": 2000})
	step("a claimed again", 4000, domains(4, "a.example.com", "c.example.com"),
		map[string]int64{"a.example.com": 4000, "c.example.com": 2000})
	step("a time given by the caller", 4500, func() error {
		return pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: "app", Generation: 5,
			Domains: []string{"a.example.com", "c.example.com"}, ClaimedAt: map[string]int64{"a.example.com": 10}})
	}, map[string]int64{"a.example.com": 10, "c.example.com": 2000})
	// A delete releases every claim: the app created again claims anew.
	if err := pub.Delete(ctx(t), "app", 6); err != nil {
		t.Fatal(err)
	}
	step("after a delete", 7000, domains(7, "c.example.com"), map[string]int64{"c.example.com": 7000})

	// A message without claimed_at (another publisher, or an older
	// sluice): the claims it lists date from when the stream stored it.
	legacy := events.Subject(testenv.Region, "old", events.AspectDomains)
	if _, err := js.Publish(ctx(t), legacy, []byte(`{"v":1,"kind":"domains","app":"old","generation":1,"domains":["old.example.com"]}`)); err != nil {
		t.Fatal(err)
	}
	_, stored := lastEvent(t, js, legacy)
	clock = 9000
	if err := pub.Domains(ctx(t), "old", 2, []string{"old.example.com", "new.example.com"}); err != nil {
		t.Fatal(err)
	}
	got, _ := lastEvent(t, js, legacy)
	if want := map[string]int64{"old.example.com": stored.UnixMilli(), "new.example.com": 9000}; !maps.Equal(got.ClaimedAt, want) {
		t.Fatalf("after a message without claimed_at: %v, want %v", got.ClaimedAt, want)
	}
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

// A stream made before routers kept a history per subject gets one.
func TestEnsureStreamKeepsAHistory(t *testing.T) {
	n := testenv.StartNATS(t)
	js := n.JetStream(t)
	old := events.StreamConfig("r1", 1)
	old.MaxMsgsPerSubject = 1
	if _, err := js.CreateStream(ctx(t), old); err != nil {
		t.Fatal(err)
	}
	st, err := events.EnsureStream(ctx(t), js, "r1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.MaxMsgsPerSubject; got != events.SubjectHistory {
		t.Fatalf("MaxMsgsPerSubject = %d, want %d", got, events.SubjectHistory)
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
