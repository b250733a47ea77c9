package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/nats-io/nats.go/jetstream"
)

// The WEBHOOKS stream: every webhook event, once, as the relay took it from
// the outbox.
const (
	StreamName = "WEBHOOKS"
	// SubjectPrefix + "." + the event type is an event's subject, e.g.
	// webhooks.credits.threshold.
	SubjectPrefix = "webhooks"
	// FanOutConsumer is the durable consumer that makes the deliveries.
	FanOutConsumer = "webhooks-fanout"
	// DuplicateWindow is how long the stream remembers an event ID: a relay
	// that died between publishing and marking publishes again, and the
	// stream keeps one copy.
	DuplicateWindow = 5 * time.Minute
)

// Subject is the subject of an event of type typ.
func Subject(typ string) string { return SubjectPrefix + "." + typ }

// StreamConfig is the WEBHOOKS stream with replicas servers storing it
// (at least 1) and its messages kept for maxAge.
func StreamConfig(replicas int, maxAge time.Duration) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Mana API gateway webhook events, relayed from the outbox",
		Subjects:    []string{SubjectPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      maxAge,
		Duplicates:  DuplicateWindow,
		Discard:     jetstream.DiscardOld,
		Replicas:    max(replicas, 1),
	}
}

// EnsureStream creates the WEBHOOKS stream or brings it to StreamConfig,
// leaving a stream already as wanted alone.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int, maxAge time.Duration) (jetstream.Stream, error) {
	want := StreamConfig(replicas, maxAge)
	s, err := js.Stream(ctx, StreamName)
	if err == nil {
		cur := s.CachedInfo().Config
		if cur.MaxAge == want.MaxAge && cur.Duplicates == want.Duplicates && max(cur.Replicas, 1) == want.Replicas &&
			cur.Storage == want.Storage && len(cur.Subjects) == 1 && cur.Subjects[0] == want.Subjects[0] {
			return s, nil
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	if s, err = js.CreateOrUpdateStream(ctx, want); err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	return s, nil
}

// Message is what the relay publishes for one event. The fan-out reads only
// the ID and takes the rest from the outbox row; the other fields are for
// whoever reads the stream.
type Message struct {
	ID        string          `json:"id"`
	OwnerID   string          `json:"ownerId"`
	Type      string          `json:"type"`
	Threshold int             `json:"threshold,omitempty"`
	CreatedAt time.Time       `json:"createdAt"`
	Payload   json.RawMessage `json:"payload"`
}

// Relay publishes the outbox's events to the WEBHOOKS stream, oldest first,
// and marks each relayed once the stream stored it. Several relays share the
// outbox (FOR UPDATE SKIP LOCKED). While NATS is away the events wait in
// the outbox; none is lost.
type Relay struct {
	cfg     Config
	db      *sqlx.DB
	js      jetstream.JetStream
	metrics *Metrics
	logger  *slog.Logger
	now     func() time.Time
	ready   bool // the stream was ensured
	failing bool // the last round failed (logged once per streak)
	// afterPublish, when set (tests), runs between publishing and marking;
	// an error stops the round there, as a crash would.
	afterPublish func() error
}

// NewRelay validates cfg and returns a relay from db to js.
func NewRelay(cfg Config, db *sqlx.DB, js jetstream.JetStream, metrics *Metrics, logger *slog.Logger) (*Relay, error) {
	errs := []error{cfg.Validate()}
	if db == nil || js == nil || metrics == nil || logger == nil {
		errs = append(errs, errors.New("delivery relay: db, js, metrics and logger are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.defaults()
	return &Relay{cfg: cfg, db: db, js: js, metrics: metrics, logger: logger, now: time.Now}, nil
}

// Run relays until ctx is done.
func (r *Relay) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		for {
			n, err := r.RunOnce(ctx)
			switch {
			case err != nil && ctx.Err() == nil && !r.failing:
				r.logger.WarnContext(ctx, "webhook relay failed; the events wait in the outbox", "err", err)
				r.failing = true
			case err == nil && r.failing:
				r.logger.InfoContext(ctx, "webhook relay works again")
				r.failing = false
			}
			if n < r.cfg.Batch || err != nil || ctx.Err() != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

type outboxRow struct {
	ID        string    `db:"id"`
	OwnerID   string    `db:"owner_id"`
	Type      string    `db:"type"`
	Threshold int       `db:"threshold"`
	Payload   []byte    `db:"payload"`
	CreatedAt time.Time `db:"created_at"`
}

// RunOnce relays at most Batch events and returns how many it marked.
func (r *Relay) RunOnce(ctx context.Context) (int, error) {
	now := r.now().UTC()
	var oldest *time.Time
	if err := r.db.GetContext(ctx, &oldest, `SELECT min(created_at) FROM api_gateway.webhook_events WHERE relayed_at IS NULL`); err != nil {
		return 0, fmt.Errorf("webhook outbox lag: %w", err)
	}
	if oldest == nil {
		r.metrics.outboxLag.Set(0)
		return 0, nil
	}
	r.metrics.outboxLag.Set(max(0, now.Sub(*oldest).Seconds()))
	if !r.ready {
		ectx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		_, err := EnsureStream(ectx, r.js, r.cfg.Replicas, r.cfg.Retention)
		cancel()
		if err != nil {
			return 0, err
		}
		r.ready = true
	}
	tx, err := r.db.BeginTxx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("webhook relay: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var rows []outboxRow
	if err := tx.SelectContext(ctx, &rows, `SELECT id, owner_id, type, threshold, payload, created_at
		FROM api_gateway.webhook_events WHERE relayed_at IS NULL
		ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED`, r.cfg.Batch); err != nil {
		return 0, fmt.Errorf("read webhook outbox: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	// Every event of the batch is in flight at once; each one the stream
	// acknowledged is marked, the others wait for the next round.
	pctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, len(rows))
	var errs []error
	for i, row := range rows {
		data, err := json.Marshal(Message{ID: row.ID, OwnerID: row.OwnerID, Type: row.Type, Threshold: row.Threshold,
			CreatedAt: row.CreatedAt.UTC(), Payload: row.Payload})
		if err != nil {
			return 0, fmt.Errorf("encode webhook event %s: %w", row.ID, err)
		}
		if futures[i], err = r.js.PublishAsync(Subject(row.Type), data, jetstream.WithMsgID(row.ID),
			jetstream.WithExpectStream(StreamName)); err != nil {
			errs = append(errs, fmt.Errorf("publish webhook event %s: %w", row.ID, err))
			break
		}
	}
	var relayed []string
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
			relayed = append(relayed, rows[i].ID)
		case err := <-f.Err():
			if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) {
				r.ready = false // ensured again next round: it may have been deleted
			}
			errs = append(errs, fmt.Errorf("publish webhook event %s: %w", rows[i].ID, err))
		case <-pctx.Done():
			r.ready = false
			errs = append(errs, fmt.Errorf("publish webhook event %s: no acknowledgement: %w", rows[i].ID, pctx.Err()))
		}
	}
	if r.afterPublish != nil {
		if err := r.afterPublish(); err != nil {
			return 0, err
		}
	}
	if len(relayed) > 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE api_gateway.webhook_events SET relayed_at = $2 WHERE id = ANY($1)`,
			pq.Array(relayed), r.now().UTC()); err != nil {
			return 0, fmt.Errorf("mark webhook events relayed: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return 0, fmt.Errorf("mark webhook events relayed: %w", err)
		}
		r.metrics.relayed.Add(float64(len(relayed)))
	}
	return len(relayed), errors.Join(errs...)
}
