package backlog

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

func event(key string, credits int64) *usagev1.UsageEvent {
	now := time.Now().UTC()
	return &usagev1.UsageEvent{
		EventId: ulid.Make().String(), RequestId: "r", KeyId: key, OwnerId: "o", Tier: "pro", Endpoint: "search",
		Status: 200, Credits: credits, Units: 1, Unit: "request", OccurredAt: timestamppb.New(now),
		Period: now.Format("2006-01"), MonthlyCredits: 5000,
	}
}

func publish(t *testing.T, js jetstream.JetStream, evs ...*usagev1.UsageEvent) {
	t.Helper()
	b, err := proto.Marshal(&usagev1.UsageBatch{BatchId: ulid.Make().String(), GatewayId: "gw", SealedAt: timestamppb.Now(), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), usagev1.BatchSubject("gw"), b); err != nil {
		t.Fatal(err)
	}
}

// TestPendingIsWhatBillingHasNotAcknowledged: the reader starts at the
// billing consumer's floor, sees what is published up to the moment Pending
// is called, counts a republished event once, leaves out invalid events, and
// forgets what the billing consumer acknowledges.
func TestPendingIsWhatBillingHasNotAcknowledged(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := usagev1.EnsureStream(t.Context(), js, 0)
	if err != nil {
		t.Fatal(err)
	}
	billing, err := stream.CreateOrUpdateConsumer(t.Context(), jetstream.ConsumerConfig{
		Durable: usagev1.BillingConsumer, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: usagev1.SubjectWildcard,
	})
	if err != nil {
		t.Fatal(err)
	}
	ack := func(n int) {
		t.Helper()
		b, err := billing.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range b.Messages() {
			if err := m.DoubleAck(t.Context()); err != nil {
				t.Fatal(err)
			}
			got++
		}
		if got != n {
			t.Fatalf("billing fetched %d of %d", got, n)
		}
	}
	// Applied before the reader starts: never indexed.
	applied := event("k1", 100)
	publish(t, js, applied)
	ack(1)

	tail, err := New(Config{JS: js, Logger: testenv.Logger(t), FloorInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go tail.Run(ctx)

	a, b := event("k1", 1), event("k1", 2)
	other := event("k2", 5)
	invalid := event("k1", 50)
	invalid.Status = 0 // the billing worker dead-letters it
	lastMonth := event("k1", 7)
	lastMonth.OccurredAt = timestamppb.New(time.Now().UTC().AddDate(0, -1, 0))
	lastMonth.Period = lastMonth.OccurredAt.AsTime().Format("2006-01")
	publish(t, js, a, other, invalid)
	publish(t, js, b, lastMonth)
	publish(t, js, a) // republished after the duplicate window: the same event
	period := a.Period

	// Called right after the publishes, Pending has read them all.
	got, err := tail.Pending(t.Context(), []string{"k1", "k2"}, period)
	if err != nil {
		t.Fatal(err)
	}
	if len(got["k1"]) != 2 || got["k1"][a.EventId] != 1 || got["k1"][b.EventId] != 2 || got["k2"][other.EventId] != 5 {
		t.Fatalf("pending %v", got)
	}
	if all, err := tail.Pending(t.Context(), nil, period); err != nil || len(all) != 2 {
		t.Fatalf("pending of every key %v, %v", all, err)
	}

	// Billing applies the first two messages; the third (a, again) stays.
	ack(2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err = tail.Pending(t.Context(), nil, period)
		if err != nil {
			t.Fatal(err)
		}
		if len(got["k2"]) == 0 && len(got["k1"]) == 0 {
			break // a's entry went with its first message; the republish added nothing new
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending after billing acknowledged: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A new event after the floor is pending again.
	c := event("k2", 3)
	publish(t, js, c)
	if got, err := tail.Pending(t.Context(), []string{"k2"}, period); err != nil || got["k2"][c.EventId] != 3 || len(got["k2"]) != 1 {
		t.Fatalf("pending %v, %v", got, err)
	}
}

// TestOverItsBoundTheBacklogSaysIncomplete: with the billing worker away, the
// backlog stops indexing at its bound instead of growing without end, sums
// what it does not index per key (so a balance from it is never too high),
// says so, and is exact again once billing applies past what it summed.
func TestOverItsBoundTheBacklogSaysIncomplete(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := usagev1.EnsureStream(t.Context(), js, 0)
	if err != nil {
		t.Fatal(err)
	}
	billing, err := stream.CreateOrUpdateConsumer(t.Context(), jetstream.ConsumerConfig{
		Durable: usagev1.BillingConsumer, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: usagev1.SubjectWildcard,
	})
	if err != nil {
		t.Fatal(err)
	}
	tail, err := New(Config{JS: js, Logger: testenv.Logger(t), FloorInterval: 50 * time.Millisecond, MaxEvents: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go tail.Run(ctx)

	a, b, c := event("k1", 1), event("k1", 2), event("k2", 3)
	publish(t, js, a, b, c)                          // 3 of 4
	publish(t, js, event("k1", 10), event("k2", 20)) // would be 5: summed
	publish(t, js, event("k1", 100), event("k2", 7)) // summed too
	got, err := tail.Pending(t.Context(), []string{"k1", "k2"}, a.Period)
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("over the bound: err %v", err)
	}
	if len(got["k1"]) != 3 || got["k1"][a.EventId] != 1 || got["k1"][b.EventId] != 2 || got["k1"][SummedEventID] != 110 ||
		len(got["k2"]) != 2 || got["k2"][c.EventId] != 3 || got["k2"][SummedEventID] != 27 {
		t.Fatalf("what was indexed and summed: %v", got)
	}
	if all, err := tail.Pending(t.Context(), nil, a.Period); !errors.Is(err, ErrIncomplete) || all["k2"][SummedEventID] != 27 || all["k1"][SummedEventID] != 110 {
		t.Fatalf("every key over the bound: %v, %v", all, err)
	}
	if n := tail.Size(); n != 3 {
		t.Fatalf("size %d, want 3", n)
	}

	// Billing applies every message: exact again, and empty.
	batch, err := billing.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	for m := range batch.Messages() {
		if err := m.DoubleAck(t.Context()); err != nil {
			t.Fatal(err)
		}
		acked++
	}
	if acked != 3 {
		t.Fatalf("billing fetched %d of 3", acked)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err = tail.Pending(t.Context(), nil, a.Period)
		if err == nil && len(got) == 0 && tail.Size() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after billing applied everything: %v, %v, size %d", got, err, tail.Size())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Room again: a new event is indexed.
	d := event("k2", 4)
	publish(t, js, d)
	if got, err := tail.Pending(t.Context(), []string{"k2"}, d.Period); err != nil || got["k2"][d.EventId] != 4 {
		t.Fatalf("pending %v, %v", got, err)
	}
}

// TestAStreamCreatedAgainStartsOver: a stream deleted and created again
// numbers its messages from 1; the backlog forgets the old stream and
// reads the new one instead of skipping what it takes for old sequences.
func TestAStreamCreatedAgainStartsOver(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usagev1.EnsureStream(t.Context(), js, 0); err != nil {
		t.Fatal(err)
	}
	tail, err := New(Config{JS: js, Logger: testenv.Logger(t), FloorInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go tail.Run(ctx)
	old := []*usagev1.UsageEvent{event("k1", 1), event("k1", 2), event("k1", 3)}
	for _, ev := range old {
		publish(t, js, ev)
	}
	if got, err := tail.Pending(t.Context(), []string{"k1"}, old[0].Period); err != nil || len(got["k1"]) != 3 {
		t.Fatalf("before: %v, %v", got, err)
	}
	if err := js.DeleteStream(t.Context(), usagev1.StreamName); err != nil {
		t.Fatal(err)
	}
	if _, err := usagev1.EnsureStream(t.Context(), js, 0); err != nil {
		t.Fatal(err)
	}
	fresh := event("k1", 7)
	publish(t, js, fresh)
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := tail.Pending(t.Context(), []string{"k1"}, fresh.Period)
		if err == nil && len(got["k1"]) == 1 && got["k1"][fresh.EventId] == 7 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the stream was created again: %v, %v", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
