package proxy_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// TestAnUnrecordedExhaustionIsToldByTheNextRefusal: the news of a key's
// first 402 in a period can be recorded neither in JetStream (the stream is
// gone) nor in the spool (full). The refusal is still a 402, and the key's
// next 402 of that period carries the news instead, so the owner hears of
// it once the stream is back rather than never.
func TestAnUnrecordedExhaustionIsToldByTheNextRefusal(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture", withSpoolBytes(1))
	secret, k := ev.key("free")
	ctx := context.Background()
	ev.do("GET", "/v1/key", secret, "", "") // loads state
	if err := ev.rdb.HSet(ctx, "gw:{"+k.ID+"}:s", "bal", 2).Err(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ev.nats.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, usagev1.StreamName); err != nil {
		t.Fatal(err)
	}
	const bulk = `{"urls":["https://a.example","https://b.example","https://c.example"]}`
	resp, b := ev.do("POST", "/v1/extract/bulk", secret, "application/json", bulk)
	isProblem(t, resp, b, 402)

	if ev.stream, err = usagev1.EnsureStream(ctx, js, 0); err != nil {
		t.Fatal(err)
	}
	if evs := ev.events(); len(evs) != 0 {
		t.Fatalf("%d events on a stream created after the first refusal: %v", len(evs), evs)
	}
	resp, b = ev.do("POST", "/v1/extract/bulk", secret, "application/json", bulk)
	isProblem(t, resp, b, 402)
	evs := ev.events()
	if len(evs) != 1 || !evs[0].IsExhausted() || evs[0].GetKeyId() != k.ID {
		t.Fatalf("after the second refusal: %d events %v, want its credits.exhausted", len(evs), evs)
	}
	resp, b = ev.do("POST", "/v1/extract/bulk", secret, "application/json", bulk)
	isProblem(t, resp, b, 402)
	if evs := ev.events(); len(evs) != 1 {
		t.Fatalf("%d events after a third refusal, want still the one", len(evs))
	}
}
