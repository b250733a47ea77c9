// Package consumer runs a durable JetStream pull consumer of the USAGE stream
// in batches, the way every worker that consumes the stream does: each batch
// is decoded, applied in ONE store transaction together with the dead letters
// it produced, committed, and only then acknowledged. A failed transaction
// negatively acknowledges the batch with a backoff; a message that can never
// be processed is kept as a dead letter with its reason and terminated, never
// dropped.
//
// Delivery is at least once, so the store's Apply must be idempotent per
// event ID. The package also holds what a worker process wraps around the
// consumer: its settings from the environment, the NATS connection with the
// stream ensured, and the metrics server (see Serve).
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config configures a Consumer.
type Config struct {
	Durable string // consumer name, e.g. usagev1.BillingConsumer
	Stream  jetstream.Stream
	Store   Store
	Logger  *slog.Logger
	Metrics *Metrics
	Check   CheckFunc // optional

	BatchSize     int           // messages per transaction (default 500)
	AckWait       time.Duration // default 30s
	MaxAckPending int           // default 4 * BatchSize
	FetchWait     time.Duration // how long one fetch waits for the first message (default 2s)
	NakDelay      time.Duration // first redelivery delay after a failed batch, doubled per delivery (default 1s)
	MaxNakDelay   time.Duration // default 1m
	BatchTimeout  time.Duration // bound on one batch's transaction (default 30s)
	// HandleDelay is slept inside the transaction before commit; tests use it
	// to hold a batch past AckWait and force redeliveries. 0 in production.
	HandleDelay time.Duration
}

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Durable == "" {
		errs = append(errs, errors.New("durable name is required"))
	}
	if c.Stream == nil {
		errs = append(errs, errors.New("stream is required"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("store is required"))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("logger is required"))
	}
	if c.Metrics == nil {
		errs = append(errs, errors.New("metrics are required"))
	}
	if c.BatchSize < 0 || c.MaxAckPending < 0 || c.AckWait < 0 || c.FetchWait < 0 || c.HandleDelay < 0 {
		errs = append(errs, errors.New("sizes and durations must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 4 * c.BatchSize
	}
	def(&c.AckWait, 30*time.Second)
	def(&c.FetchWait, 2*time.Second)
	def(&c.NakDelay, time.Second)
	def(&c.MaxNakDelay, time.Minute)
	def(&c.BatchTimeout, 30*time.Second)
}

// Consumer is one process's share of a durable pull consumer.
type Consumer struct {
	cfg  Config
	cons jetstream.Consumer
	log  *slog.Logger
	m    *Metrics
}

// New creates or updates the durable consumer on the stream.
func New(ctx context.Context, cfg Config) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consumer config: %w", err)
	}
	cfg.defaults()
	cons, err := cfg.Stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		Description:   "Mana API gateway " + cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxAckPending: cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: usagev1.SubjectWildcard,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", cfg.Durable, err)
	}
	return &Consumer{cfg: cfg, cons: cons, log: cfg.Logger.With("consumer", cfg.Durable), m: cfg.Metrics}, nil
}

// Run fetches and applies batches until ctx is done. A batch in progress when
// ctx ends is finished, committed and acknowledged before Run returns.
func (c *Consumer) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		msgs, err := c.fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			c.log.WarnContext(ctx, "fetch failed", "error", err)
			_ = sleep(ctx, time.Second)
			continue
		}
		if len(msgs) == 0 {
			c.refreshPending(ctx)
			continue
		}
		// The batch runs to its end even when shutdown starts meanwhile.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.BatchTimeout+c.cfg.HandleDelay)
		c.handle(bctx, msgs)
		cancel()
	}
	return nil
}

