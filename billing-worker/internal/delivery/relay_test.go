package delivery_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/billing-worker/internal/delivery"
	"github.com/mana/apigw/proto/webhook"
	"github.com/mana/apigw/services/testenv"
)

// streamMessages is how many messages the WEBHOOKS stream holds.
func (e *env) streamMessages() uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 10*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, delivery.StreamName)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

func (e *env) count(q string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.db.Get(&n, q, args...); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestRelayCrashBetweenPublishAndMark: a relay that dies after the stream
// stored an event and before marking it relayed publishes it again; the
// stream keeps one copy (same Nats-Msg-Id), and even a copy published after
// the duplicate window makes no second delivery: the receiver is called
// once.
func TestRelayCrashBetweenPublishAndMark(t *testing.T) {
	e := newEnv(t)
	ep, secret := e.endpoint("alice", "")
	rcv := newReceiver(t, secret)
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2 WHERE id = $1`, ep, rcv.srv.URL)
	ev := e.enqueue("alice")
	cfg := delivery.Config{AllowHosts: allowLoopback(t), Backoff: fast, Poll: 20 * time.Millisecond}

	crashing := e.relay(cfg)
	crash := errors.New("killed between publish and mark")
	delivery.SetAfterPublish(crashing, func() error { return crash })
	if _, err := crashing.RunOnce(t.Context()); !errors.Is(err, crash) {
		t.Fatalf("round: %v", err)
	}
	if n := e.count(`SELECT count(*) FROM api_gateway.webhook_events WHERE relayed_at IS NULL`); n != 1 || e.streamMessages() != 1 {
		t.Fatalf("after the crash: %d events not relayed, %d on the stream; want 1 and 1", n, e.streamMessages())
	}
	if n, err := e.relay(cfg).RunOnce(t.Context()); err != nil || n != 1 {
		t.Fatalf("the next relay relayed %d (%v)", n, err)
	}
	if got := e.streamMessages(); got != 1 {
		t.Fatalf("%d messages on the stream after the relay published again, want 1", got)
	}
	// The same event once more, as after the duplicate window.
	data, err := json.Marshal(delivery.Message{ID: ev, OwnerID: "alice", Type: webhook.KeyCreated})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Publish(t.Context(), delivery.Subject(webhook.KeyCreated), data); err != nil {
		t.Fatal(err)
	}

	e.start(cfg)
	r := e.waitFor(ep, ev, func(r row) bool { return r.Status == "succeeded" })
	waitCounter(t, e.reg, "webhook_deliveries_created_total", 1)
	// Both copies are consumed before the counts are final.
	waitCondition(t, "the fan-out consumed both copies", func() bool { return consumerPending(t, e.js) == 0 })
	if n := e.count(`SELECT count(*) FROM api_gateway.webhook_deliveries`); n != 1 || r.Attempts != 1 || len(rcv.received()) != 1 {
		t.Fatalf("%d deliveries, %d attempts, %d requests; want 1 each", n, r.Attempts, len(rcv.received()))
	}
	if got := value(t, e.reg, "webhook_deliveries_created_total", ""); got != 1 {
		t.Fatalf("deliveries created %v, want 1", got)
	}
	if got := value(t, e.reg, "webhook_events_relayed_total", ""); got != 1 {
		t.Fatalf("events relayed %v, want 1", got)
	}
}

// TestOutboxWaitsWhileNATSIsDown: events written while NATS is away stay in
// the outbox (the lag grows) and are delivered once it is back.
func TestOutboxWaitsWhileNATSIsDown(t *testing.T) {
	e := newEnv(t)
	ep, secret := e.endpoint("alice", "")
	rcv := newReceiver(t, secret)
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2 WHERE id = $1`, ep, rcv.srv.URL)
	cfg := delivery.Config{AllowHosts: allowLoopback(t), Backoff: fast, Poll: 20 * time.Millisecond, Timeout: 2 * time.Second}
	e.start(cfg)
	before := e.enqueue("alice")
	e.waitFor(ep, before, func(r row) bool { return r.Status == "succeeded" })

	e.nats.Stop()
	during := e.enqueue("alice")
	e.exec(`UPDATE api_gateway.webhook_events SET created_at = now() - interval '1 minute' WHERE id = $1`, during)
	waitCondition(t, "the outbox lag shows the waiting event", func() bool { return gauge(t, e.reg, "webhook_outbox_lag_seconds") >= 60 })
	if n := e.count(`SELECT count(*) FROM api_gateway.webhook_events WHERE relayed_at IS NULL`); n != 1 {
		t.Fatalf("%d events wait in the outbox while NATS is down, want 1", n)
	}
	e.nats.Start()
	r := e.waitFor(ep, during, func(r row) bool { return r.Status == "succeeded" })
	waitCondition(t, "the outbox lag back to 0", func() bool { return gauge(t, e.reg, "webhook_outbox_lag_seconds") == 0 })
	got := rcv.received()
	if r.Attempts != 1 || len(got) != 2 || got[1].id != during {
		t.Fatalf("delivery %+v; %d requests", r, len(got))
	}
}

