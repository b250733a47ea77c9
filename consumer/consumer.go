// Package consumer runs a durable JetStream pull consumer of the USAGE stream
// the way every worker that consumes the stream does. A message is either a
// UsageBatch (the group commit: dozens of events) or, in the older form, one
// UsageEvent. The events of a fetched set of messages are applied in ONE
// store transaction together with the dead letters the set produced,
// committed, and only then is each message acknowledged. A failed
// transaction negatively acknowledges the set with a backoff. What can never
// be processed is kept as a dead letter with its reason, never dropped: a
// whole message that does not decode (and is terminated), or a single event
// of a batch that breaks the rules or that the database rejects (the rest of
// its batch is applied).
//
// Delivery is at least once, so the store's Apply must be idempotent per
// event ID. The consumer keeps itself alive: a durable consumer or stream
// deleted under it is re-created, and Health reports a consumer that has not
// fetched successfully for a while. What a worker process wraps around the
// consumer (settings, connection, metrics server) is package process; the
// schema it reads is proto/usage/v1.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config configures a Consumer.
type Config struct {
	Durable string // consumer name, e.g. usagev1.BillingConsumer
	Stream  jetstream.Stream
	// JS (optional) lets the consumer re-create the USAGE stream when it
	// was deleted; without it only the durable consumer is re-created.
	JS      jetstream.JetStream
	Store   Store
	Logger  *slog.Logger
	Metrics *Metrics
	// Check (optional) rejects what this consumer can never process, beyond
	// what every consumer rejects (usagev1 Validate, CheckKeyID).
	Check CheckFunc

	// BatchSize bounds the messages of one fetched set (one transaction),
	// BatchEvents its events: a fetch stops asking for more messages once
	// the events it holds reach BatchEvents (a message is never split, so a
	// set may exceed it by one message's events).
	BatchSize     int           // default 500
	BatchEvents   int           // default 5000
	AckWait       time.Duration // default 30s
	MaxAckPending int           // messages delivered and not yet acknowledged; default 4 * BatchSize
	FetchWait     time.Duration // how long one fetch waits for the first message (default 2s)
	NakDelay      time.Duration // first redelivery delay after a failed batch, doubled per delivery (default 1s)
	MaxNakDelay   time.Duration // default 1m
	BatchTimeout  time.Duration // bound on one transaction (default 30s)
	// StaleAfter is how long without a successful fetch (or commit) makes
	// Health report the consumer as stuck (default 2m).
	StaleAfter time.Duration
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
	if c.BatchSize < 0 || c.BatchEvents < 0 || c.MaxAckPending < 0 || c.AckWait < 0 || c.FetchWait < 0 ||
		c.HandleDelay < 0 || c.StaleAfter < 0 {
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
	if c.BatchEvents == 0 {
		c.BatchEvents = 5000
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 4 * c.BatchSize
	}
	def(&c.AckWait, 30*time.Second)
	def(&c.FetchWait, 2*time.Second)
	def(&c.NakDelay, time.Second)
	def(&c.MaxNakDelay, time.Minute)
	def(&c.BatchTimeout, 30*time.Second)
	def(&c.StaleAfter, 2*time.Minute)
}

// Consumer is one process's share of a durable pull consumer. Run is called
// once; Health may be called from any goroutine.
type Consumer struct {
	cfg    Config
	stream jetstream.Stream   // owned by Run
	cons   jetstream.Consumer // owned by Run
	infoAt time.Time          // last consumer info read, owned by Run
	log    *slog.Logger
	m      *Metrics

	mu      sync.Mutex
	lastOK  time.Time // last successful fetch or commit
	lastErr error     // last fetch failure since then
}

// New creates or updates the durable consumer on the stream.
func New(ctx context.Context, cfg Config) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consumer config: %w", err)
	}
	cfg.defaults()
	c := &Consumer{cfg: cfg, stream: cfg.Stream, log: cfg.Logger.With("consumer", cfg.Durable), m: cfg.Metrics, lastOK: time.Now()}
	cons, err := c.create(ctx)
	if err != nil {
		return nil, err
	}
	c.cons = cons
	return c, nil
}

func (c *Consumer) create(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := c.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       c.cfg.Durable,
		Description:   "Mana API gateway " + c.cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		MaxAckPending: c.cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: usagev1.SubjectWildcard,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", c.cfg.Durable, err)
	}
	return cons, nil
}

