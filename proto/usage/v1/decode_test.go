package usagev1_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

func validEvent(id string) *usagev1.UsageEvent {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	return &usagev1.UsageEvent{EventId: id, KeyId: "k1", Endpoint: "/v1/search", Status: 200, Credits: 1, Units: 1,
		Unit: "request", OccurredAt: timestamppb.New(at), Period: "2026-03"}
}

func TestDecodeMessage(t *testing.T) {
	good1, good2 := validEvent("01HZY8Q3W6R0000000000000A1"), validEvent("01HZY8Q3W6R0000000000000A2")
	bad := validEvent("not-a-ulid")
	batch := func(id string, evs ...*usagev1.UsageEvent) []byte {
		b, err := proto.Marshal(&usagev1.UsageBatch{BatchId: id, GatewayId: "gw", SealedAt: timestamppb.Now(), Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	single, err := proto.Marshal(good1)
	if err != nil {
		t.Fatal(err)
	}
	batchSubject := usagev1.BatchSubject("gw-1")
	tests := []struct {
		name      string
		subject   string
		data      []byte
		wantIDs   []string
		wantBad   []int
		withError func(*testing.T, error)
	}{
		{name: "older single event", subject: usagev1.Subject("k1"), data: single, wantIDs: []string{good1.EventId}},
		{name: "batch", subject: batchSubject, data: batch("01HZY8Q3W6R00000000000BAT1", good1, good2), wantIDs: []string{good1.EventId, good2.EventId}},
		{name: "batch with one bad event", subject: batchSubject, data: batch("01HZY8Q3W6R00000000000BAT1", good1, bad, good2),
			wantIDs: []string{good1.EventId, good2.EventId}, wantBad: []int{1}},
		{name: "batch without ID", subject: batchSubject, data: batch("", good1), withError: wantInvalid},
		{name: "empty batch", subject: batchSubject, data: batch("01HZY8Q3W6R00000000000BAT1"), withError: wantInvalid},
		{name: "garbage batch", subject: batchSubject, data: []byte{0xff, 0xff, 0xff}, withError: wantSome},
		{name: "single event on the batch subject is not a batch", subject: batchSubject, data: single, withError: wantSome},
		{name: "invalid single event", subject: usagev1.Subject("k1"), data: mustMarshal(t, bad), withError: wantInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := usagev1.DecodeMessage(tt.subject, tt.data)
			if tt.withError != nil {
				tt.withError(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Events) != len(tt.wantIDs) {
				t.Fatalf("got %d events, want %d", len(m.Events), len(tt.wantIDs))
			}
			for i, id := range tt.wantIDs {
				if m.Events[i].GetEventId() != id {
					t.Fatalf("event %d is %s, want %s", i, m.Events[i].GetEventId(), id)
				}
			}
			if len(m.Invalid) != len(tt.wantBad) {
				t.Fatalf("got %d invalid events, want %d", len(m.Invalid), len(tt.wantBad))
			}
			for i, idx := range tt.wantBad {
				if m.Invalid[i].Index != idx || !errors.Is(m.Invalid[i].Err, usagev1.ErrInvalid) {
					t.Fatalf("invalid %d = %+v", i, m.Invalid[i])
				}
			}
		})
	}
}

func wantInvalid(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, usagev1.ErrInvalid) {
		t.Fatalf("error %v, want ErrInvalid", err)
	}
}

func wantSome(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBatchSubject(t *testing.T) {
	for in, want := range map[string]string{
		"gw-1": "usage.v2.batch.gw-1", "host.example.com": "usage.v2.batch.host_example_com",
		"a b*>": "usage.v2.batch.a_b__", "": "usage.v2.batch._",
	} {
		if got := usagev1.BatchSubject(in); got != want {
			t.Errorf("BatchSubject(%q) = %q, want %q", in, got, want)
		}
		if !usagev1.IsBatchSubject(usagev1.BatchSubject(in)) {
			t.Errorf("IsBatchSubject(BatchSubject(%q)) is false", in)
		}
	}
	if usagev1.IsBatchSubject(usagev1.Subject("k")) {
		t.Error("a single-event subject counts as a batch subject")
	}
}

// FuzzDecodeMessage: any bytes on either subject decode or fail cleanly, and
// every event returned (valid or invalid) is accounted for exactly once.
func FuzzDecodeMessage(f *testing.F) {
	b, err := proto.Marshal(&usagev1.UsageBatch{BatchId: "01HZY8Q3W6R00000000000BAT1", Events: []*usagev1.UsageEvent{validEvent("01HZY8Q3W6R0000000000000A1")}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(true, b)
	s, err := proto.Marshal(validEvent("01HZY8Q3W6R0000000000000A1"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(false, s)
	f.Fuzz(func(t *testing.T, isBatch bool, data []byte) {
		subject := usagev1.Subject("k")
		if isBatch {
			subject = usagev1.BatchSubject("gw")
		}
		m, err := usagev1.DecodeMessage(subject, data)
		if err != nil {
			return
		}
		for _, ev := range m.Events {
			if ev.Validate() != nil {
				t.Fatal("an invalid event was returned as valid")
			}
		}
		if isBatch {
			var batch usagev1.UsageBatch
			if proto.Unmarshal(data, &batch) != nil || len(batch.Events) != len(m.Events)+len(m.Invalid) {
				t.Fatal("events lost in decoding")
			}
		} else if len(m.Events) != 1 || len(m.Invalid) != 0 {
			t.Fatal("a single event decoded as several")
		}
	})
}

// TestExhaustedEvent: the news of a key refused for want of credits is a
// 402 that charges and grants nothing; anything else of its endpoint is
// invalid.
func TestExhaustedEvent(t *testing.T) {
	exhausted := func(change func(*usagev1.UsageEvent)) *usagev1.UsageEvent {
		ev := validEvent("01HZY8Q3W6R0000000000000X1")
		ev.Endpoint, ev.Status, ev.Credits, ev.Units, ev.Unit = usagev1.ExhaustedEndpoint, 402, 0, 0, "credit"
		if change != nil {
			change(ev)
		}
		return ev
	}
	tests := []struct {
		name  string
		ev    *usagev1.UsageEvent
		valid bool
	}{
		{"the news", exhausted(nil), true},
		{"served", exhausted(func(ev *usagev1.UsageEvent) { ev.Status = 200 }), false},
		{"charging", exhausted(func(ev *usagev1.UsageEvent) { ev.Credits = 1 }), false},
		{"with units", exhausted(func(ev *usagev1.UsageEvent) { ev.Units = 3 }), false},
		{"granting", exhausted(func(ev *usagev1.UsageEvent) { ev.Grant = &usagev1.CreditGrant{Credits: 5} }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ev.Validate()
			if tt.valid != (err == nil) || (err != nil && !errors.Is(err, usagev1.ErrInvalid)) {
				t.Fatalf("Validate() = %v, want valid %v", err, tt.valid)
			}
			if !tt.ev.IsExhausted() || tt.ev.IsGrant() != (tt.ev.Grant != nil) {
				t.Fatal("IsExhausted/IsGrant")
			}
		})
	}
	if validEvent("01HZY8Q3W6R0000000000000X2").IsExhausted() {
		t.Fatal("a call is no exhausted news")
	}
}
