package rollup_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/aggregator/internal/rollup"
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