// Run fetches and applies sets of messages until ctx is done. A set in
// progress when ctx ends is finished, committed and acknowledged before Run
// returns. A fetch that fails makes it check that the durable consumer and
// the stream still exist, and re-create what is gone.
func (c *Consumer) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		parts, err := c.fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			c.failed(err)
			c.log.WarnContext(ctx, "fetch failed", "err", err)
			if rerr := c.ensure(ctx); rerr != nil && ctx.Err() == nil {
				c.log.WarnContext(ctx, "check of the durable consumer failed", "err", rerr)
			}
			_ = sleep(ctx, time.Second)
			continue
		}
		if len(parts) == 0 {
			c.refreshPending(ctx)
			continue
		}
		// The set runs to its end even when shutdown starts meanwhile.
		c.handle(context.WithoutCancel(ctx), parts)
		if time.Since(c.infoAt) >= infoEvery {
			c.refreshPending(ctx) // the ack floor lag, also while busy
		}
	}
	return nil
}

// Health is nil while the consumer fetches: it reports an error when no
// fetch (or commit) succeeded for StaleAfter, e.g. because NATS is away or
// the consumer cannot be re-created.
func (c *Consumer) Health() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if since := time.Since(c.lastOK); since > c.cfg.StaleAfter {
		if c.lastErr != nil {
			return fmt.Errorf("consumer %s: no successful fetch for %s: %w", c.cfg.Durable, since.Round(time.Second), c.lastErr)
		}
		return fmt.Errorf("consumer %s: no successful fetch for %s", c.cfg.Durable, since.Round(time.Second))
	}
	return nil
}

func (c *Consumer) succeeded() {
	c.mu.Lock()
	c.lastOK, c.lastErr = time.Now(), nil
	c.mu.Unlock()
	c.m.lastFetch.SetToCurrentTime()
}

func (c *Consumer) failed(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
	c.m.fetchErrors.Inc()
}

// ensure re-creates the durable consumer, and the stream first when it is
// gone too. The re-created consumer delivers the stream from its start
// again: the events already applied come back as duplicates and change
// nothing, and no message another process had in flight is lost.
func (c *Consumer) ensure(ctx context.Context) error {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := c.stream.Consumer(ictx, c.cfg.Durable)
	switch {
	case err == nil:
		return nil // it exists: the failure was elsewhere
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if c.cfg.JS == nil {
			return fmt.Errorf("stream %s is gone: %w", usagev1.StreamName, err)
		}
		s, err := usagev1.EnsureStream(ictx, c.cfg.JS, 0)
		if err != nil {
			return err
		}
		c.stream = s
		c.m.recreated.WithLabelValues("stream").Inc()
		c.log.WarnContext(ctx, "stream was deleted; re-created it", "stream", usagev1.StreamName)
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	default:
		return fmt.Errorf("consumer info: %w", err)
	}
	cons, err := c.create(ictx)
	if err != nil {
		return err
	}
	c.cons = cons
	c.m.recreated.WithLabelValues("consumer").Inc()
	c.log.WarnContext(ctx, "durable consumer was deleted; re-created it, reading the stream from its start (applied events are duplicates)")
	return nil
}

// fetch waits up to FetchWait for the first message, then takes whatever
// else is already available, up to BatchSize messages and about BatchEvents
// events: low latency when idle, big sets under load. It returns the
// messages decoded.
func (c *Consumer) fetch(ctx context.Context) ([]*part, error) {
	fctx, cancel := context.WithTimeout(ctx, c.cfg.FetchWait)
	defer cancel()
	first, err := c.cons.Fetch(1, jetstream.FetchContext(fctx))
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	msgs := collect(first)
	if err := first.Error(); err != nil && len(msgs) == 0 {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// The server did not even answer with its timeout: no
			// failure to act on, no success either (Health).
			return nil, nil
		}
		return nil, fmt.Errorf("fetch: %w", err)
	}
	c.succeeded() // the server answered, with a message or its timeout
	parts := c.decode(ctx, msgs)
	events := eventCount(parts)
	for len(msgs) > 0 && len(parts) > 0 && len(parts) < c.cfg.BatchSize && events < c.cfg.BatchEvents {
		// As many messages as the event budget holds at the events per
		// message seen so far.
		perMsg := max(1, events/len(parts))
		n := min(c.cfg.BatchSize-len(parts), max(1, (c.cfg.BatchEvents-events)/perMsg))
		rest, err := c.cons.FetchNoWait(n)
		if err != nil {
			break // what is fetched is a set
		}
		msgs = collect(rest)
		more := c.decode(ctx, msgs)
		parts = append(parts, more...)
		events += eventCount(more)
		if len(msgs) < n {
			break
		}
	}
	return parts, nil
}

func collect(b jetstream.MessageBatch) []jetstream.Msg {
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	return msgs
}

// infoEvery is how often a busy consumer reads its info for the lag gauges.
const infoEvery = 5 * time.Second

