// Package usage builds the usage event of each metered call and makes it
// durable before the response is released. Events are group-committed: the
// events of concurrent calls join one UsageBatch, published as one JetStream
// message (one fsync on the server) or, when NATS is away or does not
// acknowledge in time, appended to the local spool (one fsync here) and
// republished with the same batch ID once NATS is back.
package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/gateway/internal/apierr"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// PublisherConfig configures a Publisher. Zero batch limits take defaults.
type PublisherConfig struct {
	// AckTimeout bounds the wait for JetStream's acknowledgement of a batch
	// before the batch goes to the spool instead.
	AckTimeout time.Duration
	// DrainInterval is how often the spool is checked for batches to republish.
	DrainInterval time.Duration
	// GatewayID names this instance in each batch and its subject; empty
	// takes the host name.
	GatewayID string
	// MaxBatchEvents and MaxBatchBytes seal a batch early, while another is
	// still being written (defaults 256 events, 256 KiB: well under the NATS
	// default max_payload of 1 MiB).
	MaxBatchEvents int
	MaxBatchBytes  int
	// MaxInFlight bounds the batches being written at once (default 4).
	MaxInFlight int
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
	if c.MaxBatchEvents < 0 || c.MaxBatchBytes < 0 || c.MaxInFlight < 0 {
		errs = append(errs, errors.New("usage: batch limits must not be negative"))
	}
	if c.MaxBatchBytes > 900<<10 {
		errs = append(errs, errors.New("usage: MaxBatchBytes must stay below the NATS max_payload (1 MiB)"))
	}
	return errors.Join(errs...)
}

func (c *PublisherConfig) defaults() {
	if c.GatewayID == "" {
		c.GatewayID, _ = os.Hostname()
	}
	if c.MaxBatchEvents == 0 {
		c.MaxBatchEvents = 256
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = 256 << 10
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 4
	}
}

// Publisher makes usage events durable in batches. Publish is safe for
// concurrent use; each caller waits for the batch that holds its event, and
// only for that one.
type Publisher struct {
	cfg     PublisherConfig
	subject string
	nc      *nats.Conn
	js      jetstream.JetStream
	spool   *Spool
	logger  *slog.Logger

	mu       sync.Mutex // guards open, sealed, inflight
	open     *batch     // accepting events; nil when none is open
	sealed   []*batch   // full, waiting for a write slot
	inflight int        // batches being written
	writes   sync.WaitGroup

	events    *prometheus.CounterVec
	batches   *prometheus.CounterVec
	batchSize prometheus.Histogram
	wait      *prometheus.HistogramVec
	spoolSize prometheus.GaugeFunc
}

// batch is one group commit. Its events are fixed once sealed; done is
// closed when err tells its fate.
type batch struct {
	id      string
	events  []*usagev1.UsageEvent
	bytes   int
	done    chan struct{}
	err     error // nil: durable
	spooled bool  // durable in the spool rather than JetStream
}

// NewPublisher wires a publisher. reg may be nil.
func NewPublisher(cfg PublisherConfig, nc *nats.Conn, js jetstream.JetStream, spool *Spool, logger *slog.Logger, reg prometheus.Registerer) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	p := &Publisher{cfg: cfg, subject: usagev1.BatchSubject(cfg.GatewayID), nc: nc, js: js, spool: spool, logger: logger,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_usage_events_total",
			Help: "Usage events made durable, by where: jetstream, spool, republished (from the spool).",
		}, []string{"via"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_usage_batches_total",
			Help: "Usage batches made durable, by where: jetstream, spool (a spool write), republished (from the spool); failed: neither.",
		}, []string{"via"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gateway_usage_batch_events",
			Help:    "Events per usage batch (group commit size).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gateway_usage_durability_wait_seconds",
			Help:    "Time a served call waited for its usage event to become durable, by outcome: jetstream, spool, failed.",
			Buckets: []float64{.0005, .001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1, 2, 5},
		}, []string{"outcome"}),
	}
	p.spoolSize = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gateway_usage_spool_bytes",
		Help: "Bytes of usage batches waiting in the local spool.",
	}, func() float64 { return float64(spool.Size()) })
	if reg != nil {
		reg.MustRegister(p.events, p.batches, p.batchSize, p.wait, p.spoolSize)
	}
	return p, nil
}

// CanAccept reports whether a new billable call can be made durable: either
// NATS is connected or the spool has room for a small batch. A call that
// could not be billed must not be served; a batch that finds the spool full
// after all fails as a whole with ErrNotDurable, and its calls are refunded.
func (p *Publisher) CanAccept() bool {
	return p.nc.IsConnected() || !p.spool.Full(spoolReserve)
}

