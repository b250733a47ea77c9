// Package app wires the aggregator binary: configuration from the
// environment, the consumer that rolls events into api_usage and
// api_usage_daily, and the replay and tail subcommands.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // Postgres driver

	"github.com/mana/apigw/aggregator/internal/rollup"
	"github.com/mana/apigw/consumer"
	"github.com/mana/apigw/consumer/process"
	"github.com/mana/apigw/migrations"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config is the aggregator's configuration: the settings every USAGE
// stream worker shares.
type Config = process.Settings

// ConfigFromEnv reads the configuration with its defaults (METRICS_PORT
// 9102) and validates it, reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	return process.SettingsFromEnv(getenv, 9102)
}

// conns are the connections every subcommand needs.
type conns struct {
	db *sqlx.DB
	*process.Conn
}

func (c *conns) close() {
	if c.Conn != nil {
		c.Conn.Close()
	}
	if c.db != nil {
		_ = c.db.Close()
	}
}

// connect opens Postgres (migrated) and NATS (with the USAGE stream ensured).
func connect(ctx context.Context, databaseURL, natsURL, name string, logger *slog.Logger) (*conns, error) {
	c := &conns{}
	db, err := sqlx.Open("postgres", databaseURL)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	c.db = db
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := migrations.Apply(ctx, db.DB, logger); err != nil {
		c.close()
		return nil, err
	}
	if c.Conn, err = process.Connect(ctx, natsURL, name); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// Run consumes the stream (durable consumer "aggregator") until ctx is done;
// then it finishes the batch in progress, acknowledges it and returns.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c, err := connect(ctx, cfg.DatabaseURL, cfg.NATSURL, "aggregator", logger)
	if err != nil {
		return err
	}
	defer c.close()

	store := rollup.NewStore(rollup.LiveSchema)
	// Partitions ahead of time: this month and the next.
	now := time.Now().UTC()
	for _, m := range []time.Time{now, now.AddDate(0, 0, 32-now.Day())} {
		if err := store.EnsurePartition(ctx, c.db, m); err != nil {
			return err
		}
	}
	go ensureAhead(ctx, store, c.db, logger)
	return process.Serve(ctx, cfg, c.Conn, process.Worker{
		Name: "aggregator", Durable: usagev1.AggregatorConsumer, Namespace: "aggregator",
		Store: batches{db: c.db, store: store},
	}, logger)
}

// batches commits the consumer's batches to api_usage and api_usage_daily.
type batches struct {
	db    *sqlx.DB
	store *rollup.Store
}

func (b batches) Begin(ctx context.Context) (consumer.Tx, error) {
	tx, err := b.db.BeginTxx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return batch{Tx: tx, batches: b}, nil
}

// batch is one consumer batch's transaction.
type batch struct {
	*sqlx.Tx
	batches
}

// Apply records the events, creating the monthly partitions they need first
// (each in its own transaction, see rollup.Store.EnsurePartition). A failed
// partition DDL is transient, whatever its SQLSTATE: it says nothing about
// the events, so it is retried and never dead-lettered.
func (b batch) Apply(ctx context.Context, events []consumer.Event) (consumer.Applied, error) {
	rows := make([]rollup.Row, len(events))
	for i, ev := range events {
		rows[i] = rollup.RowOf(ev.UsageEvent)
	}
	if err := b.store.EnsurePartitions(ctx, b.db, rows); err != nil {
		return consumer.Applied{}, fmt.Errorf("%w: %w", consumer.ErrTransient, err)
	}
	res, err := b.store.Record(ctx, b.Tx, rows)
	return consumer.Applied{Inserted: res.Inserted, Duplicates: res.Duplicates}, err
}

// DeadLetter keeps d in api_gateway.dead_letters.
func (b batch) DeadLetter(ctx context.Context, d consumer.DeadLetter) error {
	return consumer.InsertDeadLetter(ctx, b.Tx, d)
}

// ensureAhead creates next month's partition every few hours, so a month
// change never waits on DDL.
func ensureAhead(ctx context.Context, store *rollup.Store, db *sqlx.DB, logger *slog.Logger) {
	t := time.NewTicker(6 * time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := time.Now().UTC()
			if err := store.EnsurePartition(ctx, db, now.AddDate(0, 0, 32-now.Day())); err != nil {
				logger.ErrorContext(ctx, "create next partition", "err", err)
			}
		}
	}
}