// refreshPending reads the consumer's info into the lag gauges: messages not
// yet delivered, and delivered messages beyond the ack floor.
func (c *Consumer) refreshPending(ctx context.Context) {
	c.infoAt = time.Now()
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if info, err := c.cons.Info(ictx); err == nil {
		c.m.pending.Set(float64(info.NumPending))
		c.m.ackFloorLag.Set(float64(info.Delivered.Stream - min(info.AckFloor.Stream, info.Delivered.Stream)))
	}
}

// part is one message of a fetched set with what decoding made of it.
type part struct {
	msg    jetstream.Msg
	meta   *jetstream.MsgMetadata
	batch  bool         // a UsageBatch, not the older one-event form
	events []Event      // to apply
	dead   []DeadLetter // what can never be processed
	whole  bool         // the message itself is a dead letter: terminate it
}

func eventCount(parts []*part) int {
	n := 0
	for _, p := range parts {
		n += len(p.events)
	}
	return n
}

// decode turns messages into parts: valid events to apply and dead letters
// for what breaks the rules (Validate, CheckKeyID, then Check).
func (c *Consumer) decode(ctx context.Context, msgs []jetstream.Msg) []*part {
	parts := make([]*part, 0, len(msgs))
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			// Not a JetStream message: it cannot be acknowledged or dead-lettered by sequence.
			c.log.ErrorContext(ctx, "message without metadata", "subject", m.Subject(), "err", err)
			continue
		}
		if meta.NumDelivered > 1 {
			c.m.redelivered.Inc()
		}
		p := &part{msg: m, meta: meta, batch: usagev1.IsBatchSubject(m.Subject())}
		parts = append(parts, p)
		dm, err := usagev1.DecodeMessage(m.Subject(), m.Data())
		if err != nil {
			p.kill(c.deadLetter(p, -1, nil, err.Error()))
			continue
		}
		for _, inv := range dm.Invalid {
			p.dead = append(p.dead, c.deadLetter(p, inv.Index, inv.Event, inv.Err.Error()))
		}
		pos := positions(dm)
		for i, ev := range dm.Events {
			idx := -1
			if p.batch {
				idx = pos[i]
			}
			if err := c.check(ev); err != nil {
				if !p.batch {
					p.kill(c.deadLetter(p, -1, nil, err.Error()))
					break
				}
				p.dead = append(p.dead, c.deadLetter(p, idx, ev, err.Error()))
				continue
			}
			p.events = append(p.events, Event{UsageEvent: ev, StreamSeq: meta.Sequence.Stream, NumDelivered: meta.NumDelivered, Index: idx})
		}
	}
	return parts
}

// check applies CheckKeyID, then Config.Check.
func (c *Consumer) check(ev *usagev1.UsageEvent) error {
	if err := CheckKeyID(ev); err != nil {
		return err
	}
	if c.cfg.Check != nil {
		return c.cfg.Check(ev)
	}
	return nil
}

// positions are the indexes in its batch of m's valid events: the
// positions the invalid ones leave, in order.
func positions(m usagev1.Message) []int {
	bad := make(map[int]bool, len(m.Invalid))
	for _, inv := range m.Invalid {
		bad[inv.Index] = true
	}
	pos := make([]int, 0, len(m.Events))
	for i := 0; len(pos) < len(m.Events); i++ {
		if !bad[i] {
			pos = append(pos, i)
		}
	}
	return pos
}

// kill makes the whole message the dead letter d.
func (p *part) kill(d DeadLetter) {
	p.events, p.dead, p.whole = nil, []DeadLetter{d}, true
}

func (c *Consumer) handle(ctx context.Context, parts []*part) {
	start := time.Now()
	events := eventCount(parts)
	c.m.batchSize.Observe(float64(len(parts)))
	c.m.batchEvents.Observe(float64(events))
	c.m.pending.Set(float64(parts[len(parts)-1].meta.NumPending))

	err := c.commit(ctx, parts)
	if err != nil && Permanent(err) {
		// One poisonous event must not block the others: narrow down to
		// the message, then to the event.
		c.log.WarnContext(ctx, "batch rejected by the database, retrying message by message",
			"err", err, "messages", len(parts), "events", events)
		for _, p := range parts {
			perr := error(nil)
			if len(parts) > 1 {
				perr = c.commit(ctx, []*part{p})
			}
			if len(parts) == 1 || (perr != nil && Permanent(perr)) {
				perr = c.narrow(ctx, p)
			}
			c.settle(ctx, p, perr)
		}
		return
	}
	for _, p := range parts {
		c.settle(ctx, p, err)
	}
	c.m.batchTime.Observe(time.Since(start).Seconds())
}

