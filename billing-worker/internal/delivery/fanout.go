package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mana/apigw/proto/webhook"
)

// FanOut consumes the WEBHOOKS stream (durable consumer FanOutConsumer,
// shared by every worker) and makes each event's deliveries, one per
// endpoint that subscribes to it, in one transaction per fetched batch;
// the messages are acknowledged after the commit. A redelivered message
// makes nothing new (the deliveries are unique per event and endpoint).
type FanOut struct {
	cfg     Config
	db      *sqlx.DB
	js      jetstream.JetStream
	metrics *Metrics
	logger  *slog.Logger
	// wake, when set, is told that new deliveries are due.
	wake func()
	now  func() time.Time
}

// NewFanOut validates cfg and returns a fan-out from js to db; wake (may be
// nil) is called after each batch that made deliveries, e.g. Worker.Wake.
func NewFanOut(cfg Config, db *sqlx.DB, js jetstream.JetStream, metrics *Metrics, logger *slog.Logger, wake func()) (*FanOut, error) {
	errs := []error{cfg.Validate()}
	if db == nil || js == nil || metrics == nil || logger == nil {
		errs = append(errs, errors.New("delivery fan-out: db, js, metrics and logger are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.defaults()
	return &FanOut{cfg: cfg, db: db, js: js, metrics: metrics, logger: logger, wake: wake, now: time.Now}, nil
}

func (f *FanOut) consumer(ctx context.Context) (jetstream.Consumer, error) {
	ectx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	s, err := EnsureStream(ectx, f.js, f.cfg.Replicas, f.cfg.Retention)
	if err != nil {
		return nil, err
	}
	c, err := s.CreateOrUpdateConsumer(ectx, jetstream.ConsumerConfig{
		Durable:       FanOutConsumer,
		Description:   "makes the webhook deliveries of each event",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 10 * f.cfg.Batch,
		FilterSubject: SubjectPrefix + ".>",
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s: %w", FanOutConsumer, err)
	}
	return c, nil
}

// Run fans out until ctx is done. While NATS is away it tries again every
// Poll.
func (f *FanOut) Run(ctx context.Context) error {
	var cons jetstream.Consumer
	failing := false
	for ctx.Err() == nil {
		var err error
		if cons == nil {
			cons, err = f.consumer(ctx)
		}
		if err == nil {
			err = f.fetch(ctx, cons)
		}
		if err == nil {
			if failing {
				f.logger.InfoContext(ctx, "webhook fan-out works again")
				failing = false
			}
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if !failing {
			f.logger.WarnContext(ctx, "webhook fan-out failed; trying again", "err", err)
			failing = true
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
			errors.Is(err, jetstream.ErrNoHeartbeat) {
			cons = nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(f.cfg.Poll):
		}
	}
	return nil
}

// fetch takes one batch (waiting up to Poll for its first message) and
// makes its deliveries.
func (f *FanOut) fetch(ctx context.Context, cons jetstream.Consumer) error {
	batch, err := cons.Fetch(f.cfg.Batch, jetstream.FetchMaxWait(max(f.cfg.Poll, time.Second)))
	if err != nil {
		return fmt.Errorf("fetch webhook events: %w", err)
	}
	var msgs []jetstream.Msg
	var ids []string
	for m := range batch.Messages() {
		var ev Message
		if err := json.Unmarshal(m.Data(), &ev); err != nil || ev.ID == "" {
			f.logger.ErrorContext(ctx, "webhook stream message is not an event; dropped", "subject", m.Subject(), "err", err)
			_ = m.Term()
			continue
		}
		msgs = append(msgs, m)
		ids = append(ids, ev.ID)
	}
	if err := batch.Error(); err != nil && len(msgs) == 0 && !errors.Is(err, jetstream.ErrNoMessages) &&
		!errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("fetch webhook events: %w", err)
	}
	if len(msgs) == 0 {
		return nil
	}
	n, err := f.apply(ctx, ids)
	if err != nil {
		for _, m := range msgs {
			_ = m.NakWithDelay(f.cfg.Poll)
		}
		return err
	}
	for _, m := range msgs {
		// A lost acknowledgement only redelivers the message, which makes
		// nothing new.
		if err := m.Ack(); err != nil {
			f.logger.WarnContext(ctx, "acknowledge webhook event", "err", err)
		}
	}
	f.metrics.created.Add(float64(n))
	if n > 0 && f.wake != nil {
		f.wake()
	}
	return nil
}

func (f *FanOut) apply(ctx context.Context, ids []string) (int64, error) {
	tx, err := f.db.BeginTxx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("webhook fan-out: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	n, err := webhook.FanOut(ctx, tx, ids, f.now())
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("webhook fan-out: commit: %w", err)
	}
	return n, nil
}
