// Package worker wires the billing worker: configuration from the
// environment, Postgres, NATS, the ledger consumer and the metrics server.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // Postgres driver
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mana/apigw/billing-worker/internal/consumer"
	"github.com/mana/apigw/billing-worker/internal/ledger"
	"github.com/mana/apigw/migrations"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config is the billing worker's configuration.
type Config struct {
	DatabaseURL   string        // DATABASE_URL
	NATSURL       string        // NATS_URL
	MetricsPort   int           // METRICS_PORT; 0 disables the metrics server
	LogLevel      slog.Level    // LOG_LEVEL
	BatchSize     int           // BATCH_SIZE
	AckWait       time.Duration // ACK_WAIT
	MaxAckPending int           // MAX_ACK_PENDING
	FetchWait     time.Duration // FETCH_WAIT
	NakDelay      time.Duration // NAK_DELAY
	// HandleDelay (HANDLE_DELAY) holds every batch this long before commit; tests only.
	HandleDelay time.Duration
}

// ConfigFromEnv reads the configuration with its defaults and validates it,
// reporting every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	var errs []error
	str := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	num := func(name string, def int) int {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a non-negative integer", name, v))
		}
		return n
	}
	dur := func(name string, def time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a non-negative duration", name, v))
		}
		return d
	}
	c := Config{
		DatabaseURL:   str("DATABASE_URL", "postgres://postgres:postgres@localhost:5432/manacore?sslmode=disable"),
		NATSURL:       str("NATS_URL", nats.DefaultURL),
		MetricsPort:   num("METRICS_PORT", 9101),
		BatchSize:     num("BATCH_SIZE", 500),
		AckWait:       dur("ACK_WAIT", 30*time.Second),
		MaxAckPending: num("MAX_ACK_PENDING", 2000),
		FetchWait:     dur("FETCH_WAIT", 2*time.Second),
		NakDelay:      dur("NAK_DELAY", time.Second),
		HandleDelay:   dur("HANDLE_DELAY", 0),
	}
	if err := c.LogLevel.UnmarshalText([]byte(str("LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("DATABASE_URL is required"))
	}
	if c.NATSURL == "" {
		errs = append(errs, errors.New("NATS_URL is required"))
	}
	if c.MetricsPort < 0 || c.MetricsPort > 65535 {
		errs = append(errs, fmt.Errorf("METRICS_PORT %d is out of range", c.MetricsPort))
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, fmt.Errorf("BATCH_SIZE %d is not in 1..10000", c.BatchSize))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("ACK_WAIT %s is below 1s", c.AckWait))
	}
	if c.MaxAckPending < c.BatchSize {
		errs = append(errs, fmt.Errorf("MAX_ACK_PENDING %d is below BATCH_SIZE %d", c.MaxAckPending, c.BatchSize))
	}
	if c.FetchWait < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("FETCH_WAIT %s is below 10ms", c.FetchWait))
	}
	return errors.Join(errs...)
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
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := migrations.Apply(ctx, db.DB, logger); err != nil {
		return err
	}

	nc, err := nats.Connect(cfg.NATSURL, nats.Name("billing-worker"), nats.Timeout(5*time.Second),
		nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.ReconnectWait(500*time.Millisecond))
	if err != nil {
		return fmt.Errorf("connect nats: %w", err)
	}
	defer func() {
		if err := nc.Drain(); err != nil {
			nc.Close()
		}
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	stream, err := usagev1.EnsureStream(ctx, js, 0)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := consumer.NewMetrics("billing", reg)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	cons, err := consumer.New(ctx, consumer.Config{
		Durable: usagev1.BillingConsumer, Stream: stream, DB: db, Logger: logger, Metrics: metrics,
		Apply: Apply, Check: Check,
		BatchSize: cfg.BatchSize, AckWait: cfg.AckWait, MaxAckPending: cfg.MaxAckPending,
		FetchWait: cfg.FetchWait, NakDelay: cfg.NakDelay, HandleDelay: cfg.HandleDelay,
	})
	if err != nil {
		return err
	}

	if cfg.MetricsPort > 0 {
		srv := MetricsServer(fmt.Sprintf(":%d", cfg.MetricsPort), reg)
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.ErrorContext(ctx, "metrics server failed", "error", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	logger.InfoContext(ctx, "billing worker started", "batch_size", cfg.BatchSize, "ack_wait", cfg.AckWait)
	err = cons.Run(ctx)
	logger.InfoContext(ctx, "billing worker stopped")
	return err
}

// Apply records a batch in the ledger; it is the consumer's ApplyFunc.
func Apply(ctx context.Context, tx *sqlx.Tx, events []consumer.Event) (consumer.Applied, error) {
	entries := make([]ledger.Entry, 0, len(events))
	for _, ev := range events {
		e, err := ledger.EntryOf(ev.UsageEvent, ev.StreamSeq)
		if err != nil {
			return consumer.Applied{}, err
		}
		entries = append(entries, e)
	}
	res, err := ledger.Record(ctx, tx, entries)
	if err != nil {
		return consumer.Applied{}, err
	}
	return consumer.Applied{Inserted: res.Inserted, Duplicates: res.Duplicates}, nil
}

// Check rejects events the ledger can never hold: the key ID must be a UUID.
func Check(ev *usagev1.UsageEvent) error {
	if _, err := uuid.Parse(ev.GetKeyId()); err != nil {
		return fmt.Errorf("%w: key_id is not a UUID", usagev1.ErrInvalid)
	}
	return nil
}

// MetricsServer serves /metrics from reg and /health (always 200 while the
// process runs), with timeouts.
func MetricsServer(addr string, reg *prometheus.Registry) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	return &http.Server{
		Addr: addr, Handler: mux,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
	}
}
