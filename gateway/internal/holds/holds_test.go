package holds

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mana/apigw/services/testenv"
)

func TestQueryCollectsEveryGatewaysHolds(t *testing.T) {
	srv := testenv.StartNATS(t)
	logger := testenv.Logger(t)
	var ledgers []*Ledger
	var conns []*nats.Conn
	for i := 0; i < 3; i++ {
		nc, err := nats.Connect(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		l := NewLedger()
		if _, err := l.Serve(nc, logger); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		ledgers, conns = append(ledgers, l), append(conns, nc)
	}
	ledgers[0].Hold("k1", "e1", 3)
	ledgers[1].Hold("k1", "e2", 5)
	ledgers[1].Hold("k2", "e3", 7)
	ledgers[2].Hold("k1", "e4", 1)
	ledgers[2].Release("k1", "e4")
	q := NewQuery(conns[0], 100*time.Millisecond)
	got, err := q.Held(context.Background(), "k1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["e1"] != 3 || got["e2"] != 5 {
		t.Fatalf("holds %v", got)
	}
	if got, _ := q.Held(context.Background(), "k3"); len(got) != 0 {
		t.Fatalf("holds of an idle key: %v", got)
	}
	srv.Stop()
	// The client notices the server gone after a moment; from then on every
	// query fails rather than answering with nothing.
	for deadline := time.Now().Add(30 * time.Second); conns[0].IsConnected(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client still counts itself connected 30 s after NATS stopped")
		}
	}
	if got, err := q.Held(context.Background(), "k1"); err == nil {
		t.Fatalf("no error with NATS down: %v", got)
	}
}