// spoolReserve is the room a spool must have left to accept calls while NATS
// is away: a batch of a few events.
const spoolReserve = 512

// ErrNotDurable: the event is in neither JetStream nor the spool; nothing
// will ever charge it. The call it records is refused.
var ErrNotDurable = apierr.New(apierr.Unavailable, "usage cannot be recorded right now; nothing was charged").
	RetryIn(5 * time.Second)

// ErrUncertain: the event was sent to JetStream without an answer and could
// not be spooled either, or the caller stopped waiting; it may still be
// stored (and then charged). The call it records is refused.
var ErrUncertain = apierr.New(apierr.Unavailable,
	"usage could not be confirmed in time; the call may still be charged if its record arrives").RetryIn(5 * time.Second)

// Publish returns nil once the batch holding the event is acknowledged by
// JetStream or fsynced to the spool. Otherwise it returns an error wrapping
// ErrNotDurable (it was never stored) or ErrUncertain (it may be). The event
// must not be changed after the call.
func (p *Publisher) Publish(ctx context.Context, ev *usagev1.UsageEvent) error {
	start := time.Now()
	size := proto.Size(ev) + 4 // field tag and length in the batch
	p.mu.Lock()
	b := p.open
	if b == nil {
		b = &batch{id: ulid.Make().String(), done: make(chan struct{})}
		p.open = b
	}
	b.events = append(b.events, ev)
	b.bytes += size
	if len(b.events) >= p.cfg.MaxBatchEvents || b.bytes >= p.cfg.MaxBatchBytes {
		p.sealed = append(p.sealed, b)
		p.open = nil
	}
	ready := p.startLocked()
	p.mu.Unlock()
	for _, s := range ready {
		p.writes.Add(1)
		go p.write(context.WithoutCancel(ctx), s)
	}
	select {
	case <-b.done:
	case <-ctx.Done():
		p.wait.WithLabelValues("failed").Observe(time.Since(start).Seconds())
		return fmt.Errorf("%w: %s in batch %s: %w", ErrUncertain, ev.GetEventId(), b.id, ctx.Err())
	}
	outcome := "jetstream"
	switch {
	case b.err != nil:
		outcome = "failed"
	case b.spooled:
		outcome = "spool"
	}
	p.wait.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	if b.err != nil {
		return fmt.Errorf("%s in batch %s: %w", ev.GetEventId(), b.id, b.err)
	}
	return nil
}

// startLocked takes the batches that may be written now: sealed ones while
// write slots are free, and the open one when nothing is being written (an
// idle gateway adds one write and never waits for a timer). p.mu is held.
func (p *Publisher) startLocked() []*batch {
	var out []*batch
	for p.inflight < p.cfg.MaxInFlight {
		var b *batch
		switch {
		case len(p.sealed) > 0:
			b, p.sealed = p.sealed[0], p.sealed[1:]
		case p.open != nil && p.inflight == 0:
			b, p.open = p.open, nil
		default:
			return out
		}
		p.inflight++
		out = append(out, b)
	}
	return out
}

// write makes one sealed batch durable and answers its callers, then starts
// what waited for the slot.
func (p *Publisher) write(ctx context.Context, b *batch) {
	defer p.writes.Done()
	b.err = p.store(ctx, b)
	close(b.done)
	p.batchSize.Observe(float64(len(b.events)))
	p.mu.Lock()
	p.inflight--
	next := p.startLocked()
	p.mu.Unlock()
	for _, s := range next {
		p.writes.Add(1)
		go p.write(ctx, s)
	}
}

// store publishes the batch and waits for the acknowledgement, or spools it.
func (p *Publisher) store(ctx context.Context, b *batch) error {
	data, err := proto.Marshal(&usagev1.UsageBatch{BatchId: b.id, GatewayId: p.cfg.GatewayID, SealedAt: timestamppb.Now(), Events: b.events})
	if err != nil {
		p.batches.WithLabelValues("failed").Inc()
		return fmt.Errorf("%w: marshal batch: %w", ErrNotDurable, err)
	}
	sent := false
	if p.nc.IsConnected() {
		if sent, err = p.publishAsync(ctx, b.id, data); err == nil {
			p.batches.WithLabelValues("jetstream").Inc()
			p.events.WithLabelValues("jetstream").Add(float64(len(b.events)))
			return nil
		}
		p.logger.WarnContext(ctx, "usage batch not acknowledged, spooling", "batch_id", b.id, "events", len(b.events), "err", err)
	}
	sctx, cancel := context.WithTimeout(ctx, p.cfg.AckTimeout)
	defer cancel()
	if err := p.spool.Append(sctx, encodeSpoolBatch(data)); err != nil {
		p.batches.WithLabelValues("failed").Inc()
		if sent {
			return fmt.Errorf("%w: %w", ErrUncertain, err)
		}
		return fmt.Errorf("%w: %w", ErrNotDurable, err)
	}
	b.spooled = true
	p.batches.WithLabelValues("spool").Inc()
	p.events.WithLabelValues("spool").Add(float64(len(b.events)))
	return nil
}

