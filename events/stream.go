package events

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig returns the configuration of the stream that keeps the
// events of region: one message per subject (the current state of one
// aspect of one app), on disk, with replicas copies in a NATS cluster.
func StreamConfig(region string, replicas int) jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:              StreamName(region),
		Description:       "sluice app lifecycle events of region " + region + "; the last message of each subject is current",
		Subjects:          []string{RegionSubjects(region), CertSubjects(region)},
		Retention:         jetstream.LimitsPolicy,
		MaxMsgsPerSubject: 1,
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
// of the wire format uses are added if it lacks them.
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
	missing := false
	for _, s := range StreamConfig(region, replicas).Subjects {
		if !slices.Contains(cfg.Subjects, s) {
			cfg.Subjects, missing = append(cfg.Subjects, s), true
		}
	}
	if missing {
		if st, err = js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("stream %s: add subjects %v: %w", StreamName(region), cfg.Subjects, err)
		}
	}
	return st, nil
}
