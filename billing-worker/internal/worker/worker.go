// Package worker wires the billing worker: configuration from the
// environment, Postgres, NATS, the ledger consumer, the webhook delivery
// and the metrics server.
package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // Postgres driver
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/billing-worker/internal/alerts"
	"github.com/mana/apigw/billing-worker/internal/delivery"
	"github.com/mana/apigw/billing-worker/internal/ledger"
	"github.com/mana/apigw/consumer"
	"github.com/mana/apigw/consumer/process"
	"github.com/mana/apigw/migrations"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config is the billing worker's configuration: the settings every USAGE
// stream worker shares, and the webhook delivery's.
type Config struct {
	process.Settings
	Webhooks delivery.Config
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	return errors.Join(c.Settings.Validate(), c.Webhooks.Validate())
}

// ConfigFromEnv reads the configuration with its defaults (METRICS_PORT
// 9101; WEBHOOK_ALLOW_HOSTS empty: webhooks only to public addresses;
// WEBHOOK_TIMEOUT 10s; WEBHOOK_LEASE the timeout of a claimed batch + 20s;
// WEBHOOK_RETENTION 720h) and validates it, reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	s, err := process.SettingsFromEnv(getenv, 9101)
	allow, aerr := delivery.ParseAllowList(getenv("WEBHOOK_ALLOW_HOSTS"))
	errs := []error{err, aerr}
	dur := func(name string, lowest time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return 0 // the default
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < lowest {
			errs = append(errs, fmt.Errorf("%s: %q is not a duration of at least %s", name, v, lowest))
		}
		return d
	}
	w := delivery.Config{AllowHosts: allow, Timeout: dur("WEBHOOK_TIMEOUT", time.Second), Lease: dur("WEBHOOK_LEASE", time.Second),
		Retention: dur("WEBHOOK_RETENTION", time.Hour)}
	if timeout := cmp.Or(w.Timeout, 10*time.Second); w.Lease > 0 && w.Lease <= timeout {
		errs = append(errs, fmt.Errorf("WEBHOOK_LEASE %s must be longer than WEBHOOK_TIMEOUT %s: a delivery is sent again once its lease ends", w.Lease, timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return Config{Settings: s, Webhooks: w}, nil
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
	db.SetMaxOpenConns(10) // the ledger batch, the webhook relay, fan-out and pruning, and the deliveries being recorded
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := migrations.Apply(ctx, db.DB, logger); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	dm, err := delivery.NewMetrics(reg)
	if err != nil {
		return err
	}
	conn, err := process.Connect(ctx, cfg.NATSURL, "billing-worker")
	if err != nil {
		return err
	}
	defer conn.Close()
	// The WEBHOOKS stream is stored by as many servers as USAGE, whose
	// replicas the gateway sets.
	wcfg := cfg.Webhooks
	if wcfg.Replicas == 0 {
		wcfg.Replicas = conn.Stream.CachedInfo().Config.Replicas
	}
	sender, err := delivery.New(wcfg, db, dm, logger)
	if err != nil {
		return err
	}
	relay, err := delivery.NewRelay(wcfg, db, conn.JS, dm, logger)
	if err != nil {
		return err
	}
	fanout, err := delivery.NewFanOut(wcfg, db, conn.JS, dm, logger, sender.Wake)
	if err != nil {
		return err
	}
	pruner, err := delivery.NewPruner(wcfg, db, dm, logger)
	if err != nil {
		return err
	}
	// The webhooks go out beside the ledger: the outbox it fills is in the
	// same database, and the worker stops relaying and sending when the
	// ledger stops. When Serve returns (an error, or ctx done), they are
	// stopped before they are waited for: cancel runs first.
	sctx, stopSender := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{relay.Run, fanout.Run, sender.Run, pruner.Run} {
		wg.Go(func() { _ = run(sctx) })
	}
	defer wg.Wait()
	defer stopSender()
	return process.Serve(ctx, cfg.Settings, conn, process.Worker{
		Name: "billing worker", Durable: usagev1.BillingConsumer, Namespace: "billing",
		Store: store{db}, Registry: reg,
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
// batch crosses or tells (a key's refusal for want of credits) and the
// credits.granted events of its grants, in the same transaction.
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
	if _, err := alerts.Raise(ctx, b.Tx, res.Changes, res.Exhausted, time.Now()); err != nil {
		return consumer.Applied{}, err
	}
	if err := alerts.Granted(ctx, b.Tx, res.Grants, time.Now()); err != nil {
		return consumer.Applied{}, err
	}
	return consumer.Applied{Inserted: res.Inserted, Duplicates: res.Duplicates}, nil
}

// DeadLetter keeps d in api_gateway.dead_letters.
func (b batch) DeadLetter(ctx context.Context, d consumer.DeadLetter) error {
	return consumer.InsertDeadLetter(ctx, b.Tx, d)
}
