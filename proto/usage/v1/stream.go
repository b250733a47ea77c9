package usagev1

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Names shared by every binary that touches the usage stream.
const (
	// StreamName is the JetStream stream holding every usage event.
	StreamName = "USAGE"
	// SubjectPrefix is the subject space of the stream; events go to SubjectPrefix + "." + key ID.
	SubjectPrefix = "usage.v1"
	// SubjectWildcard is the stream's subject filter.
	SubjectWildcard = SubjectPrefix + ".>"
	// BillingConsumer and AggregatorConsumer are the durable pull consumers.
	BillingConsumer    = "billing"
	AggregatorConsumer = "aggregator"
	// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id.
	DuplicateWindow = 5 * time.Minute
	// DefaultMaxAge is the default retention of the stream (400 days).
	DefaultMaxAge = 400 * 24 * time.Hour
)

// Subject is the subject an event of the given key is published to. Per-key
// subjects let a gateway read one key's recent events back with a filtered consumer.
func Subject(keyID string) string { return SubjectPrefix + "." + keyID }

// StreamConfig is the configuration of the USAGE stream. maxAge <= 0 means DefaultMaxAge.
func StreamConfig(maxAge time.Duration) jetstream.StreamConfig {
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Mana API gateway usage events (one per metered call)",
		Subjects:    []string{SubjectWildcard},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      maxAge,
		Duplicates:  DuplicateWindow,
		Discard:     jetstream.DiscardOld,
	}
}

// EnsureStream creates the USAGE stream or updates it to StreamConfig. It is
// idempotent and safe to call from every binary at start. A positive maxAge
// sets the retention (the gateway's USAGE_STREAM_MAX_AGE); maxAge <= 0 keeps
// the retention of an existing stream, so binaries that do not own the
// setting never undo it, and creates a new one with DefaultMaxAge.
func EnsureStream(ctx context.Context, js jetstream.JetStream, maxAge time.Duration) (jetstream.Stream, error) {
	if maxAge <= 0 {
		if existing, err := js.Stream(ctx, StreamName); err == nil {
			maxAge = existing.CachedInfo().Config.MaxAge
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
		}
	}
	s, err := js.CreateOrUpdateStream(ctx, StreamConfig(maxAge))
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	return s, nil
}

// ErrInvalid marks an event that decodes but breaks the schema's rules.
var ErrInvalid = errors.New("invalid usage event")

var (
	ulidRE   = regexp.MustCompile(`^[0-9A-HJKMNP-TV-Z]{26}$`)
	periodRE = regexp.MustCompile(`^\d{4}-(0[1-9]|1[0-2])$`)
)

// Decode unmarshals and validates an event. Any error means the message can
// never be processed and belongs in the dead-letter table.
func Decode(data []byte) (*UsageEvent, error) {
	var ev UsageEvent
	if err := proto.Unmarshal(data, &ev); err != nil {
		return nil, fmt.Errorf("decode usage event: %w", err)
	}
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	return &ev, nil
}

// Validate checks the fields every consumer relies on.
func (e *UsageEvent) Validate() error {
	var errs []error
	if !ulidRE.MatchString(e.GetEventId()) {
		errs = append(errs, errors.New("event_id is not a ULID"))
	}
	if e.GetKeyId() == "" {
		errs = append(errs, errors.New("key_id is empty"))
	}
	if e.GetEndpoint() == "" {
		errs = append(errs, errors.New("endpoint is empty"))
	}
	if e.GetCredits() < 0 || e.GetUnits() < 0 {
		errs = append(errs, errors.New("credits and units must not be negative"))
	}
	if e.GetOccurredAt() == nil || !e.GetOccurredAt().IsValid() || e.GetOccurredAt().AsTime().Year() < 2000 {
		errs = append(errs, errors.New("occurred_at is missing or out of range"))
	}
	if !periodRE.MatchString(e.GetPeriod()) {
		errs = append(errs, errors.New("period is not YYYY-MM"))
	} else if e.GetOccurredAt() != nil && e.GetOccurredAt().AsTime().UTC().Format("2006-01") != e.GetPeriod() {
		errs = append(errs, errors.New("period does not match occurred_at"))
	}
	if e.GetStatus() < 100 || e.GetStatus() > 599 {
		errs = append(errs, errors.New("status is not an HTTP status"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}
