package usagev1

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Names shared by every binary that touches the usage stream.
const (
	// StreamName is the JetStream stream holding every usage event.
	StreamName = "USAGE"
	// SubjectPrefix is the subject space of the older one-event-per-message
	// form: one UsageEvent to SubjectPrefix + "." + key ID. Still read, no
	// longer written by the gateway.
	SubjectPrefix = "usage.v1"
	// BatchSubjectPrefix is the subject space of the group commit: one
	// UsageBatch to BatchSubjectPrefix + "." + gateway ID.
	BatchSubjectPrefix = "usage.v2.batch"
	// SubjectWildcard matches every usage subject of both forms; consumers
	// filter on it.
	SubjectWildcard = "usage.>"
	// BillingConsumer and AggregatorConsumer are the durable pull consumers.
	BillingConsumer    = "billing"
	AggregatorConsumer = "aggregator"
	// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id.
	DuplicateWindow = 5 * time.Minute
	// DefaultMaxAge is the default retention of the stream (400 days).
	DefaultMaxAge = 400 * 24 * time.Hour
)

// Subject is the subject of one event of the given key in the older
// one-event-per-message form.
func Subject(keyID string) string { return SubjectPrefix + "." + keyID }

// BatchSubject is the subject the gateway instance gatewayID publishes its
// batches to. Characters that a subject token cannot hold (dots, spaces,
// wildcards) become '_'.
func BatchSubject(gatewayID string) string {
	tok := []byte(gatewayID)
	for i, c := range tok {
		if c <= ' ' || c == '.' || c == '*' || c == '>' || c >= 0x7f {
			tok[i] = '_'
		}
	}
	if len(tok) == 0 {
		tok = []byte("_")
	}
	return BatchSubjectPrefix + "." + string(tok)
}

// IsBatchSubject reports whether a message of this subject holds a UsageBatch.
func IsBatchSubject(subject string) bool {
	return strings.HasPrefix(subject, BatchSubjectPrefix+".")
}

// StreamConfig is the configuration of the USAGE stream on one server.
// maxAge <= 0 means DefaultMaxAge.
func StreamConfig(maxAge time.Duration) jetstream.StreamConfig {
	return StreamOptions{MaxAge: maxAge}.config()
}

// StreamOptions are the settings of the USAGE stream its owner (the
// gateway) chooses. A zero field keeps an existing stream's value, so
// binaries that do not own a setting never undo it; a new stream gets
// DefaultMaxAge and one replica.
type StreamOptions struct {
	MaxAge time.Duration
	// Replicas is the number of servers of a JetStream cluster that store
	// the stream (1, 3 or 5); an event is acknowledged once a majority of
	// them has it.
	Replicas int
}

func (o StreamOptions) config() jetstream.StreamConfig {
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Mana API gateway usage events (group-committed batches; older one-event messages)",
		Subjects:    []string{SubjectWildcard},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge,
		Duplicates:  DuplicateWindow,
		Discard:     jetstream.DiscardOld,
		Replicas:    o.Replicas,
	}
}

// EnsureStream creates the USAGE stream or updates it to StreamConfig. It is
// idempotent and safe to call from every binary at start. A positive maxAge
// sets the retention (the gateway's USAGE_STREAM_MAX_AGE); maxAge <= 0 keeps
// the retention of an existing stream, so binaries that do not own the
// setting never undo it, and creates a new one with DefaultMaxAge. The
// replica count of an existing stream is kept.
func EnsureStream(ctx context.Context, js jetstream.JetStream, maxAge time.Duration) (jetstream.Stream, error) {
	return EnsureStreamWith(ctx, js, StreamOptions{MaxAge: maxAge})
}

// EnsureStreamWith is EnsureStream with every option the owner sets.
func EnsureStreamWith(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.Stream, error) {
	existing, err := js.Stream(ctx, StreamName)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	if err == nil {
		cur := existing.CachedInfo().Config
		if o.MaxAge <= 0 {
			o.MaxAge = cur.MaxAge
		}
		if o.Replicas <= 0 {
			o.Replicas = cur.Replicas
		}
		// A stream already as wanted is left alone: every binary ensures it
		// at start, and an update racing a consumer's creation is needless
		// work for the server (and a data race in nats-server 2.15's file
		// store under the race detector).
		want := o.config()
		if slices.Equal(cur.Subjects, want.Subjects) && cur.MaxAge == want.MaxAge && cur.Duplicates == want.Duplicates &&
			cur.Storage == want.Storage && cur.Retention == want.Retention && cur.Discard == want.Discard &&
			cur.Description == want.Description && max(cur.Replicas, 1) == want.Replicas {
			return existing, nil
		}
	}
	s, err := js.CreateOrUpdateStream(ctx, o.config())
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	return s, nil
}

