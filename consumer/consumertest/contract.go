// Package consumertest is the contract every consumer.Store keeps, as one
// test suite that each store's tests run against the real thing: the
// billing worker's ledger and the aggregator's usage tables, each on a real
// Postgres database and a real JetStream stream. A store that passes it
// can be run by the consumer loop; what the suite does not check (the
// store's own tables) the store's own tests do.
package consumertest

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/consumer"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Target is one store under test, with what the suite needs to see its
// effects.
type Target struct {
	Store consumer.Store
	// JS reaches the server holding the USAGE stream (created) that the
	// store is fed from; the suite publishes to it and runs the consumer
	// loop on it.
	JS jetstream.JetStream
	// Held tells how many times the store holds the event: 0 before it was
	// applied, 1 after, never more.
	Held func(ctx context.Context, eventID string) (int, error)
	// DeadLetters lists the dead letters the store kept for the durable
	// consumer, in stream order (PostgresDeadLetters for a Postgres store).
	DeadLetters func(ctx context.Context, durable string) ([]consumer.DeadLetter, error)
}

// durable is the durable consumer the suite runs.
const durable = "contract"

// RunStoreContract runs the contract against stores newTarget makes, one
// fresh store (its own database and stream) per subtest:
//
//   - idempotency: an event applied twice, in one transaction or two, or
//     published twice, is held once; a transaction rolled back leaves
//     nothing;
//   - redelivery: sets held past AckWait and redelivered to a second
//     consumer leave every event held once;
//   - dead letters: a message that does not decode and an event that
//     breaks the rules become dead letters, once each, and the loop goes on
//     to the events after them;
//   - shutdown: a set in its transaction when the loop is stopped is
//     committed and acknowledged before Run returns.
func RunStoreContract(t *testing.T, newTarget func(t *testing.T) Target) {
	t.Helper()
	t.Run("idempotent per event ID", func(t *testing.T) {
		t.Parallel()
		testIdempotent(t, newTarget(t))
	})
	t.Run("a rolled back transaction leaves nothing", func(t *testing.T) {
		t.Parallel()
		testRollback(t, newTarget(t))
	})
	t.Run("published twice, held once", func(t *testing.T) {
		t.Parallel()
		testRepublished(t, newTarget(t))
	})
	t.Run("redelivered sets are held once", func(t *testing.T) {
		t.Parallel()
		testRedelivery(t, newTarget(t))
	})
	t.Run("dead letters, and the loop goes on", func(t *testing.T) {
		t.Parallel()
		testDeadLetters(t, newTarget(t))
	})
	t.Run("shutdown finishes the set in progress", func(t *testing.T) {
		t.Parallel()
		testShutdown(t, newTarget(t))
	})
}

// PostgresDeadLetters is Target.DeadLetters for a store that keeps its dead
// letters with consumer.InsertDeadLetter.
func PostgresDeadLetters(db *sql.DB) func(ctx context.Context, durable string) ([]consumer.DeadLetter, error) {
	return func(ctx context.Context, durable string) ([]consumer.DeadLetter, error) {
		rows, err := db.QueryContext(ctx, `SELECT consumer, stream_seq, event_index, coalesce(event_id, ''), subject,
	coalesce(msg_id, ''), payload, reason FROM api_gateway.dead_letters WHERE consumer = $1 ORDER BY stream_seq, event_index`, durable)
		if err != nil {
			return nil, fmt.Errorf("dead letters: %w", err)
		}
		defer rows.Close()
		var out []consumer.DeadLetter
		for rows.Next() {
			var d consumer.DeadLetter
			var seq int64
			if err := rows.Scan(&d.Consumer, &seq, &d.EventIndex, &d.EventID, &d.Subject, &d.MsgID, &d.Payload, &d.Reason); err != nil {
				return nil, fmt.Errorf("dead letters: %w", err)
			}
			d.StreamSeq = uint64(seq)
			out = append(out, d)
		}
		return out, rows.Err()
	}
}

// Events are n valid events of one key, occurring now, with IDs unique to
// the test (from, from+1, …).
func Events(from, n int) []*usagev1.UsageEvent {
	now := time.Now().UTC().Truncate(time.Microsecond)
	evs := make([]*usagev1.UsageEvent, n)
	for i := range evs {
		evs[i] = &usagev1.UsageEvent{
			EventId: fmt.Sprintf("01JCCCCCCCCCCCCCCCCC%06d", from+i), RequestId: fmt.Sprintf("req-%d", from+i),
			KeyId: "7d0c6f1e-4a3b-4c2d-9e8f-1a2b3c4d5e6f", OwnerId: "owner", Tier: "pro",
			Endpoint: "POST /v1/search", Status: 200, Credits: 1, Units: 1, Unit: "request",
			OccurredAt: timestamppb.New(now), Period: now.Format("2006-01"), MonthlyCredits: 5000, GatewayId: "gw-contract",
		}
	}
	return evs
}