// narrow commits one message the database rejected, piece by piece: its
// dead letters, then each event in a transaction of its own. An event
// rejected alone becomes a dead letter, so one poisonous event never holds
// back its batch-mates. A transient error stops it: the message is
// redelivered, and what was committed is then a harmless duplicate.
func (c *Consumer) narrow(ctx context.Context, p *part) error {
	events := p.events
	if len(p.dead) > 0 {
		if err := c.commit(ctx, []*part{{msg: p.msg, meta: p.meta, dead: p.dead}}); err != nil {
			return err
		}
	}
	for _, ev := range events {
		one := &part{msg: p.msg, meta: p.meta, events: []Event{ev}}
		err := c.commit(ctx, []*part{one})
		if err != nil && Permanent(err) {
			d := c.deadLetter(p, ev.Index, ev.UsageEvent, "rejected by the database: "+err.Error())
			if err = c.commit(ctx, []*part{{msg: p.msg, meta: p.meta, dead: []DeadLetter{d}}}); err == nil {
				if p.batch {
					p.dead = append(p.dead, d)
				} else {
					p.kill(d)
				}
			}
		}
		if err != nil {
			return err
		}
	}
	if p.batch {
		p.events = nil // settled piece by piece
	}
	return nil
}

// commit applies the events and writes the dead letters of parts in one
// transaction, bounded by BatchTimeout.
func (c *Consumer) commit(ctx context.Context, parts []*part) (err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.BatchTimeout+c.cfg.HandleDelay)
	defer cancel()
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
	for _, p := range parts {
		for _, d := range p.dead {
			if err := tx.DeadLetter(ctx, d); err != nil {
				return fmt.Errorf("insert dead letter: %w", err)
			}
		}
		events = append(events, p.events...)
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
	c.succeeded()
	c.m.processed.Add(float64(applied.Inserted))
	c.m.duplicates.Add(float64(applied.Duplicates))
	return nil
}

// deadLetter builds the dead letter of p's whole message (index -1) or of
// its event ev at index.
func (c *Consumer) deadLetter(p *part, index int, ev *usagev1.UsageEvent, reason string) DeadLetter {
	d := DeadLetter{
		Consumer: c.cfg.Durable, StreamSeq: p.meta.Sequence.Stream, EventIndex: -1,
		Subject: clean(p.msg.Subject()), MsgID: clean(p.msg.Headers().Get(jetstream.MsgIDHeader)),
		Payload: p.msg.Data(), Reason: clean(reason),
	}
	if index >= 0 && ev != nil {
		d.EventIndex, d.EventID = index, clean(ev.GetEventId())
		if b, err := proto.Marshal(ev); err == nil {
			d.Payload = b
		}
	}
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	return d
}

// clean makes s storable in a text column (valid UTF-8, no NUL).
func clean(s string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
}

// settle acknowledges a committed message (Term when the whole message is
// a dead letter) or negatively acknowledges a failed one with a backoff
// growing with its delivery count.
func (c *Consumer) settle(ctx context.Context, p *part, err error) {
	seq := p.meta.Sequence.Stream
	if err != nil {
		c.m.batchErrors.Inc()
		c.log.ErrorContext(ctx, "transaction failed, redelivering", "err", err, "stream_seq", seq)
		if nerr := p.msg.NakWithDelay(c.backoff(p.meta.NumDelivered)); nerr != nil {
			c.log.WarnContext(ctx, "nak failed", "stream_seq", seq, "err", nerr)
		}
		return
	}
	for _, d := range p.dead {
		c.m.deadLetters.Inc()
		c.log.WarnContext(ctx, "dead-lettered", "stream_seq", seq, "event_index", d.EventIndex,
			"event_id", d.EventID, "subject", d.Subject, "reason", d.Reason)
	}
	var aerr error
	if p.whole {
		aerr = p.msg.TermWithReason("dead-lettered")
	} else {
		aerr = p.msg.Ack()
	}
	if aerr != nil {
		// The rows are committed; a redelivery will be a harmless duplicate.
		c.log.WarnContext(ctx, "ack failed", "stream_seq", seq, "err", aerr)
	}
}

func (c *Consumer) backoff(delivered uint64) time.Duration {
	d := c.cfg.NakDelay
	for i := uint64(1); i < delivered && d < c.cfg.MaxNakDelay; i++ {
		d *= 2
	}
	return min(d, c.cfg.MaxNakDelay)
}

// Permanent tells a database rejection of the data (SQLSTATE classes 22
// data exception and 23 integrity violation), which retrying cannot cure,
// from a transient failure. An error wrapping ErrTransient is never
// permanent. The replay of the stream classifies with it too.
func Permanent(err error) bool {
	if errors.Is(err, ErrTransient) {
		return false
	}
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
