package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// TestGatewayKill9UnderLoad kills the gateway with SIGKILL while 32 clients
// call it on eight keys, then restarts it. Every 200 a client received must
// be in the ledger (its event is found on the stream by the request ID the
// client sent, and that event's ID in the ledger); what is charged but was
// never received is at most the calls that were in flight when it died.
func TestGatewayKill9UnderLoad(t *testing.T) {
	const clients, nkeys, killAfter = 32, 8, 1500
	s := newStack(t, stackOpts{pricing: testPricing})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	keyIDs := make([]string, nkeys)
	secrets := make([]string, nkeys)
	for i := range nkeys {
		k := s.createKey(gw, tok, map[string]any{"name": fmt.Sprint("kill", i), "tier": "soak"})
		keyIDs[i], secrets[i] = k.ID, k.Key
	}

	var (
		mu       sync.Mutex
		received = map[string]bool{} // request IDs answered 200
		served   atomic.Int64
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	for c := range clients {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rid := fmt.Sprintf("kill-%d-%d", c, i)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				resp, _, err := s.http.Do(ctx, "POST", gw+"/v1/search", []byte(`{"query":"quantum computing"}`),
					map[string]string{"X-API-Key": secrets[c%nkeys], "X-Request-Id": rid, "Content-Type": "application/json"})
				cancel()
				if err != nil {
					return // the gateway is gone
				}
				if resp.StatusCode == 200 {
					mu.Lock()
					received[rid] = true
					mu.Unlock()
					served.Add(1)
				}
			}
		}(c)
	}
	eventuallyWithin(t, 120*time.Second, "load under way", func() (bool, string) {
		return served.Load() >= killAfter, fmt.Sprint(served.Load(), " served")
	})
	s.gateways[0].Kill()
	close(stop)
	wg.Wait()
	t.Logf("KILL -9 under %d clients: %d calls answered 200 before the gateway died", clients, len(received))

	// The restarted gateway republishes whatever its spool holds.
	s.gateways[0].StartWaitingFor(gw + "/ready")
	eventuallyWithin(t, 120*time.Second, "billing consumer caught up", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := s.js.Consumer(ctx, usagev1.StreamName, "billing")
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.NumPending == 0 && info.NumAckPending == 0, fmt.Sprintf("%d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
	})

	// Every event of these keys on the stream, by request ID.
	mine := map[string]bool{}
	for _, id := range keyIDs {
		mine[id] = true
	}
	byRequest := map[string]string{}
	s.eachEvent(60*time.Second, func(ev *usagev1.UsageEvent) {
		if mine[ev.GetKeyId()] && ev.GetStatus() == 200 {
			byRequest[ev.GetRequestId()] = ev.GetEventId()
		}
	})

	inLedger := map[string]bool{}
	var ids []string
	if err := s.db.Select(&ids, `SELECT event_id FROM api_gateway.credit_ledger WHERE key_id = ANY($1::uuid[]) AND credits > 0`, pq.Array(keyIDs)); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		inLedger[id] = true
	}
	missing := 0
	for rid := range received {
		if ev, ok := byRequest[rid]; !ok || !inLedger[ev] {
			missing++
		}
	}
	charged := len(ids)
	t.Logf("KILL -9: served %d, charged %d (ledger rows), served but not charged %d, charged but never received %d",
		len(received), charged, missing, charged-(len(received)-missing))
	if missing != 0 {
		t.Fatalf("%d of %d calls answered 200 are not in the ledger", missing, len(received))
	}
	if extra := charged - len(received); extra < 0 || extra > clients {
		t.Fatalf("charged %d, received %d: %d charged without an answer, want 0..%d (the calls in flight)", charged, len(received), extra, clients)
	}
	var dups int
	if err := s.db.Get(&dups, `SELECT count(*) - count(DISTINCT event_id) FROM api_gateway.credit_ledger WHERE key_id = ANY($1::uuid[])`, pq.Array(keyIDs)); err != nil || dups != 0 {
		t.Fatalf("duplicates %d (%v)", dups, err)
	}
}