// asConsumerEvents are the events as the loop hands them to Apply, from
// stream sequence seq on.
func asConsumerEvents(evs []*usagev1.UsageEvent, seq uint64) []consumer.Event {
	out := make([]consumer.Event, len(evs))
	for i, ev := range evs {
		out[i] = consumer.Event{UsageEvent: ev, StreamSeq: seq + uint64(i), NumDelivered: 1, Index: -1}
	}
	return out
}

// apply applies the events in one transaction and commits it.
func apply(t *testing.T, s consumer.Store, events []consumer.Event) consumer.Applied {
	t.Helper()
	tx, err := s.Begin(t.Context())
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	a, err := tx.Apply(t.Context(), events)
	if err != nil {
		_ = tx.Rollback()
		t.Fatalf("apply: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return a
}

// wantHeld fails the test unless every event is held exactly n times.
func wantHeld(t *testing.T, tg Target, evs []*usagev1.UsageEvent, n int) {
	t.Helper()
	for _, ev := range evs {
		got, err := tg.Held(t.Context(), ev.GetEventId())
		if err != nil {
			t.Fatalf("held %s: %v", ev.GetEventId(), err)
		}
		if got != n {
			t.Errorf("event %s held %d times, want %d", ev.GetEventId(), got, n)
		}
	}
}

func testIdempotent(t *testing.T, tg Target) {
	evs := Events(0, 4)
	if a := apply(t, tg.Store, asConsumerEvents(evs[:2], 1)); a.Inserted != 2 || a.Duplicates != 0 {
		t.Errorf("first apply = %+v, want 2 inserted", a)
	}
	// Again in a transaction of its own, with a new event and one that
	// appears twice in the same call.
	again := asConsumerEvents([]*usagev1.UsageEvent{evs[0], evs[1], evs[2], evs[2]}, 1)
	if a := apply(t, tg.Store, again); a.Inserted != 1 || a.Duplicates != 3 {
		t.Errorf("second apply = %+v, want 1 inserted and 3 duplicates", a)
	}
	wantHeld(t, tg, evs[:3], 1)
	wantHeld(t, tg, evs[3:], 0)
}

func testRollback(t *testing.T, tg Target) {
	evs := Events(100, 3)
	tx, err := tg.Store.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Apply(t.Context(), asConsumerEvents(evs, 1)); err != nil {
		t.Fatal(err)
	}
	d := consumer.DeadLetter{Consumer: durable, StreamSeq: 9, EventIndex: -1, Subject: usagev1.Subject("x"), Payload: []byte("x"), Reason: "test"}
	if err := tx.DeadLetter(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	wantHeld(t, tg, evs, 0)
	if dead, err := tg.DeadLetters(t.Context(), durable); err != nil || len(dead) != 0 {
		t.Errorf("dead letters after rollback = %+v (%v), want none", dead, err)
	}
	// The events are still new to the store.
	if a := apply(t, tg.Store, asConsumerEvents(evs, 1)); a.Inserted != len(evs) {
		t.Errorf("apply after rollback = %+v, want %d inserted", a, len(evs))
	}
}

func testRepublished(t *testing.T, tg Target) {
	evs := Events(200, 30)
	for _, ev := range evs {
		publishEvent(t, tg.JS, ev, ev.GetEventId())
	}
	// The same events past the stream's duplicate window (other message
	// IDs), and once more inside one batch.
	for _, ev := range evs {
		publishEvent(t, tg.JS, ev, ev.GetEventId()+"-again")
	}
	publishBatch(t, tg.JS, "01JDDDDDDDDDDDDDDDDD000001", evs[:10])
	m := run(t, tg, consumer.Config{})
	waitSettled(t, tg.JS, 60*time.Second)
	wantHeld(t, tg, evs, 1)
	if got := m.count(t, "contract_events_processed_total"); got != float64(len(evs)) {
		t.Errorf("processed = %v, want %d", got, len(evs))
	}
	// At least: a message redelivered after a pull expired counts again.
	if got := m.count(t, "contract_events_duplicate_total"); got < float64(len(evs)+10) {
		t.Errorf("duplicates = %v, want at least %d", got, len(evs)+10)
	}
}

func testRedelivery(t *testing.T, tg Target) {
	evs := Events(300, 120)
	for i := 0; i < len(evs); i += 10 {
		publishBatch(t, tg.JS, fmt.Sprintf("01JDDDDDDDDDDDDDDDDD%06d", i), evs[i:i+10])
	}
	// Every set is held past AckWait, so the server redelivers its
	// messages, to the other consumer, while it is still being applied.
	slow := consumer.Config{AckWait: time.Second, HandleDelay: 1500 * time.Millisecond, BatchSize: 3, MaxAckPending: 6}
	a, b := run(t, tg, slow), run(t, tg, slow)
	waitSettled(t, tg.JS, 90*time.Second)
	wantHeld(t, tg, evs, 1)
	if r := a.count(t, "contract_messages_redelivered_total") + b.count(t, "contract_messages_redelivered_total"); r == 0 {
		t.Error("no message was redelivered; the test proves nothing")
	}
	if p := a.count(t, "contract_events_processed_total") + b.count(t, "contract_events_processed_total"); p != float64(len(evs)) {
		t.Errorf("processed = %v, want %d", p, len(evs))
	}
}

func testDeadLetters(t *testing.T, tg Target) {
	evs := Events(400, 10)
	badKey := proto.Clone(evs[2]).(*usagev1.UsageEvent)
	badKey.EventId, badKey.KeyId = "01JCCCCCCCCCCCCCCCCC999999", "not-a-uuid"
	batch := slices.Concat(evs[:2], []*usagev1.UsageEvent{badKey}, evs[2:5])

	publishEvent(t, tg.JS, evs[5], evs[5].GetEventId())                                            // seq 1
	publishRaw(t, tg.JS, usagev1.Subject("garbage"), []byte("\xff\xfe garbage \x00"), "garbage-1") // seq 2
	publishBatch(t, tg.JS, "01JDDDDDDDDDDDDDDDDD000002", batch)                                    // seq 3
	for _, ev := range evs[6:] {
		publishEvent(t, tg.JS, ev, ev.GetEventId())
	}
	run(t, tg, consumer.Config{})
	waitSettled(t, tg.JS, 60*time.Second)
	wantHeld(t, tg, evs, 1)
	wantHeld(t, tg, []*usagev1.UsageEvent{badKey}, 0)

	dead, err := tg.DeadLetters(t.Context(), durable)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		seq    uint64
		index  int
		reason string
	}{{2, -1, "decode usage event"}, {3, 2, "key_id is not a UUID"}}
	if len(dead) != len(want) {
		t.Fatalf("dead letters = %+v, want %d", dead, len(want))
	}
	for i, w := range want {
		d := dead[i]
		if d.Consumer != durable || d.StreamSeq != w.seq || d.EventIndex != w.index || !strings.Contains(d.Reason, w.reason) ||
			len(d.Payload) == 0 || !strings.HasPrefix(d.Subject, "usage.") {
			t.Errorf("dead letter %d = %+v, want seq %d, index %d, reason containing %q", i, d, w.seq, w.index, w.reason)
		}
	}
	if dead[0].MsgID != "garbage-1" {
		t.Errorf("dead letter msg id = %q, want garbage-1", dead[0].MsgID)
	}
	var ev usagev1.UsageEvent
	if err := proto.Unmarshal(dead[1].Payload, &ev); err != nil || ev.GetEventId() != badKey.GetEventId() || dead[1].EventID != badKey.GetEventId() {
		t.Errorf("dead event %+v: payload %v (%v), want the event alone", dead[1], &ev, err)
	}

	// Kept once per (consumer, stream sequence, event index), however often
	// it is written.
	tx, err := tg.Store.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.DeadLetter(t.Context(), dead[1]); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if again, err := tg.DeadLetters(t.Context(), durable); err != nil || len(again) != len(want) {
		t.Errorf("dead letters written again = %d (%v), want %d", len(again), err, len(want))
	}
}

func testShutdown(t *testing.T, tg Target) {
	evs := Events(500, 40)
	for _, ev := range evs {
		publishEvent(t, tg.JS, ev, ev.GetEventId())
	}
	counted := &countingStore{Store: tg.Store}
	tg.Store = counted
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, done := start(ctx, t, tg, consumer.Config{HandleDelay: 700 * time.Millisecond})
	// Stop once the first set is inside its transaction (held there for
	// HandleDelay).
	for deadline := time.Now().Add(30 * time.Second); counted.begins.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no set began within 30 s")
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	if c := counted.commits.Load(); c != 1 {
		t.Fatalf("%d commits after shutdown, want the one set in progress", c)
	}
	held := 0
	for _, ev := range evs {
		n, err := tg.Held(t.Context(), ev.GetEventId())
		if err != nil {
			t.Fatal(err)
		}
		held += n
	}
	if held == 0 {
		t.Fatal("the set in progress was not committed")
	}
	// Acks are sent before Run returns and processed by the server
	// asynchronously: the ack floor reaches the committed set.
	wctx, wcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer wcancel()
	c, err := tg.JS.Consumer(wctx, usagev1.StreamName, durable)
	if err != nil {
		t.Fatal(err)
	}
	for {
		info, err := c.Info(wctx)
		if err != nil {
			t.Fatalf("consumer info: %v", err)
		}
		if info.NumAckPending == 0 && info.AckFloor.Stream == uint64(held) {
			return
		}
		if wctx.Err() != nil {
			t.Fatalf("ack pending %d, ack floor %d; want 0 and %d", info.NumAckPending, info.AckFloor.Stream, held)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countingStore counts the transactions begun and committed.
type countingStore struct {
	consumer.Store
	begins, commits atomic.Int32
}

func (s *countingStore) Begin(ctx context.Context) (consumer.Tx, error) {
	tx, err := s.Store.Begin(ctx)
	if err != nil {
		return nil, err
	}
	s.begins.Add(1)
	return countingTx{Tx: tx, commits: &s.commits}, nil
}

type countingTx struct {
	consumer.Tx
	commits *atomic.Int32
}

func (tx countingTx) Commit() error {
	err := tx.Tx.Commit()
	if err == nil {
		tx.commits.Add(1)
	}
	return err
}

// metrics reads one consumer's series.
type metrics struct{ reg *prometheus.Registry }

func (m metrics) count(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// run runs the consumer loop with cfg (its durable, stream, store, logger
// and metrics filled in) until the test ends, and returns its metrics.
func run(t *testing.T, tg Target, cfg consumer.Config) metrics {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	m, done := start(ctx, t, tg, cfg)
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
		}
	})
	return m
}

// start starts the loop until ctx is done; Run's result arrives on the
// channel.
func start(ctx context.Context, t *testing.T, tg Target, cfg consumer.Config) (metrics, <-chan error) {
	t.Helper()
	stream, err := tg.JS.Stream(ctx, usagev1.StreamName)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	cfg.Durable, cfg.Stream, cfg.JS, cfg.Store = durable, stream, tg.JS, tg.Store
	cfg.Logger = slog.New(slog.DiscardHandler)
	if cfg.FetchWait == 0 {
		cfg.FetchWait = 100 * time.Millisecond
	}
	if cfg.AckWait == 0 {
		// A pull that expires on the client while the server delivers
		// leaves that message to its redelivery: seconds, not 30.
		cfg.AckWait = 2 * time.Second
	}
	m := metrics{prometheus.NewRegistry()}
	if cfg.Metrics, err = consumer.NewMetrics("contract", m.reg); err != nil {
		t.Fatal(err)
	}
	c, err := consumer.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return m, done
}

// waitSettled waits until the durable consumer has nothing pending,
// unacknowledged or waiting for redelivery.
func waitSettled(t *testing.T, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		c, err := js.Consumer(ctx, usagev1.StreamName, durable)
		if err == nil {
			var info *jetstream.ConsumerInfo
			if info, err = c.Info(ctx); err == nil {
				if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
					cancel()
					return
				}
				last = fmt.Sprintf("%d pending, %d unacknowledged, %d redelivered", info.NumPending, info.NumAckPending, info.NumRedelivered)
			}
		}
		if err != nil {
			last = err.Error()
		}
		cancel()
	}
	t.Fatalf("consumer %s not settled after %s: %s", durable, timeout, last)
}

func publishRaw(t *testing.T, js jetstream.JetStream, subject string, data []byte, msgID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, subject, data, jetstream.WithMsgID(msgID)); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// publishEvent publishes ev in the older one-event form.
func publishEvent(t *testing.T, js jetstream.JetStream, ev *usagev1.UsageEvent, msgID string) {
	t.Helper()
	data, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, js, usagev1.Subject(ev.GetKeyId()), data, msgID)
}

// publishBatch publishes the events as one batch the way the gateway does:
// on its batch subject, the batch ID as Nats-Msg-Id.
func publishBatch(t *testing.T, js jetstream.JetStream, id string, evs []*usagev1.UsageEvent) {
	t.Helper()
	data, err := proto.Marshal(&usagev1.UsageBatch{BatchId: id, GatewayId: "gw-contract", SealedAt: timestamppb.Now(), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, js, usagev1.BatchSubject("gw-contract"), data, id)
}
