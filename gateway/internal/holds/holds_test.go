package holds

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mana/apigw/services/testenv"
)

type gateway struct {
	nc       *nats.Conn
	ledger   *Ledger
	presence *Presence
}

// startGateways connects n gateways to srv, each answering hold queries and
// announcing itself, and waits until the first knows of all of them.
func startGateways(t *testing.T, srv *testenv.NATS, n int) []gateway {
	t.Helper()
	logger := testenv.Logger(t)
	var gws []gateway
	for i := range n {
		nc, err := nats.Connect(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		id := "gw" + strconv.Itoa(i)
		l := NewLedger()
		if _, err := l.Serve(t.Context(), nc, id, 2*time.Second, logger); err != nil {
			t.Fatal(err)
		}
		p, err := NewPresence(nc, id, 200*time.Millisecond, logger)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		t.Cleanup(cancel)
		go p.Run(ctx)
		gws = append(gws, gateway{nc: nc, ledger: l, presence: p})
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(gws[0].presence.Live()) != n {
		if time.Now().After(deadline) {
			t.Fatalf("gateway 0 knows %v of %d gateways", gws[0].presence.Live(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return gws
}

func TestQueryCollectsEveryGatewaysHoldsAndReturnsWhenAllAnswered(t *testing.T) {
	srv := testenv.StartNATS(t)
	gws := startGateways(t, srv, 3)
	hold := func(l *Ledger, key, ev string, c int64) { l.Begin(key, ev, c); l.End(key, ev, true) }
	hold(gws[0].ledger, "k1", "e1", 3)
	hold(gws[1].ledger, "k1", "e2", 5)
	hold(gws[1].ledger, "k2", "e3", 7)
	hold(gws[2].ledger, "k1", "e4", 1)
	gws[2].ledger.Release("k1", "e4")
	hold(gws[2].ledger, "k1", "e5", 4)
	gws[2].ledger.Settle("k1", "e5", 2) // the backend answered: charged 2 of 4
	gws[0].ledger.Begin("k1", "e6", 9)
	gws[0].ledger.End("k1", "e6", false) // the script refused the call

	// A long deadline: the query must not wait for it once all three answered.
	q := NewQuery(gws[0].nc, gws[0].presence, 10*time.Second)
	start := time.Now()
	a, err := q.Held(t.Context(), []string{"k1"})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	got := a.Holds["k1"]
	if len(a.Holds) != 1 || len(got) != 3 || got["e1"] != 3 || got["e2"] != 5 || got["e5"] != 2 {
		t.Fatalf("holds %v", a.Holds)
	}
	if took > 2*time.Second {
		t.Fatalf("the query took %v with every gateway answering; it waited for its deadline", took)
	}
	all, err := q.Held(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Holds) != 2 || all.Holds["k2"]["e3"] != 7 {
		t.Fatalf("every key's holds: %v", all.Holds)
	}
	t.Logf("3 gateways answered in %v", took)
}

// TestQueryWaitsForTentativeHolds: a hold whose script has not answered is
// reported only once it settles: counted if taken, not if refused.
func TestQueryWaitsForTentativeHolds(t *testing.T) {
	srv := testenv.StartNATS(t)
	gws := startGateways(t, srv, 2)
	q := NewQuery(gws[0].nc, gws[0].presence, 10*time.Second)
	for _, taken := range []bool{true, false} {
		gws[1].ledger.Begin("k", "e", 5)
		res := make(chan Answer, 1)
		go func() {
			a, err := q.Held(t.Context(), []string{"k"})
			if err != nil {
				t.Error(err)
			}
			res <- a
		}()
		select {
		case a := <-res:
			t.Fatalf("answered %v while a hold was tentative", a.Holds)
		case <-time.After(300 * time.Millisecond):
		}
		gws[1].ledger.End("k", "e", taken)
		select {
		case a := <-res:
			if got := a.Holds["k"]["e"]; (got == 5) != taken {
				t.Fatalf("taken=%v: holds %v", taken, a.Holds)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no answer after the hold settled")
		}
		gws[1].ledger.Release("k", "e")
	}
}

// TestQueryReportsASilentGateway: a gateway that announced itself and does
// not answer makes the query return at its deadline with what came and
// ErrIncomplete.
func TestQueryReportsASilentGateway(t *testing.T) {
	srv := testenv.StartNATS(t)
	gws := startGateways(t, srv, 2)
	// A third gateway announces itself and never answers.
	silent, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(silent.Close)
	if _, err := NewPresence(silent, "silent", time.Second, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(gws[0].presence.Live()) != 3 {
		if time.Now().After(deadline) {
			t.Fatal("the silent gateway was never heard of")
		}
		time.Sleep(10 * time.Millisecond)
	}
	gws[1].ledger.Begin("k", "e", 2)
	gws[1].ledger.End("k", "e", true)
	q := NewQuery(gws[0].nc, gws[0].presence, 300*time.Millisecond)
	start := time.Now()
	a, err := q.Held(t.Context(), []string{"k"})
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("err %v, want ErrIncomplete", err)
	}
	if a.Holds["k"]["e"] != 2 {
		t.Fatalf("the answers that came are lost: %v", a.Holds)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("returned after %v, before its deadline, with a gateway missing", took)
	}

	srv.Stop()
	deadline = time.Now().Add(10 * time.Second)
	for gws[0].nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := q.Held(t.Context(), []string{"k"}); err == nil {
		t.Fatal("no error with NATS down")
	}
}
