package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/consumer"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// startStream starts an embedded nats-server with JetStream (the Go module,
// as services/testenv does) and returns the USAGE stream on it.
func startStream(t *testing.T) (jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	_, js, stream := startServer(t)
	return js, stream
}

// startServer is startStream that also returns the server.
func startServer(t *testing.T) (*server.Server, jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(t.TempDir(), "js"), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	stream, err := usagev1.EnsureStream(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	return srv, js, stream
}

// sqlError is a database error as lib/pq and pgx report it.
type sqlError struct{ state string }

func (e sqlError) Error() string    { return "pq: SQLSTATE " + e.state }
func (e sqlError) SQLState() string { return e.state }

// memStore is a transactional in-memory Store: what a Tx wrote is visible
// only after Commit. It can fail transiently and reject one event for good.
type memStore struct {
	mu         sync.Mutex
	events     map[string]uint64 // event ID -> stream sequence
	dead       map[deadKey]consumer.DeadLetter
	commits    int
	maxApply   int          // most events in one Apply
	failBegins atomic.Int32 // the next n Begin calls fail
	reject     string       // event ID Apply rejects with SQLSTATE 23514
	// transient makes the next n Apply calls fail with a class-23 SQLSTATE
	// wrapped in ErrTransient (a partition DDL race).
	transient atomic.Int32
	begins    atomic.Int32 // transactions begun
}

type deadKey struct {
	seq uint64
	idx int
}

func newMemStore() *memStore {
	return &memStore{events: map[string]uint64{}, dead: map[deadKey]consumer.DeadLetter{}}
}

func (s *memStore) Begin(context.Context) (consumer.Tx, error) {
	if s.failBegins.Add(-1) >= 0 {
		return nil, errors.New("connection refused")
	}
	s.begins.Add(1)
	return &memTx{s: s}, nil
}

func (s *memStore) snapshot() (events int, dead []consumer.DeadLetter, commits int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.dead {
		dead = append(dead, d)
	}
	return len(s.events), dead, s.commits
}

type memTx struct {
	s      *memStore
	events []consumer.Event
	dead   []consumer.DeadLetter
}

func (tx *memTx) Apply(_ context.Context, events []consumer.Event) (consumer.Applied, error) {
	tx.s.mu.Lock()
	defer tx.s.mu.Unlock()
	if tx.s.transient.Add(-1) >= 0 {
		return consumer.Applied{}, fmt.Errorf("ensure partition: %w: %w", consumer.ErrTransient, sqlError{"23505"})
	}
	tx.s.maxApply = max(tx.s.maxApply, len(events))
	var a consumer.Applied
	seen := map[string]bool{}
	for _, ev := range events {
		if ev.GetEventId() == tx.s.reject {
			return consumer.Applied{}, fmt.Errorf("insert: %w", sqlError{"23514"})
		}
		if _, dup := tx.s.events[ev.GetEventId()]; dup || seen[ev.GetEventId()] {
			a.Duplicates++
			continue
		}
		seen[ev.GetEventId()] = true
		a.Inserted++
	}
	tx.events = append(tx.events, events...)
	return a, nil
}

func (tx *memTx) DeadLetter(_ context.Context, d consumer.DeadLetter) error {
	tx.dead = append(tx.dead, d)
	return nil
}

func (tx *memTx) Commit() error {
	tx.s.mu.Lock()
	defer tx.s.mu.Unlock()
	for _, ev := range tx.events {
		if _, ok := tx.s.events[ev.GetEventId()]; !ok {
			tx.s.events[ev.GetEventId()] = ev.StreamSeq
		}
	}
	for _, d := range tx.dead {
		k := deadKey{d.StreamSeq, d.EventIndex}
		if _, ok := tx.s.dead[k]; !ok {
			tx.s.dead[k] = d
		}
	}
	tx.s.commits++
	return nil
}

func (tx *memTx) Rollback() error { return nil }

func event(i int) *usagev1.UsageEvent {
	at := time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)
	return &usagev1.UsageEvent{
		EventId: fmt.Sprintf("01JAAAAAAAAAAAAAAAAA%06d", i), RequestId: fmt.Sprintf("req-%d", i),
		KeyId: "0b3f3c1e-8a4e-4a57-9a43-6a2f8c1d2e3f", OwnerId: "owner", Tier: "pro",
		Endpoint: "POST /v1/search", Status: 200, Credits: 1, Units: 1, Unit: "request",
		OccurredAt: timestamppb.New(at), Period: "2026-03", MonthlyCredits: 5000, GatewayId: "gw-test",
	}
}

