package rollup_test

import (
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/aggregator/internal/rollup"
	"github.com/mana/apigw/consumer"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// FuzzRowOf: any message that decodes becomes a row whose day is the UTC
// date of its (microsecond) time and whose fields are the event's.
func FuzzRowOf(f *testing.F) {
	at := time.Date(2025, 1, 31, 23, 59, 59, 999999999, time.UTC)
	ev := &usagev1.UsageEvent{EventId: "01JJ0000000000000000000000", KeyId: "0b5e0f0e-7e7a-4a5e-9a39-6a7d2c1f0a11",
		Endpoint: "POST /v1/tts/synthesize", Status: 502, Credits: 2, Units: 1500, Unit: "character",
		OccurredAt: timestamppb.New(at), Period: "2025-01"}
	data, _ := proto.Marshal(ev)
	f.Add(data)
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := usagev1.Decode(data)
		if err != nil {
			return
		}
		r := rollup.RowOf(ev)
		if r.OccurredAt.Nanosecond()%1000 != 0 {
			t.Fatalf("time %v not truncated to microseconds", r.OccurredAt)
		}
		d := r.Day()
		if d.After(r.OccurredAt) || r.OccurredAt.Sub(d) >= 24*time.Hour || d.Location() != time.UTC {
			t.Fatalf("day %v of %v", d, r.OccurredAt)
		}
		if r.EventID != ev.GetEventId() || r.Credits != ev.GetCredits() || r.Status != ev.GetStatus() {
			t.Fatalf("row %+v of %v", r, ev)
		}
	})
}

// FuzzDecodeChecked: any message of either form is split into events the
// consumers apply (each valid, with a distinct index inside its batch) and
// what they dead-letter, counted; nothing panics.
func FuzzDecodeChecked(f *testing.F) {
	at := time.Date(2025, 1, 31, 23, 59, 59, 0, time.UTC)
	ev := &usagev1.UsageEvent{EventId: "01JJ0000000000000000000000", KeyId: "0b5e0f0e-7e7a-4a5e-9a39-6a7d2c1f0a11",
		Endpoint: "POST /v1/search", Status: 200, Credits: 1, Units: 1, Unit: "request",
		OccurredAt: timestamppb.New(at), Period: "2025-01"}
	bad := proto.Clone(ev).(*usagev1.UsageEvent)
	bad.KeyId = "not-a-uuid"
	one, _ := proto.Marshal(ev)
	batch, _ := proto.Marshal(&usagev1.UsageBatch{BatchId: "01JJ0000000000000000000001", Events: []*usagev1.UsageEvent{ev, bad, ev}})
	f.Add(false, one)
	f.Add(true, batch)
	f.Add(true, []byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, isBatch bool, data []byte) {
		subject := usagev1.Subject("k")
		if isBatch {
			subject = usagev1.BatchSubject("gw")
		}
		var rep rollup.Report
		evs := rollup.DecodeChecked(t.Context(), 7, subject, data, &rep, slog.New(slog.DiscardHandler))
		if len(evs) != rep.Events {
			t.Fatalf("%d events returned, %d counted", len(evs), rep.Events)
		}
		if len(rep.Skipped) != rep.Invalid+rep.InvalidEvents {
			t.Fatalf("skipped %+v, counted %d + %d", rep.Skipped, rep.Invalid, rep.InvalidEvents)
		}
		seen := map[int]bool{}
		for _, e := range evs {
			if err := e.Event.Validate(); err != nil || consumer.CheckKeyID(e.Event) != nil {
				t.Fatalf("event %v applied: %v", e.Event, err)
			}
			if isBatch == (e.Index < 0) || seen[e.Index] && e.Index >= 0 {
				t.Fatalf("index %d (batch %v, seen %v)", e.Index, isBatch, seen)
			}
			seen[e.Index] = true
		}
	})
}
