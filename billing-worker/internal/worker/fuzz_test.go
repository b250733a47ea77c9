package worker_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/billing-worker/internal/ledger"
	"github.com/mana/apigw/consumer"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// FuzzEvent feeds arbitrary bytes through what the worker does with a
// message before the database: decode, check, ledger entry. It must never
// panic, and whatever passes must make a well-formed entry.
func FuzzEvent(f *testing.F) {
	at := time.Date(2025, 3, 31, 23, 59, 59, 0, time.UTC)
	good := &usagev1.UsageEvent{EventId: "01JQ0000000000000000000000", KeyId: "0b5e0f0e-7e7a-4a5e-9a39-6a7d2c1f0a11",
		Endpoint: "POST /v1/search", Status: 200, Credits: 3, Units: 1, Unit: "request",
		OccurredAt: timestamppb.New(at), Period: "2025-03", MonthlyCredits: 100}
	data, err := proto.Marshal(good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte{})
	f.Add([]byte("\xff\xfe garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := usagev1.Decode(data)
		if err != nil {
			return
		}
		if consumer.CheckKeyID(ev) != nil {
			return
		}
		e, err := ledger.EntryOf(ev, 1)
		if err != nil {
			t.Fatalf("valid event %v has no entry: %v", ev, err)
		}
		if e.Period.Day() != 1 || e.Period.Format("2006-01") != ev.GetPeriod() || e.Credits < 0 {
			t.Fatalf("entry %+v of %v", e, ev)
		}
	})
}