func publish(t *testing.T, js jetstream.JetStream, subject string, data []byte, msgID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := js.Publish(ctx, subject, data, opts...); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func publishEvents(t *testing.T, js jetstream.JetStream, evs ...*usagev1.UsageEvent) {
	t.Helper()
	for _, ev := range evs {
		data, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		publish(t, js, usagev1.Subject(ev.GetKeyId()), data, ev.GetEventId())
	}
}

// batch is a UsageBatch of the events, marshalled.
func batch(t *testing.T, id string, evs ...*usagev1.UsageEvent) []byte {
	t.Helper()
	data, err := proto.Marshal(&usagev1.UsageBatch{BatchId: id, GatewayId: "gw-test", SealedAt: timestamppb.Now(), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// batchID is a valid ULID for batch n.
func batchID(n int) string { return fmt.Sprintf("01JBBBBBBBBBBBBBBBBB%06d", n) }

// publishBatch publishes the events as one batch the way the gateway does:
// on its batch subject, the batch ID as Nats-Msg-Id.
func publishBatch(t *testing.T, js jetstream.JetStream, id string, evs ...*usagev1.UsageEvent) {
	t.Helper()
	publish(t, js, usagev1.BatchSubject("gw-test"), batch(t, id, evs...), id)
}

// events are event(from) … event(from+n-1).
func events(from, n int) []*usagev1.UsageEvent {
	evs := make([]*usagev1.UsageEvent, n)
	for i := range evs {
		evs[i] = event(from + i)
	}
	return evs
}

// run starts a consumer on stream until the test ends or stop is called.
func run(t *testing.T, stream jetstream.Stream, cfg consumer.Config) (stop func()) {
	t.Helper()
	_, stop = runConsumer(t, stream, cfg)
	return stop
}

// runConsumer is run that also returns the consumer.
func runConsumer(t *testing.T, stream jetstream.Stream, cfg consumer.Config) (*consumer.Consumer, func()) {
	t.Helper()
	cfg.Durable, cfg.Stream = "test", stream
	cfg.Logger = slog.New(slog.DiscardHandler)
	if cfg.FetchWait == 0 {
		cfg.FetchWait = 100 * time.Millisecond
	}
	m, err := consumer.NewMetrics("test", prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metrics = m
	ctx, cancel := context.WithCancel(t.Context())
	c, err := consumer.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
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
	}
	t.Cleanup(stop)
	return c, stop
}

// waitSettled waits until the durable consumer has nothing pending or unacknowledged.
func waitSettled(t *testing.T, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		c, err := js.Consumer(ctx, usagev1.StreamName, "test")
		if err == nil {
			if info, err := c.Info(ctx); err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
				cancel()
				return
			}
		}
		cancel()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("consumer not settled after %s", timeout)
}

func TestConsumer(t *testing.T) {
	t.Parallel()
	invalid := event(900)
	invalid.EventId = "not-a-ulid"
	invalidData, err := proto.Marshal(invalid)
	if err != nil {
		t.Fatal(err)
	}
	checked := event(901)
	checkedData, err := proto.Marshal(checked)
	if err != nil {
		t.Fatal(err)
	}
	isChecked := func(ev *usagev1.UsageEvent) error {
		if ev.GetEventId() == checked.GetEventId() {
			return errors.New("key_id is not welcome")
		}
		return nil
	}

	tests := []struct {
		name string
		// publish fills the stream; it returns how many events must be applied.
		publish   func(t *testing.T, js jetstream.JetStream) int
		store     func(*memStore)
		cfg       consumer.Config
		wantDead  []string // reasons (substrings), in stream order
		wantIndex []int    // the dead letters' event indexes, ascending (when set)
		atLeastTx int      // minimum number of commits
		maxApply  int      // most events one transaction may hold (when set)
	}{
		{name: "batch applied once, acknowledged after commit",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				for i := range 300 {
					publishEvents(t, js, event(i))
				}
				return 300
			},
			cfg: consumer.Config{BatchSize: 100}, atLeastTx: 3},
		{name: "undecodable, invalid and checked-out messages are dead letters",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				publishEvents(t, js, event(1))
				publish(t, js, usagev1.Subject("garbage"), []byte("\xff\xfe garbage \x00"), "garbage-1")
				publish(t, js, usagev1.Subject("k"), invalidData, "")
				publish(t, js, usagev1.Subject("k"), checkedData, "checked-1")
				publishEvents(t, js, event(2))
				return 2
			},
			cfg:      consumer.Config{Check: isChecked},
			wantDead: []string{"decode usage event", "event_id is not a ULID", "key_id is not welcome"}},
		{name: "a key ID that is not a UUID is a dead letter, whatever Check says",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				bad := event(902)
				bad.KeyId = "not-a-uuid"
				evs := events(0, 3)
				evs[1] = bad
				publishBatch(t, js, batchID(1), evs...)
				publishEvents(t, js, bad)
				return 2
			},
			wantDead:  []string{"key_id is not a UUID", "key_id is not a UUID"},
			wantIndex: []int{-1, 1}},
		{name: "transient failures redeliver the batch with backoff",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				for i := range 20 {
					publishEvents(t, js, event(i))
				}
				return 20
			},
			store: func(s *memStore) { s.failBegins.Store(3) },
			cfg:   consumer.Config{NakDelay: 10 * time.Millisecond, MaxNakDelay: 50 * time.Millisecond}},
		{name: "an event the database rejects is dead-lettered alone",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				for i := range 10 {
					publishEvents(t, js, event(i))
				}
				return 9
			},
			store:    func(s *memStore) { s.reject = event(4).GetEventId() },
			wantDead: []string{"rejected by the database: insert: pq: SQLSTATE 23514"}},
		{name: "batches: many events per message, sets bounded by BatchEvents",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				for b := range 20 {
					publishBatch(t, js, batchID(b), events(b*50, 50)...)
				}
				return 1000
			},
			// A short AckWait: on a busy machine a pull can expire on the
			// client while the server delivers, and that message then waits
			// for its redelivery.
			cfg: consumer.Config{BatchEvents: 120, AckWait: 2 * time.Second}, maxApply: 170, atLeastTx: 7},
		{name: "old and new forms mixed",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				for b := range 5 {
					publishEvents(t, js, events(b*100, 10)...)
					publishBatch(t, js, batchID(b), events(b*100+10, 10)...)
				}
				return 100
			}},
		{name: "an invalid event of a batch is its own dead letter, the rest is applied",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				evs := events(0, 10)
				evs[3] = invalid
				evs[7] = checked
				publishBatch(t, js, batchID(1), evs...)
				publish(t, js, usagev1.BatchSubject("gw-test"), []byte("ÿþ not a batch"), batchID(2))
				publish(t, js, usagev1.BatchSubject("gw-test"), batch(t, "no-ulid", event(20)), "no-ulid")
				publishBatch(t, js, batchID(3), events(30, 5)...)
				return 13
			},
			cfg:       consumer.Config{Check: isChecked},
			wantDead:  []string{"event_id is not a ULID", "key_id is not welcome", "decode usage batch", "batch_id is not a ULID"},
			wantIndex: []int{-1, -1, 3, 7}},
		{name: "an event of a batch the database rejects is dead-lettered alone",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				for b := range 3 {
					publishBatch(t, js, batchID(b), events(b*10, 10)...)
				}
				return 29
			},
			store:     func(s *memStore) { s.reject = event(14).GetEventId() },
			wantDead:  []string{"rejected by the database: insert: pq: SQLSTATE 23514"},
			wantIndex: []int{4}},
		{name: "a batch delivered twice changes nothing",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				publishBatch(t, js, batchID(1), events(0, 10)...)
				publishBatch(t, js, batchID(1), events(0, 10)...) // dropped by the duplicate window
				publish(t, js, usagev1.BatchSubject("gw-other"), batch(t, batchID(1), events(0, 10)...), "after-the-window")
				publishEvents(t, js, event(3))
				return 10
			}},
		{name: "a transient error with an integrity SQLSTATE is retried, never dead-lettered",
			publish: func(t *testing.T, js jetstream.JetStream) int {
				publishBatch(t, js, batchID(1), events(0, 10)...)
				return 10
			},
			store: func(s *memStore) { s.transient.Store(3) },
			cfg:   consumer.Config{NakDelay: 10 * time.Millisecond, MaxNakDelay: 50 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			js, stream := startStream(t)
			store := newMemStore()
			if tt.store != nil {
				tt.store(store)
			}
			want := tt.publish(t, js)
			cfg := tt.cfg
			cfg.Store = store
			if cfg.AckWait == 0 {
				// On a busy machine a pull can expire on the client while
				// the server delivers; that message then waits for its
				// redelivery, which must not take the default 30 s.
				cfg.AckWait = 2 * time.Second
			}
			run(t, stream, cfg)
			waitSettled(t, js, 60*time.Second)
			events, dead, commits := store.snapshot()
			if events != want {
				t.Errorf("applied %d events, want %d", events, want)
			}
			if commits < tt.atLeastTx {
				t.Errorf("%d commits, want at least %d", commits, tt.atLeastTx)
			}
			if len(dead) != len(tt.wantDead) {
				t.Fatalf("dead letters = %+v, want %d", dead, len(tt.wantDead))
			}
			byReason := map[string]consumer.DeadLetter{}
			for _, d := range dead {
				byReason[d.Reason] = d
			}
			for _, w := range tt.wantDead {
				found := false
				for r, d := range byReason {
					if strings.Contains(r, w) {
						found = true
						if d.Consumer != "test" || d.StreamSeq == 0 || len(d.Payload) == 0 || !strings.HasPrefix(d.Subject, "usage.") {
							t.Errorf("dead letter %+v", d)
						}
					}
				}
				if !found {
					t.Errorf("no dead letter with reason %q in %+v", w, dead)
				}
			}
			for r, d := range byReason {
				if strings.Contains(r, "decode usage event") && d.MsgID != "garbage-1" {
					t.Errorf("dead letter msg id = %q, want garbage-1", d.MsgID)
				}
			}
			if tt.wantIndex != nil {
				var idx []int
				for _, d := range dead {
					idx = append(idx, d.EventIndex)
					if d.EventIndex >= 0 {
						var ev usagev1.UsageEvent
						if err := proto.Unmarshal(d.Payload, &ev); err != nil || ev.GetEventId() != d.EventID || d.MsgID == "" {
							t.Errorf("dead event %+v: payload %v, want the event alone and the batch ID", d, err)
						}
					}
				}
				slices.Sort(idx)
				if !slices.Equal(idx, tt.wantIndex) {
					t.Errorf("dead letter indexes %v, want %v", idx, tt.wantIndex)
				}
			}
			if tt.maxApply > 0 && store.maxApply > tt.maxApply {
				t.Errorf("one transaction held %d events, want at most %d", store.maxApply, tt.maxApply)
			}
			if store.failBegins.Load() > 0 || store.transient.Load() > 0 {
				t.Errorf("%d failing transactions never tried", store.failBegins.Load())
			}
		})
	}
}

