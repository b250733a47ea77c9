// Package process is what a worker process that consumes the USAGE stream
// (billing-worker, aggregator) wraps around its consumer: its settings from
// the environment, the NATS connection with the stream ensured, and Serve,
// which runs the consumer beside the metrics and health server until
// shutdown. The consumer loop itself is package consumer.
package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mana/apigw/consumer"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Conn is a NATS connection with the USAGE stream ensured.
type Conn struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Stream jetstream.Stream
}

// Connect connects to NATS as name (retrying and reconnecting for ever, so
// a worker may start before NATS) and creates or updates the USAGE stream.
func Connect(ctx context.Context, natsURL, name string) (*Conn, error) {
	nc, err := nats.Connect(natsURL, nats.Name(name), nats.Timeout(5*time.Second),
		nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.ReconnectWait(500*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	c := &Conn{NC: nc}
	if c.JS, err = jetstream.New(nc); err != nil {
		c.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if c.Stream, err = usagev1.EnsureStream(ctx, c.JS, 0); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close drains the connection (closing it when draining fails).
func (c *Conn) Close() {
	if err := c.NC.Drain(); err != nil {
		c.NC.Close()
	}
}

// Worker is what one worker binary plugs into Serve.
type Worker struct {
	Name      string // for the logs: "<Name> started"
	Durable   string // the durable consumer, e.g. usagev1.BillingConsumer
	Namespace string // of the metrics, e.g. "billing"
	Store     consumer.Store
	Check     consumer.CheckFunc // optional
	// Registry, when set, is where the metrics server's series are
	// gathered, so the worker can add its own; nil means a fresh one.
	Registry *prometheus.Registry
}

// Serve runs w's consumer on conn's stream with the settings' consumer
// knobs, and the metrics server (Go and process collectors, the consumer's
// series, /health reporting the consumer's Health) on METRICS_PORT unless it
// is 0, until ctx is done; then it finishes the batch in progress,
// acknowledges it, stops the metrics server and returns.
func Serve(ctx context.Context, s Settings, conn *Conn, w Worker, logger *slog.Logger) error {
	reg := w.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := consumer.NewMetrics(w.Namespace, reg)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	cons, err := consumer.New(ctx, consumer.Config{
		Durable: w.Durable, Stream: conn.Stream, JS: conn.JS, Store: w.Store, Logger: logger, Metrics: metrics, Check: w.Check,
		BatchSize: s.BatchSize, BatchEvents: s.BatchEvents, AckWait: s.AckWait, MaxAckPending: s.MaxAckPending,
		FetchWait: s.FetchWait, NakDelay: s.NakDelay, StaleAfter: s.StaleAfter, HandleDelay: s.HandleDelay,
	})
	if err != nil {
		return err
	}
	if s.MetricsPort > 0 {
		srv := MetricsServer(fmt.Sprintf(":%d", s.MetricsPort), reg, cons.Health)
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.ErrorContext(ctx, "metrics server failed", "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	logger.InfoContext(ctx, w.Name+" started", "batch_size", s.BatchSize, "batch_events", s.BatchEvents, "ack_wait", s.AckWait)
	err = cons.Run(ctx)
	logger.InfoContext(ctx, w.Name+" stopped")
	return err
}
