// Package worker wires the billing worker: configuration from the
// environment, Postgres, NATS, the ledger consumer, the webhook delivery
// and the metrics server.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // Postgres driver
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/billing-worker/internal/alerts"
	"github.com/mana/apigw/billing-worker/internal/delivery"
	"github.com/mana/apigw/billing-worker/internal/ledger"
	"github.com/mana/apigw/migrations"
	"github.com/mana/apigw/proto/usage/consumer"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config is the billing worker's configuration: the settings every USAGE
// stream worker shares, and the webhook delivery's.
type Config struct {
	consumer.Settings
	Webhooks delivery.Config
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	return errors.Join(c.Settings.Validate(), c.Webhooks.Validate())
}

// ConfigFromEnv reads the configuration with its defaults (METRICS_PORT
// 9101; WEBHOOK_ALLOW_HOSTS empty: webhooks only to public addresses) and
// validates it, reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	s, err := consumer.SettingsFromEnv(getenv, 9101)
	allow, aerr := delivery.ParseAllowList(getenv("WEBHOOK_ALLOW_HOSTS"))
	if err := errors.Join(err, aerr); err != nil {
		return Config{}, err
	}
	return Config{Settings: s, Webhooks: delivery.Config{AllowHosts: allow}}, nil
}

// Run migrates the schema, ensures the stream and consumes until ctx is done;
// then it finishes the batch in progress, acknowledges it and returns.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	db, err := sqlx.Open("postgres", cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(8) // the ledger batch, and the webhook deliveries being recorded
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := migrations.Apply(ctx, db.DB, logger); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	dm, err := delivery.NewMetrics(reg)
	if err != nil {
		return err
	}
	sender, err := delivery.New(cfg.Webhooks, db, dm, logger)
	if err != nil {
		return err
	}
	conn, err := consumer.Connect(ctx, cfg.NATSURL, "billing-worker")
	if err != nil {
		return err
	}
	defer conn.Close()
	// The webhooks go out beside the ledger: the outbox it fills is in the
	// same database, and the worker stops sending when the ledger stops.
	// When Serve returns (an error, or ctx done), the sender is stopped
	// before it is waited for: cancel runs first.
	sctx, stopSender := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = sender.Run(sctx) })
	defer wg.Wait()
	defer stopSender()
	return consumer.Serve(ctx, cfg.Settings, conn, consumer.Worker{
		Name: "billing worker", Durable: usagev1.BillingConsumer, Namespace: "billing",
		Store: store{db}, Check: Check, Registry: reg,
	}, logger)
}

// store commits the consumer's batches to the ledger.
type store struct{ db *sqlx.DB }

func (s store) Begin(ctx context.Context) (consumer.Tx, error) {
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return batch{tx}, nil
}

// batch is one consumer batch's transaction.
type batch struct{ *sqlx.Tx }

// Apply records the events in the ledger and raises the credit alerts the
// batch crosses and the credits.granted events of its grants, in the same
// transaction.
func (b batch) Apply(ctx context.Context, events []consumer.Event) (consumer.Applied, error) {
	entries := make([]ledger.Entry, 0, len(events))
	for _, ev := range events {
		e, err := ledger.EntryOf(ev.UsageEvent, ev.StreamSeq)
		if err != nil {
			return consumer.Applied{}, err
		}
		entries = append(entries, e)
	}
	res, err := ledger.Record(ctx, b.Tx, entries)
	if err != nil {
		return consumer.Applied{}, err
	}
	if _, err := alerts.Raise(ctx, b.Tx, res.Changes, time.Now()); err != nil {
		return consumer.Applied{}, err
	}
	if err := alerts.Granted(ctx, b.Tx, res.Grants, time.Now()); err != nil {
		return consumer.Applied{}, err
	}
	return consumer.Applied{Inserted: res.Inserted, Duplicates: res.Duplicates}, nil
}

// DeadLetter keeps d in api_gateway.dead_letters.
func (b batch) DeadLetter(ctx context.Context, d consumer.DeadLetter) error {
	_, err := b.ExecContext(ctx, consumer.InsertDeadLetterSQL, d.Args()...)
	return err
}

// Check rejects events the ledger can never hold: the key ID must be a UUID.
func Check(ev *usagev1.UsageEvent) error {
	if _, err := uuid.Parse(ev.GetKeyId()); err != nil {
		return fmt.Errorf("%w: key_id is not a UUID", usagev1.ErrInvalid)
	}
	return nil
}