// TestShutdownFinishesBatch cancels the consumer while a batch is held
// inside its transaction: Run returns only after the batch was committed and
// acknowledged.
func TestShutdownFinishesBatch(t *testing.T) {
	t.Parallel()
	js, stream := startStream(t)
	store := newMemStore()
	for i := range 50 {
		publishEvents(t, js, event(i))
	}
	stop := run(t, stream, consumer.Config{Store: store, HandleDelay: 700 * time.Millisecond})
	// Stop once the first batch is inside its transaction (held there for
	// HandleDelay).
	for deadline := time.Now().Add(30 * time.Second); store.begins.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no batch began within 30 s")
		}
	}
	stop()
	events, _, commits := store.snapshot()
	if events == 0 || commits != 1 {
		t.Fatalf("after shutdown: %d events in %d commits, want one committed batch", events, commits)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, usagev1.StreamName, "test")
	if err != nil {
		t.Fatal(err)
	}
	// Acks are sent before Run returns but processed by the server
	// asynchronously (the binaries drain their connection on exit).
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.AckFloor.Stream == uint64(events) {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("ack pending %d, ack floor %d; want 0 and %d", info.NumAckPending, info.AckFloor.Stream, events)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	err := (&consumer.Config{BatchSize: -1}).Validate()
	for _, s := range []string{"durable", "stream", "store", "logger", "metrics", "negative"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("error %v does not name %s", err, s)
		}
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRecreate deletes the durable consumer, then the whole stream, under a
// running consumer: it re-creates what is gone (the stream from its JetStream
// handle) and keeps applying new events; nothing is applied twice.
func TestRecreate(t *testing.T) {
	t.Parallel()
	js, stream := startStream(t)
	store := newMemStore()
	// A short AckWait: a pull that expires on the client while the server
	// delivers must be redelivered in seconds on a busy machine, not 30 s.
	c, _ := runConsumer(t, stream, consumer.Config{Store: store, JS: js, StaleAfter: time.Minute, AckWait: 2 * time.Second})
	applied := func(n int) func() bool {
		return func() bool { got, _, _ := store.snapshot(); return got == n }
	}
	publishBatch(t, js, batchID(1), events(0, 10)...)
	waitFor(t, 30*time.Second, "first batch applied", applied(10))

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := js.DeleteConsumer(ctx, usagev1.StreamName, "test"); err != nil {
		t.Fatal(err)
	}
	publishBatch(t, js, batchID(2), events(10, 10)...)
	waitFor(t, 30*time.Second, "batch after the consumer was deleted applied", applied(20))

	if err := js.DeleteStream(ctx, usagev1.StreamName); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "stream re-created", func() bool {
		_, err := js.Stream(ctx, usagev1.StreamName)
		return err == nil
	})
	publishBatch(t, js, batchID(3), events(20, 10)...)
	publishEvents(t, js, event(30))
	waitFor(t, 30*time.Second, "events after the stream was deleted applied", applied(31))
	if err := c.Health(); err != nil {
		t.Errorf("health after recovery: %v", err)
	}
	if _, dead, _ := store.snapshot(); len(dead) != 0 {
		t.Errorf("dead letters %+v", dead)
	}
}

// TestHealthStale: Health is nil while fetches succeed (also when nothing
// arrives) and reports the consumer once no fetch succeeded for StaleAfter.
func TestHealthStale(t *testing.T) {
	t.Parallel()
	srv, _, stream := startServer(t)
	// StaleAfter is many fetches long: each fetch of an idle consumer is a
	// success only when the server's timeout reaches the client before the
	// client's own deadline, 10 % later, which a busy machine can miss a
	// few times in a row; a stale consumer is one that misses for seconds.
	const staleAfter = 3 * time.Second
	c, _ := runConsumer(t, stream, consumer.Config{Store: newMemStore(), StaleAfter: staleAfter})
	// Idle for twice StaleAfter: every fetch is answered by the server's
	// timeout, and that is a success.
	for start := time.Now(); time.Since(start) < 2*staleAfter; time.Sleep(20 * time.Millisecond) {
		if err := c.Health(); err != nil {
			t.Fatalf("health of an idle consumer: %v", err)
		}
	}
	srv.Shutdown()
	var err error
	waitFor(t, 30*time.Second, "health reports the stale consumer", func() bool { err = c.Health(); return err != nil })
	if !strings.Contains(err.Error(), "no successful fetch") {
		t.Errorf("health error %q", err)
	}
}
