package events

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// SubjectHistory is the number of messages the stream StreamConfig
// describes keeps per subject. The newest valid one is the current state of
// its aspect; the older ones stand in for it when a later one is invalid.
const SubjectHistory = 8

// maxHistoryWalk bounds the messages of one subject read to find the newest
// valid one, for streams an operator configured with a longer history.
const maxHistoryWalk = 64

// StreamConfig returns the configuration of the stream that keeps the
// events of region: the last SubjectHistory messages of each subject (the
// newest valid one is the current state of one aspect of one app), on
// disk, with replicas copies in a NATS cluster.
func StreamConfig(region string, replicas int) jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:              StreamName(region),
		Description:       "sluice app lifecycle events of region " + region + "; the newest valid message of each subject is current",
		Subjects:          []string{RegionSubjects(region), CertSubjects(region)},
		Retention:         jetstream.LimitsPolicy,
		MaxMsgsPerSubject: SubjectHistory,
		MaxMsgSize:        MaxEventSize,
		Discard:           jetstream.DiscardOld,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		AllowDirect:       true,
	}
}

// EnsureStream returns the stream of region, creating it with
// StreamConfig(region, replicas) if it does not exist. An existing stream is
// left as the operator configured it, except that the subjects this version
// of the wire format uses are added if it lacks them, and its history per
// subject is raised to SubjectHistory if it keeps less.
func EnsureStream(ctx context.Context, js jetstream.JetStream, region string, replicas int) (jetstream.Stream, error) {
	if err := ValidateRegion(region); err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, StreamName(region))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = js.CreateStream(ctx, StreamConfig(region, replicas))
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			st, err = js.Stream(ctx, StreamName(region))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamName(region), err)
	}
	cfg := st.CachedInfo().Config
	update := false
	for _, s := range StreamConfig(region, replicas).Subjects {
		if !slices.Contains(cfg.Subjects, s) {
			cfg.Subjects, update = append(cfg.Subjects, s), true
		}
	}
	// Routers fall back on a subject's history when its last message is
	// invalid: a stream made before that keeps too little of it.
	if cfg.MaxMsgsPerSubject > 0 && cfg.MaxMsgsPerSubject < SubjectHistory {
		cfg.MaxMsgsPerSubject, update = SubjectHistory, true
	}
	if update {
		if st, err = js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("stream %s: add subjects %v, keep %d messages per subject: %w", StreamName(region), cfg.Subjects, cfg.MaxMsgsPerSubject, err)
		}
	}
	return st, nil
}

// newestValid returns the newest valid event stored on subject at a sequence
// below before, and its sequence; the sequence is 0 if the stream holds no
// valid message there. It reads the subject's messages from the oldest, at
// most maxHistoryWalk of them, and fails rather than return an event that
// may not be the newest.
func newestValid(ctx context.Context, st jetstream.Stream, subject string, before uint64) (Event, uint64, error) {
	var (
		found    Event
		foundSeq uint64
		next     uint64 = 1
	)
	for range maxHistoryWalk + 1 { // the last read may reach before
		m, err := st.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return found, foundSeq, nil
		case err != nil:
			return Event{}, 0, fmt.Errorf("read %s from sequence %d: %w", subject, next, err)
		case m.Sequence >= before:
			return found, foundSeq, nil
		}
		if ev, err := Decode(subject, m.Data); err == nil {
			found, foundSeq = ev, m.Sequence
		}
		next = m.Sequence + 1
	}
	return Event{}, 0, fmt.Errorf("%s keeps more than %d messages before sequence %d", subject, maxHistoryWalk, before)
}