// publishAsync publishes and waits for the acknowledgement; sent reports
// whether the message left for the server (so that it may be stored even
// though no acknowledgement came).
func (p *Publisher) publishAsync(ctx context.Context, batchID string, data []byte) (sent bool, err error) {
	fut, err := p.js.PublishMsgAsync(&nats.Msg{Subject: p.subject, Data: data}, jetstream.WithMsgID(batchID))
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

// Wait blocks until every batch being written has its fate (for shutdown).
func (p *Publisher) Wait() { p.writes.Wait() }

// Spool records: a batch is stored as spoolBatchPrefix + the exact bytes
// published, so a republish resends the same message under the same ID.
// Records without the prefix are single UsageEvents of the older form (a
// protobuf message never starts with a zero byte: field number 0 is invalid).
var spoolBatchPrefix = []byte{0x00, 0x02}

func encodeSpoolBatch(data []byte) []byte {
	rec := make([]byte, 0, len(spoolBatchPrefix)+len(data))
	return append(append(rec, spoolBatchPrefix...), data...)
}

// Run republishes spooled batches whenever NATS is connected, until ctx ends.
func (p *Publisher) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.DrainInterval)
	defer t.Stop()
	for {
		if p.nc.IsConnected() && p.spool.Size() > 0 {
			if err := p.Drain(ctx); err != nil && ctx.Err() == nil {
				p.logger.WarnContext(ctx, "usage spool drain stopped", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Drain republishes everything in the spool, each batch with its own ID (so
// JetStream and the ledger deduplicate any that did arrive), waiting for each
// acknowledgement.
func (p *Publisher) Drain(ctx context.Context) error {
	files, err := p.spool.Rotate()
	if err != nil {
		return err
	}
	for _, f := range files {
		n, err := p.spool.Drain(ctx, f, func(ctx context.Context, rec []byte) error {
			msg, events := p.republishMsg(rec)
			actx, cancel := context.WithTimeout(ctx, 5*p.cfg.AckTimeout)
			defer cancel()
			opts := []jetstream.PublishOpt{}
			if id := msg.Header.Get(jetstream.MsgIDHeader); id != "" {
				opts = append(opts, jetstream.WithMsgID(id))
				msg.Header.Del(jetstream.MsgIDHeader)
			}
			if _, err := p.js.PublishMsg(actx, msg, opts...); err != nil {
				return fmt.Errorf("republish %s: %w", msg.Subject, err)
			}
			p.batches.WithLabelValues("republished").Inc()
			p.events.WithLabelValues("republished").Add(float64(events))
			return nil
		})
		if n > 0 {
			p.logger.InfoContext(ctx, "usage spool drained", "records", n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// republishMsg is the message a spool record is republished as, with its
// Nats-Msg-Id in the header, and the number of events it holds.
func (p *Publisher) republishMsg(rec []byte) (*nats.Msg, int) {
	msg := &nats.Msg{Header: nats.Header{}}
	if len(rec) >= len(spoolBatchPrefix) && rec[0] == spoolBatchPrefix[0] && rec[1] == spoolBatchPrefix[1] {
		msg.Data = rec[len(spoolBatchPrefix):]
		var b usagev1.UsageBatch
		if err := proto.Unmarshal(msg.Data, &b); err != nil || b.GetBatchId() == "" {
			// Cannot happen for records we wrote (they are CRC-checked);
			// publish the bytes anyway so the consumers dead-letter them.
			p.logger.Error("usage spool: undecodable batch republished for dead-lettering", "err", err)
			msg.Subject = p.subject
			return msg, 0
		}
		msg.Subject = usagev1.BatchSubject(b.GetGatewayId())
		msg.Header.Set(jetstream.MsgIDHeader, b.GetBatchId())
		return msg, len(b.GetEvents())
	}
	// A single event spooled by an older gateway.
	msg.Data = rec
	var ev usagev1.UsageEvent
	if err := proto.Unmarshal(rec, &ev); err != nil || ev.GetKeyId() == "" {
		p.logger.Error("usage spool: undecodable event republished for dead-lettering", "err", err)
		msg.Subject = usagev1.SubjectPrefix + ".invalid"
		return msg, 0
	}
	msg.Subject = usagev1.Subject(ev.GetKeyId())
	if ev.GetEventId() != "" {
		msg.Header.Set(jetstream.MsgIDHeader, ev.GetEventId())
	}
	return msg, 1
}
