// Package usage builds the usage event of each metered call and makes it
// durable before the response is released: acknowledged by JetStream, or
// appended to the local spool, which is republished (same IDs) once NATS is back.
package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// AckTimeout bounds the wait for JetStream's acknowledgement before the
	// event goes to the spool instead.
	AckTimeout time.Duration
	// DrainInterval is how often the spool is checked for events to republish.
	DrainInterval time.Duration
}

// Validate checks the configuration.
func (c PublisherConfig) Validate() error {
	var errs []error
	if c.AckTimeout <= 0 {
		errs = append(errs, errors.New("usage: AckTimeout must be positive"))
	}
	if c.DrainInterval <= 0 {
		errs = append(errs, errors.New("usage: DrainInterval must be positive"))
	}
	return errors.Join(errs...)
}

// Publisher publishes usage events durably. Publish is safe for concurrent
// use: every caller waits only for its own acknowledgement, and the waits of
// all requests in flight overlap (asynchronous publish).
type Publisher struct {
	cfg    PublisherConfig
	nc     *nats.Conn
	js     jetstream.JetStream
	spool  *Spool
	logger *slog.Logger

	published *prometheus.CounterVec
	spoolSize prometheus.GaugeFunc
}

// NewPublisher wires a publisher. reg may be nil.
func NewPublisher(cfg PublisherConfig, nc *nats.Conn, js jetstream.JetStream, spool *Spool, logger *slog.Logger, reg prometheus.Registerer) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, nc: nc, js: js, spool: spool, logger: logger,
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_usage_events_total",
			Help: "Usage events made durable, by where: jetstream, spool, republished (from the spool).",
		}, []string{"via"}),
	}
	p.spoolSize = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gateway_usage_spool_bytes",
		Help: "Bytes of usage events waiting in the local spool.",
	}, func() float64 { return float64(spool.Size()) })
	if reg != nil {
		reg.MustRegister(p.published, p.spoolSize)
	}
	return p, nil
}

// CanAccept reports whether a new billable call can be made durable: either
// NATS is connected or the spool has room. A call that could not be billed
// must not be served.
func (p *Publisher) CanAccept() bool {
	return p.nc.IsConnected() || !p.spool.Full(512)
}

// ErrNotDurable: the event is in neither JetStream nor the spool; nothing
// will ever charge it.
var ErrNotDurable = errors.New("usage event not recorded")

// ErrUncertain: the event was sent to JetStream without an answer and could
// not be spooled either; it may still be stored (and then charged).
var ErrUncertain = errors.New("usage event recording unconfirmed")

// Publish returns nil once the event is acknowledged by JetStream or fsynced
// to the spool. Otherwise it returns an error wrapping ErrNotDurable (it was
// never stored) or ErrUncertain (JetStream may have it).
func (p *Publisher) Publish(ctx context.Context, ev *usagev1.UsageEvent) error {
	data, err := proto.Marshal(ev)
	if err != nil {
		return fmt.Errorf("%w: marshal: %w", ErrNotDurable, err)
	}
	sent := false
	if p.nc.IsConnected() {
		var err error
		sent, err = p.publishAsync(ctx, ev.GetKeyId(), ev.GetEventId(), data)
		if err == nil {
			p.published.WithLabelValues("jetstream").Inc()
			return nil
		}
		p.logger.WarnContext(ctx, "usage event not acknowledged, spooling", "event_id", ev.GetEventId(), "err", err)
	}
	if err := p.spool.Append(ctx, data); err != nil {
		if sent {
			return fmt.Errorf("%w: %s: %w", ErrUncertain, ev.GetEventId(), err)
		}
		return fmt.Errorf("%w: %s: %w", ErrNotDurable, ev.GetEventId(), err)
	}
	p.published.WithLabelValues("spool").Inc()
	return nil
}

// publishAsync publishes and waits for the acknowledgement; sent reports
// whether the message left for the server (so that it may be stored even
// though no acknowledgement came).
func (p *Publisher) publishAsync(ctx context.Context, keyID, eventID string, data []byte) (sent bool, err error) {
	msg := &nats.Msg{Subject: usagev1.Subject(keyID), Data: data, Header: nats.Header{}}
	fut, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(eventID))
	if err != nil {
		return false, err
	}
	t := time.NewTimer(p.cfg.AckTimeout)
	defer t.Stop()
	select {
	case <-fut.Ok():
		return true, nil
	case err := <-fut.Err():
		return true, err
	case <-t.C:
		return true, errors.New("acknowledgement timed out")
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// Run republishes spooled events whenever NATS is connected, until ctx ends.
func (p *Publisher) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.DrainInterval)
	defer t.Stop()
	for {
		if p.nc.IsConnected() && p.spool.Size() > 0 {
			if err := p.Drain(ctx); err != nil && ctx.Err() == nil {
				p.logger.Warn("usage spool drain stopped", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Drain republishes everything in the spool, each event with its own ID (so
// JetStream and the ledger deduplicate any that did arrive), waiting for each
// acknowledgement.
func (p *Publisher) Drain(ctx context.Context) error {
	files, err := p.spool.Rotate()
	if err != nil {
		return err
	}
	for _, f := range files {
		n, err := p.spool.Drain(ctx, f, func(ctx context.Context, rec []byte) error {
			var ev usagev1.UsageEvent
			if err := proto.Unmarshal(rec, &ev); err != nil {
				// Cannot happen for records we wrote (they are CRC-checked);
				// publish the bytes anyway so the consumers dead-letter them.
				p.logger.Error("usage spool: undecodable record republished for dead-lettering", "err", err)
			}
			subject := usagev1.Subject(ev.GetKeyId())
			if ev.GetKeyId() == "" {
				subject = usagev1.SubjectPrefix + ".invalid"
			}
			actx, cancel := context.WithTimeout(ctx, 5*p.cfg.AckTimeout)
			defer cancel()
			opts := []jetstream.PublishOpt{}
			if ev.GetEventId() != "" {
				opts = append(opts, jetstream.WithMsgID(ev.GetEventId()))
			}
			if _, err := p.js.Publish(actx, subject, rec, opts...); err != nil {
				return fmt.Errorf("republish %s: %w", ev.GetEventId(), err)
			}
			p.published.WithLabelValues("republished").Inc()
			return nil
		})
		if n > 0 {
			p.logger.Info("usage spool drained", "events", n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