// GrantEndpoint is the endpoint of a credit grant's event: not a route of
// the edge, so a grant is never mistaken for a call.
const GrantEndpoint = "credits.grant"

// IsGrant reports whether the event is a credit grant rather than a call.
func (e *UsageEvent) IsGrant() bool { return e.GetGrant() != nil }

// Spent is what the event takes from its key's balance of the period: the
// credits a call was charged, or minus the credits a grant added.
func (e *UsageEvent) Spent() int64 { return e.GetCredits() - e.GetGrant().GetCredits() }

// ExhaustedEndpoint is the endpoint of the event a gateway publishes on a
// key's first refusal for want of credits (402) in a period: not a call
// and not a charge (status 402, credits and units 0), only the news that
// the key ran dry, which billing tells its owner once per key and period.
const ExhaustedEndpoint = "credits.exhausted"

// IsExhausted reports whether the event tells of a key refused for want of
// credits rather than of a call.
func (e *UsageEvent) IsExhausted() bool { return e.GetEndpoint() == ExhaustedEndpoint }

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

// Message is what one message of the stream holds, decoded.
type Message struct {
	// BatchID is the batch's ID; empty for the older one-event form.
	BatchID string
	// Events are the events that validate, in order.
	Events []*UsageEvent
	// Invalid are the events of a batch that decode but fail Validate; each
	// belongs in the dead-letter table on its own, the rest of its batch is
	// applied.
	Invalid []InvalidEvent
}

// InvalidEvent is one event of a batch that can never be processed.
type InvalidEvent struct {
	Index int         // position in the batch
	Event *UsageEvent // as decoded
	Err   error       // wraps ErrInvalid
}

// DecodeMessage decodes one stream message of either form, chosen by its
// subject. An error means the message as a whole can never be processed
// (undecodable bytes, a batch without an ID or without events) and belongs in
// the dead-letter table; events of a batch that break the rules are returned
// in Invalid instead, so one bad event never holds back the others.
func DecodeMessage(subject string, data []byte) (Message, error) {
	if !IsBatchSubject(subject) {
		ev, err := Decode(data)
		if err != nil {
			return Message{}, err
		}
		return Message{Events: []*UsageEvent{ev}}, nil
	}
	var b UsageBatch
	if err := proto.Unmarshal(data, &b); err != nil {
		return Message{}, fmt.Errorf("decode usage batch: %w", err)
	}
	if !ulidRE.MatchString(b.GetBatchId()) {
		return Message{}, fmt.Errorf("%w: batch_id is not a ULID", ErrInvalid)
	}
	if len(b.GetEvents()) == 0 {
		return Message{}, fmt.Errorf("%w: batch %s holds no events", ErrInvalid, b.GetBatchId())
	}
	m := Message{BatchID: b.GetBatchId(), Events: make([]*UsageEvent, 0, len(b.GetEvents()))}
	for i, ev := range b.GetEvents() {
		if err := ev.Validate(); err != nil {
			m.Invalid = append(m.Invalid, InvalidEvent{Index: i, Event: ev, Err: err})
			continue
		}
		m.Events = append(m.Events, ev)
	}
	return m, nil
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
	if g := e.GetGrant(); g != nil {
		if g.GetCredits() <= 0 {
			errs = append(errs, errors.New("a grant's credits must be positive"))
		}
		if e.GetEndpoint() != GrantEndpoint || e.GetCredits() != 0 || e.GetUnits() != 0 {
			errs = append(errs, errors.New("a grant's endpoint must be "+GrantEndpoint+" and it charges nothing"))
		}
	} else if e.GetEndpoint() == GrantEndpoint {
		errs = append(errs, errors.New("endpoint "+GrantEndpoint+" without a grant"))
	}
	if e.IsExhausted() && (e.GetStatus() != 402 || e.GetCredits() != 0 || e.GetUnits() != 0 || e.GetGrant() != nil) {
		errs = append(errs, errors.New("an event of endpoint "+ExhaustedEndpoint+" is a 402 that charges and grants nothing"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}
