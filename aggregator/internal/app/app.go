// Package app wires the aggregator binary: configuration from the
// environment, the consumer that rolls events into api_usage and
// api_usage_daily, and the replay and tail subcommands.
package app

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

	"github.com/mana/apigw/aggregator/internal/consumer"
	"github.com/mana/apigw/aggregator/internal/rollup"
	"github.com/mana/apigw/migrations"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config is the aggregator's configuration.
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
	HandleDelay   time.Duration // HANDLE_DELAY: holds every batch before commit; tests only
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
		MetricsPort:   num("METRICS_PORT", 9102),
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

// conns are the connections every subcommand needs.
type conns struct {
	db     *sqlx.DB
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
}

func (c *conns) close() {
	if c.nc != nil {
		if err := c.nc.Drain(); err != nil {
			c.nc.Close()
		}
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
	nc, err := nats.Connect(natsURL, nats.Name(name), nats.Timeout(5*time.Second),
		nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.ReconnectWait(500*time.Millisecond))
	if err != nil {
		c.close()
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		c.close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if c.stream, err = usagev1.EnsureStream(ctx, c.js, 0); err != nil {
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := consumer.NewMetrics("aggregator", reg)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	apply := func(ctx context.Context, tx *sqlx.Tx, events []consumer.Event) (consumer.Applied, error) {
		rows := make([]rollup.Row, len(events))
		for i, ev := range events {
			rows[i] = rollup.RowOf(ev.UsageEvent)
		}
		if err := store.EnsurePartitions(ctx, c.db, rows); err != nil {
			return consumer.Applied{}, err
		}
		res, err := store.Record(ctx, tx, rows)
		return consumer.Applied{Inserted: res.Inserted, Duplicates: res.Duplicates}, err
	}
	cons, err := consumer.New(ctx, consumer.Config{
		Durable: usagev1.AggregatorConsumer, Stream: c.stream, DB: c.db, Logger: logger, Metrics: metrics,
		Apply: apply, Check: Check,
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
	logger.InfoContext(ctx, "aggregator started", "batch_size", cfg.BatchSize, "ack_wait", cfg.AckWait)
	err = cons.Run(ctx)
	logger.InfoContext(ctx, "aggregator stopped")
	return err
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
				logger.ErrorContext(ctx, "create next partition", "error", err)
			}
		}
	}
}

// Check rejects events the usage tables can never hold: the key ID must be a UUID.
func Check(ev *usagev1.UsageEvent) error {
	if _, err := uuid.Parse(ev.GetKeyId()); err != nil {
		return fmt.Errorf("%w: key_id is not a UUID", usagev1.ErrInvalid)
	}
	return nil
}

// MetricsServer serves /metrics from reg and /health, with timeouts.
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
