package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
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

	"github.com/mana/apigw/proto/usage/consumer"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// startStream starts an embedded nats-server with JetStream (the Go module,
// as services/testenv does; proto cannot import services) and returns the
// USAGE stream on it.
func startStream(t *testing.T) (jetstream.JetStream, jetstream.Stream) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := usagev1.EnsureStream(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	return js, stream
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
	dead       map[uint64]consumer.DeadLetter
	commits    int
	failBegins atomic.Int32 // the next n Begin calls fail
	reject     string       // event ID Apply rejects with SQLSTATE 23514
}

func newMemStore() *memStore {
	return &memStore{events: map[string]uint64{}, dead: map[uint64]consumer.DeadLetter{}}
}

func (s *memStore) Begin(context.Context) (consumer.Tx, error) {
	if s.failBegins.Add(-1) >= 0 {
		return nil, errors.New("connection refused")
	}
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
		if _, ok := tx.s.dead[d.StreamSeq]; !ok {
			tx.s.dead[d.StreamSeq] = d
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
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

// run starts a consumer on stream until the test ends or stop is called.
func run(t *testing.T, stream jetstream.Stream, cfg consumer.Config) (stop func()) {
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
	ctx, cancel := context.WithCancel(context.Background())
	c, err := consumer.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
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
	return stop
}

// waitSettled waits until the durable consumer has nothing pending or unacknowledged.
func waitSettled(t *testing.T, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
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
	invalidData, _ := proto.Marshal(invalid)
	checked := event(901)
	checkedData, _ := proto.Marshal(checked)

	tests := []struct {
		name string
		// publish fills the stream; it returns how many events must be applied.
		publish   func(t *testing.T, js jetstream.JetStream) int
		store     func(*memStore)
		cfg       consumer.Config
		wantDead  []string // reasons (substrings), in stream order
		atLeastTx int      // minimum number of commits
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
			cfg: consumer.Config{Check: func(ev *usagev1.UsageEvent) error {
				if ev.GetEventId() == checked.GetEventId() {
					return errors.New("key_id is not welcome")
				}
				return nil
			}},
			wantDead: []string{"decode usage event", "event_id is not a ULID", "key_id is not welcome"}},
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
			run(t, stream, cfg)
			waitSettled(t, js, 20*time.Second)
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
						if d.Consumer != "test" || d.StreamSeq == 0 || d.Payload == nil || !strings.HasPrefix(d.Subject, usagev1.SubjectPrefix) {
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
			if store.failBegins.Load() > 0 {
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
	time.Sleep(300 * time.Millisecond) // the first batch is inside its transaction
	stop()
	events, _, commits := store.snapshot()
	if events == 0 || commits != 1 {
		t.Fatalf("after shutdown: %d events in %d commits, want one committed batch", events, commits)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
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