// TestPruneAfterRetention: an event older than the retention whose
// deliveries are settled is deleted with them; a younger one, one with a
// pending delivery and one not yet relayed are kept.
func TestPruneAfterRetention(t *testing.T) {
	e := newEnv(t)
	ep, _ := e.endpoint("alice", "https://example.com/hook")
	ids := map[string]string{}
	for _, name := range []string{"old settled", "old failed", "old pending", "old unrelayed", "young settled"} {
		ids[name] = e.enqueue("alice")
	}
	for name, id := range ids {
		if name != "old unrelayed" {
			e.exec(`UPDATE api_gateway.webhook_events SET relayed_at = now() WHERE id = $1`, id)
			if _, err := webhook.FanOut(t.Context(), e.db, []string{id}, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		if name[:3] == "old" {
			e.exec(`UPDATE api_gateway.webhook_events SET created_at = now() - interval '31 days' WHERE id = $1`, id)
		}
	}
	e.exec(`UPDATE api_gateway.webhook_deliveries SET status = 'succeeded' WHERE event_id = ANY($1)`,
		pq.Array([]string{ids["old settled"], ids["young settled"]}))
	e.exec(`UPDATE api_gateway.webhook_deliveries SET status = 'failed' WHERE event_id = $1`, ids["old failed"])

	p, err := delivery.NewPruner(delivery.Config{}, e.db, e.metrics, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.RunOnce(t.Context())
	if err != nil || n != 2 {
		t.Fatalf("pruned %d (%v), want 2", n, err)
	}
	for name, id := range ids {
		want := 1
		if name == "old settled" || name == "old failed" {
			want = 0
		}
		if got := e.count(`SELECT count(*) FROM api_gateway.webhook_events WHERE id = $1`, id); got != want {
			t.Errorf("%s: %d events, want %d", name, got, want)
		}
	}
	if got := e.count(`SELECT count(*) FROM api_gateway.webhook_deliveries WHERE endpoint_id = $1`, ep); got != 2 {
		t.Errorf("%d deliveries left, want 2 (old pending, young settled)", got)
	}
	if got := value(t, e.reg, "webhook_events_pruned_total", ""); got != 2 {
		t.Errorf("pruned counter %v", got)
	}
	if n, err := p.RunOnce(t.Context()); err != nil || n != 0 {
		t.Fatalf("pruned %d more (%v)", n, err)
	}
}

func consumerPending(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	c, err := js.Consumer(t.Context(), delivery.StreamName, delivery.FanOutConsumer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending + uint64(info.NumAckPending)
}

func waitCondition(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitCounter(t *testing.T, reg *prometheus.Registry, name string, want float64) {
	t.Helper()
	waitCondition(t, name, func() bool { return value(t, reg, name, "") >= want })
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}
