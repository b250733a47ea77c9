// Package backlog keeps the part of the USAGE stream that the billing worker
// has not applied to the ledger yet: one reader per gateway, started at the
// `billing` consumer's acknowledgement floor, indexes every event after it by
// key, and forgets what the floor passes. A balance is then the ledger plus
// this backlog plus the holds in flight, whatever the key, with work bounded
// by the billing worker's lag and not by the month, and no consumer per key.
package backlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Config configures a Tail.
type Config struct {
	JS     jetstream.JetStream
	Logger *slog.Logger
	// FloorInterval is how often the billing consumer's floor is read to
	// forget what it applied (default 1s).
	FloorInterval time.Duration
	// CatchUp bounds the wait of Pending for the reader to reach the end of
	// the stream (default 2s).
	CatchUp time.Duration
	// MaxEvents bounds the unapplied events held one by one (default
	// 1,000,000, about 130 MB). While the billing worker is away long
	// enough to pass it, newer messages are only summed per key and period,
	// in stretches of MaxEvents/10 events, and Pending says it is
	// incomplete until the worker's floor passes them.
	MaxEvents int
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.JS == nil {
		errs = append(errs, errors.New("backlog: JS is required"))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("backlog: Logger is required"))
	}
	if c.FloorInterval < 0 || c.CatchUp < 0 {
		errs = append(errs, errors.New("backlog: durations must not be negative"))
	}
	if c.MaxEvents < 0 {
		errs = append(errs, errors.New("backlog: MaxEvents must not be negative"))
	}
	return errors.Join(errs...)
}

// ErrIncomplete: the backlog is over its bound and some unapplied events
// are only summed, not indexed one by one. What Pending returns with it
// counts them under SummedEventID, also those the billing worker has
// applied since (the floor has not passed their stretch yet): a balance
// from it is too low rather than too high.
var ErrIncomplete = errors.New("backlog: over its bound, some unapplied events are only summed")

// SummedEventID is the ID under which Pending returns, per key, the credits
// of the events that were summed rather than indexed. It matches no event.
const SummedEventID = "~summed"

// stretch sums the events of consecutive messages that were not indexed.
type stretch struct {
	last    uint64                      // last stream sequence in it
	events  int                         // events summed
	credits map[string]map[string]int64 // key → period → credits
}

// entry is one unapplied event.
type entry struct {
	credits int64
	period  string // interned: one string per period
	seq     uint64
}

// keyEvents are the unapplied events of one key.
type keyEvents struct {
	id  string
	evs map[string]entry // event ID → entry
}

type ref struct {
	key   *keyEvents
	event string
}

// msg is the index entries of one stream message, for forgetting in order.
type msg struct {
	seq  uint64
	refs []ref
}

// Tail is the backlog reader. Safe for concurrent use; Run must be running
// for Pending to answer.
type Tail struct {
	cfg    Config
	logger *slog.Logger

	mu      sync.Mutex
	keys    map[string]*keyEvents // key ID → its events
	periods map[string]string     // interned periods
	order   []msg                 // by stream sequence
	size    int                   // events indexed
	read    uint64                // last stream sequence indexed
	floor   uint64                // billing's acknowledgement floor, as last read
	// skipped is the last stream sequence not indexed for lack of room;
	// while the floor is below it, the backlog is incomplete, and summed
	// holds those messages' credits, oldest stretch first.
	skipped uint64
	summed  []*stretch
	created time.Time // the stream's creation time, to notice it created again
	running bool
	moved   chan struct{} // closed (and renewed) whenever read advances

	skippedEvents prometheus.Counter

	probeMu sync.Mutex
	next    *probe // the end-of-stream probe not sent yet, joined by callers
}

// New builds a Tail; start it with Run.
func New(cfg Config) (*Tail, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.FloorInterval == 0 {
		cfg.FloorInterval = time.Second
	}
	if cfg.CatchUp == 0 {
		cfg.CatchUp = 2 * time.Second
	}
	if cfg.MaxEvents == 0 {
		cfg.MaxEvents = 1_000_000
	}
	return &Tail{cfg: cfg, logger: cfg.Logger, keys: map[string]*keyEvents{}, periods: map[string]string{}, moved: make(chan struct{}),
		skippedEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_backlog_skipped_events_total",
			Help: "Unapplied events not indexed because the backlog was over its bound (the billing worker away for long).",
		})}, nil
}