// fetch waits up to FetchWait for the first message, then takes whatever
// else is already available, up to BatchSize: low latency when idle, big
// batches under load.
func (c *Consumer) fetch(ctx context.Context) ([]jetstream.Msg, error) {
	fctx, cancel := context.WithTimeout(ctx, c.cfg.FetchWait)
	defer cancel()
	first, err := c.cons.Fetch(1, jetstream.FetchContext(fctx))
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	var msgs []jetstream.Msg
	for m := range first.Messages() {
		msgs = append(msgs, m)
	}
	if err := first.Error(); err != nil && len(msgs) == 0 {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return nil, nil // nothing arrived within FetchWait
		}
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if len(msgs) == 0 || c.cfg.BatchSize == 1 {
		return msgs, nil
	}
	rest, err := c.cons.FetchNoWait(c.cfg.BatchSize - 1)
	if err != nil {
		return msgs, nil // the first message alone is a batch
	}
	for m := range rest.Messages() {
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func (c *Consumer) refreshPending(ctx context.Context) {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if info, err := c.cons.Info(ictx); err == nil {
		c.m.pending.Set(float64(info.NumPending))
	}
}

// item is one message of a batch with what decoding made of it.
type item struct {
	msg    jetstream.Msg
	meta   *jetstream.MsgMetadata
	events []*usagev1.UsageEvent // the message's events (one, or a batch's)
	reason string                // non-empty: dead letter
}

func (c *Consumer) handle(ctx context.Context, msgs []jetstream.Msg) {
	start := time.Now()
	items := make([]item, 0, len(msgs))
	for _, m := range msgs {
		it := item{msg: m}
		meta, err := m.Metadata()
		if err != nil {
			// Not a JetStream message: it cannot be acknowledged or dead-lettered by sequence.
			c.log.ErrorContext(ctx, "message without metadata", "subject", m.Subject(), "error", err)
			continue
		}
		it.meta = meta
		if meta.NumDelivered > 1 {
			c.m.redelivered.Inc()
		}
		dm, err := usagev1.DecodeMessage(m.Subject(), m.Data())
		if err == nil && len(dm.Invalid) > 0 {
			err = fmt.Errorf("batch %s: event %d: %w", dm.BatchID, dm.Invalid[0].Index, dm.Invalid[0].Err)
		}
		for _, ev := range dm.Events {
			if err == nil && c.cfg.Check != nil {
				err = c.cfg.Check(ev)
			}
		}
		if err != nil {
			it.reason = err.Error()
		} else {
			it.events = dm.Events
		}
		items = append(items, it)
	}
	if len(items) == 0 {
		return
	}
	c.m.batchSize.Observe(float64(len(items)))
	c.m.pending.Set(float64(items[len(items)-1].meta.NumPending))

	err := c.commit(ctx, items)
	if err != nil && isPermanent(err) && len(items) > 1 {
		// One poisonous event must not block the others: apply one by one.
		c.log.WarnContext(ctx, "batch rejected by the database, retrying message by message", "error", err, "size", len(items))
		for _, it := range items {
			c.settleOne(ctx, it)
		}
		return
	}
	if err != nil && isPermanent(err) {
		c.settleOne(ctx, items[0])
		return
	}
	c.settle(ctx, items, err)
	c.m.batchTime.Observe(time.Since(start).Seconds())
}

func (c *Consumer) settleOne(ctx context.Context, it item) {
	err := c.commit(ctx, []item{it})
	if err != nil && isPermanent(err) {
		it.events, it.reason = nil, "rejected by the database: "+err.Error()
		err = c.commit(ctx, []item{it})
	}
	c.settle(ctx, []item{it}, err)
}

// commit applies the events and writes the dead letters in one transaction.
func (c *Consumer) commit(ctx context.Context, items []item) (err error) {
	tx, err := c.cfg.Store.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var events []Event
	for _, it := range items {
		if it.reason == "" {
			for _, ev := range it.events {
				events = append(events, Event{UsageEvent: ev, StreamSeq: it.meta.Sequence.Stream, NumDelivered: it.meta.NumDelivered})
			}
			continue
		}
		if err := tx.DeadLetter(ctx, c.deadLetter(it)); err != nil {
			return fmt.Errorf("insert dead letter: %w", err)
		}
	}
	var applied Applied
	if len(events) > 0 {
		if applied, err = tx.Apply(ctx, events); err != nil {
			return err
		}
	}
	if c.cfg.HandleDelay > 0 {
		if err := sleep(ctx, c.cfg.HandleDelay); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	c.m.processed.Add(float64(applied.Inserted))
	c.m.duplicates.Add(float64(applied.Duplicates))
	return nil
}

func (c *Consumer) deadLetter(it item) DeadLetter {
	payload := it.msg.Data()
	if payload == nil {
		payload = []byte{}
	}
	return DeadLetter{
		Consumer: c.cfg.Durable, StreamSeq: it.meta.Sequence.Stream, Subject: it.msg.Subject(),
		MsgID: it.msg.Headers().Get(jetstream.MsgIDHeader), Payload: payload, Reason: it.reason,
	}
}

// settle acknowledges a committed batch (Term for dead letters) or negatively
// acknowledges a failed one with a backoff growing with the delivery count.
func (c *Consumer) settle(ctx context.Context, items []item, err error) {
	if err != nil {
		c.m.batchErrors.Inc()
		c.log.ErrorContext(ctx, "batch failed, redelivering", "error", err, "size", len(items))
		for _, it := range items {
			if nerr := it.msg.NakWithDelay(c.backoff(it.meta.NumDelivered)); nerr != nil {
				c.log.WarnContext(ctx, "nak failed", "stream_seq", it.meta.Sequence.Stream, "error", nerr)
			}
		}
		return
	}
	for _, it := range items {
		var aerr error
		if it.reason != "" {
			c.m.deadLetters.Inc()
			c.log.WarnContext(ctx, "message dead-lettered", "stream_seq", it.meta.Sequence.Stream,
				"subject", it.msg.Subject(), "reason", it.reason)
			aerr = it.msg.TermWithReason("dead-lettered")
		} else {
			aerr = it.msg.Ack()
		}
		if aerr != nil {
			// The rows are committed; a redelivery will be a harmless duplicate.
			c.log.WarnContext(ctx, "ack failed", "stream_seq", it.meta.Sequence.Stream, "error", aerr)
		}
	}
}

func (c *Consumer) backoff(delivered uint64) time.Duration {
	d := c.cfg.NakDelay
	for i := uint64(1); i < delivered && d < c.cfg.MaxNakDelay; i++ {
		d *= 2
	}
	return min(d, c.cfg.MaxNakDelay)
}

// isPermanent tells a database rejection of the data (SQLSTATE classes 22
// data exception and 23 integrity violation) from a transient failure.
func isPermanent(err error) bool {
	var coded interface{ SQLState() string }
	if !errors.As(err, &coded) {
		return false
	}
	state := coded.SQLState()
	return strings.HasPrefix(state, "22") || strings.HasPrefix(state, "23")
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