// Collectors are the backlog's metrics: its size and whether it is complete.
func (t *Tail) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gateway_backlog_events",
			Help: "Events on the usage stream not yet applied by the billing worker, indexed by this gateway for rebuilds.",
		}, func() float64 { return float64(t.Size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gateway_backlog_complete",
			Help: "1 while every unapplied event is indexed; 0 while the backlog is over its bound (rebuilt balances are then not exact).",
		}, func() float64 {
			t.mu.Lock()
			defer t.mu.Unlock()
			if t.skipped > t.floor {
				return 0
			}
			return 1
		}),
		t.skippedEvents,
	}
}

// Run reads the stream until ctx ends, starting again (from where it was)
// when NATS or the stream goes away.
func (t *Tail) Run(ctx context.Context) {
	for ctx.Err() == nil {
		err := t.run(ctx)
		if ctx.Err() != nil {
			return
		}
		t.logger.WarnContext(ctx, "usage backlog reader stopped; starting again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (t *Tail) run(ctx context.Context) error {
	stream, err := t.cfg.JS.Stream(ctx, usagev1.StreamName)
	if err != nil {
		return fmt.Errorf("backlog: %w", err)
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{usagev1.SubjectWildcard}}
	t.mu.Lock()
	if created := stream.CachedInfo().Created; !created.Equal(t.created) {
		if !t.created.IsZero() {
			// A stream created again numbers its messages from 1: what
			// was read of the old one says nothing about the new one.
			t.logger.Warn("usage stream was created again; the backlog starts over", "created", created)
			t.keys, t.periods, t.order, t.summed = map[string]*keyEvents{}, map[string]string{}, nil, nil
			t.size, t.read, t.floor, t.skipped = 0, 0, 0, 0
		}
		t.created = created
	}
	from := t.read + 1
	t.mu.Unlock()
	if from == 1 {
		// First start: from the billing worker's floor, or, before it ever
		// ran, from the start of last month (a balance is of this month;
		// events are published after they occur).
		if floor, err := t.billingFloor(ctx, stream); err == nil {
			from = floor + 1
			t.setFloor(floor)
			t.advance(floor) // nothing at or below it is read
		} else {
			now := time.Now().UTC()
			start := time.Date(now.Year(), now.Month()-1, 1, 0, 0, 0, 0, time.UTC)
			occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
		}
	}
	if occ.DeliverPolicy == jetstream.DeliverAllPolicy {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	rd, err := usagev1.NewReader(ctx, t.cfg.JS, usagev1.ReaderConfig{Consumer: occ})
	if err != nil {
		return fmt.Errorf("backlog: %w", err)
	}
	defer rd.Stop()
	if occ.OptStartTime != nil && rd.Pending() == 0 {
		// Nothing stored since the start time: what is stored now is read.
		t.advance(stream.CachedInfo().State.LastSeq)
	}
	t.mu.Lock()
	t.running = true
	close(t.moved)
	t.moved = make(chan struct{})
	t.mu.Unlock()
	defer func() { t.mu.Lock(); t.running = false; t.mu.Unlock() }()

	// followFloor also notices the stream deleted or created again (the
	// ordered consumer would wait for it silently) and ends this run.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	go t.followFloor(runCtx, stream, stopRun)
	for {
		m, meta, err := rd.Next(runCtx)
		if err != nil {
			if cause := context.Cause(runCtx); cause != nil && ctx.Err() == nil {
				return fmt.Errorf("backlog: %w", cause)
			}
			return fmt.Errorf("backlog: %w", err)
		}
		t.index(meta.Sequence.Stream, m.Subject(), m.Data())
	}
}

// index adds the events of one message.
func (t *Tail) index(seq uint64, subject string, data []byte) {
	dm, derr := usagev1.DecodeMessage(subject, data)
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq <= t.read {
		return
	}
	switch {
	case derr != nil || seq <= t.floor:
	case t.size+len(dm.Events) > t.cfg.MaxEvents:
		if t.skipped <= t.floor {
			t.logger.Warn("usage backlog over its bound: newer unapplied events are summed per key, not indexed; balances rebuilt until the billing worker catches up may be too low",
				"events", t.size, "max_events", t.cfg.MaxEvents, "seq", seq)
		}
		t.skipped = seq
		t.skippedEvents.Add(float64(len(dm.Events)))
		var st *stretch
		if n := len(t.summed); n > 0 && t.summed[n-1].events < max(t.cfg.MaxEvents/10, 1) {
			st = t.summed[n-1]
		} else {
			st = &stretch{credits: map[string]map[string]int64{}}
			t.summed = append(t.summed, st)
		}
		st.last = seq
		for _, ev := range dm.Events {
			byPeriod := st.credits[ev.GetKeyId()]
			if byPeriod == nil {
				byPeriod = map[string]int64{}
				st.credits[ev.GetKeyId()] = byPeriod
			}
			byPeriod[ev.GetPeriod()] += ev.Spent()
			st.events++
		}
	default:
		// Invalid events are dead-lettered by the billing worker, never
		// charged: DecodeMessage leaves them out, as the worker does.
		m := msg{seq: seq, refs: make([]ref, 0, len(dm.Events))}
		for _, ev := range dm.Events {
			ke := t.keys[ev.GetKeyId()]
			if ke == nil {
				ke = &keyEvents{id: ev.GetKeyId(), evs: map[string]entry{}}
				t.keys[ke.id] = ke
			}
			if _, dup := ke.evs[ev.GetEventId()]; dup {
				continue // republished, or a duplicate the ledger drops too
			}
			period, ok := t.periods[ev.GetPeriod()]
			if !ok {
				period = ev.GetPeriod()
				t.periods[period] = period
			}
			ke.evs[ev.GetEventId()] = entry{credits: ev.Spent(), period: period, seq: seq}
			m.refs = append(m.refs, ref{ke, ev.GetEventId()})
			t.size++
		}
		t.order = append(t.order, m)
	}
	t.read = seq
	close(t.moved)
	t.moved = make(chan struct{})
}

// advance marks every message up to seq as read.
func (t *Tail) advance(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq > t.read {
		t.read = seq
		close(t.moved)
		t.moved = make(chan struct{})
	}
}

// followFloor forgets, every FloorInterval, what the billing worker
// applied, and stops the run when the stream is gone or was created again.
func (t *Tail) followFloor(ctx context.Context, stream jetstream.Stream, stop context.CancelCauseFunc) {
	tk := time.NewTicker(t.cfg.FloorInterval)
	defer tk.Stop()
	created := stream.CachedInfo().Created
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		now, err := t.cfg.JS.Stream(ctx, usagev1.StreamName)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			stop(errors.New("the usage stream was deleted"))
			return
		case err == nil && !now.CachedInfo().Created.Equal(created):
			stop(errors.New("the usage stream was created again"))
			return
		}
		if floor, err := t.billingFloor(ctx, stream); err == nil {
			t.setFloor(floor)
		}
	}
}

func (t *Tail) billingFloor(ctx context.Context, stream jetstream.Stream) (uint64, error) {
	cons, err := stream.Consumer(ctx, usagev1.BillingConsumer)
	if err != nil {
		return 0, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.AckFloor.Stream, nil
}

// setFloor forgets the events at or below floor: the billing worker
// acknowledges a message only after the ledger transaction holding its
// events committed.
func (t *Tail) setFloor(floor uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if floor <= t.floor {
		return
	}
	complete := t.skipped <= t.floor
	t.floor = floor
	n := 0
	for n < len(t.order) && t.order[n].seq <= floor {
		for _, r := range t.order[n].refs {
			if _, ok := r.key.evs[r.event]; ok {
				delete(r.key.evs, r.event)
				t.size--
			}
			if len(r.key.evs) == 0 && t.keys[r.key.id] == r.key {
				delete(t.keys, r.key.id)
			}
		}
		n++
	}
	if n > 0 {
		t.order = append(t.order[:0:0], t.order[n:]...)
	}
	n = 0
	for n < len(t.summed) && t.summed[n].last <= floor {
		n++
	}
	if n > 0 {
		t.summed = append(t.summed[:0:0], t.summed[n:]...)
	}
	if !complete && t.skipped <= floor {
		t.logger.Info("usage backlog complete again: the billing worker applied what was not indexed", "events", t.size)
	}
}

// Pending returns the credits of the events of the period on the stream
// that the billing worker has not acknowledged yet, for the keys asked
// (every key when keyIDs is nil): key → event ID → credits. Some may be in
// the ledger already (applied, not yet acknowledged): the caller dedupes by
// event ID. Over its bound, it returns what it has with ErrIncomplete. It first waits until the reader has read every message stored
// when it was called, so an event acknowledged to its gateway before the call
// is counted here or is in the ledger.
func (t *Tail) Pending(ctx context.Context, keyIDs []string, period string) (map[string]map[string]int64, error) {
	last, err := t.end(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.CatchUp)
	defer cancel()
	for {
		t.mu.Lock()
		read, running, moved := t.read, t.running, t.moved
		t.mu.Unlock()
		if read >= last {
			break
		}
		select {
		case <-moved:
		case <-ctx.Done():
			if !running {
				return nil, errors.New("backlog: the stream reader is not running")
			}
			return nil, fmt.Errorf("backlog: reader at %d of %d: %w", read, last, ctx.Err())
		}
	}
	out := map[string]map[string]int64{}
	t.mu.Lock()
	defer t.mu.Unlock()
	add := func(k string, ke *keyEvents) {
		if ke == nil {
			return
		}
		for id, e := range ke.evs {
			if e.period != period {
				continue
			}
			m := out[k]
			if m == nil {
				m = map[string]int64{}
				out[k] = m
			}
			m[id] = e.credits
		}
	}
	if keyIDs == nil {
		for k, ke := range t.keys {
			add(k, ke)
		}
	} else {
		for _, k := range keyIDs {
			add(k, t.keys[k])
		}
	}
	if t.skipped <= t.floor {
		return out, nil
	}
	sum := func(k string) {
		var c int64
		for _, st := range t.summed {
			c += st.credits[k][period]
		}
		if c != 0 {
			if out[k] == nil {
				out[k] = map[string]int64{}
			}
			out[k][SummedEventID] = c
		}
	}
	if keyIDs == nil {
		seen := map[string]bool{}
		for _, st := range t.summed {
			for k := range st.credits {
				if !seen[k] {
					seen[k] = true
					sum(k)
				}
			}
		}
	} else {
		for _, k := range keyIDs {
			sum(k)
		}
	}
	return out, ErrIncomplete
}

// Size is the number of unapplied events indexed.
func (t *Tail) Size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.size
}

// probe is one request for the stream's last sequence, shared by the callers
// that joined it before it was sent.
type probe struct {
	done chan struct{}
	last uint64
	err  error
}

// end returns the stream's last sequence, read after the call began.
// Concurrent callers share one request, which is sent only after all of them
// joined.
func (t *Tail) end(ctx context.Context) (uint64, error) {
	t.probeMu.Lock()
	p := t.next
	if p == nil {
		p = &probe{done: make(chan struct{})}
		t.next = p
		go t.send(context.WithoutCancel(ctx))
	}
	t.probeMu.Unlock()
	select {
	case <-p.done:
		return p.last, p.err
	case <-ctx.Done():
		return 0, fmt.Errorf("backlog: %w", ctx.Err())
	}
}

func (t *Tail) send(ctx context.Context) {
	t.probeMu.Lock()
	p := t.next
	t.next = nil
	t.probeMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, t.cfg.CatchUp)
	defer cancel()
	defer close(p.done)
	stream, err := t.cfg.JS.Stream(ctx, usagev1.StreamName)
	if err != nil {
		p.err = fmt.Errorf("backlog: stream end: %w", err)
		return
	}
	p.last = stream.CachedInfo().State.LastSeq
}
