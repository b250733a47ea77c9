package worker_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mana/apigw/proto/webhook"
	"github.com/mana/apigw/services/testenv"
)

// holdingReceiver answers 200, except that it holds the first request until
// release is closed.
type holdingReceiver struct {
	srv     *httptest.Server
	arrived chan struct{} // closed when the first request came
	release chan struct{}
	mu      sync.Mutex
	ids     []string
	times   []time.Time
}

func newHoldingReceiver(t *testing.T) *holdingReceiver {
	r := &holdingReceiver{arrived: make(chan struct{}), release: make(chan struct{})}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.ids = append(r.ids, req.Header.Get("webhook-id"))
		r.times = append(r.times, time.Now())
		first := len(r.ids) == 1
		r.mu.Unlock()
		if first {
			close(r.arrived)
			select {
			case <-r.release:
			case <-req.Context().Done():
			}
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(func() {
		select {
		case <-r.release:
		default:
			close(r.release)
		}
		r.srv.Close()
	})
	return r
}

func (r *holdingReceiver) received() ([]string, []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...), append([]time.Time(nil), r.times...)
}

// TestWebhookSenderKilledMidSend: the billing worker is killed (SIGKILL)
// while the receiver holds its request; another worker sends the event again
// once the lease ends, under the same webhook-id, and it is delivered.
func TestWebhookSenderKilledMidSend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bin := testenv.BuildBinary(t, "./billing-worker/cmd/billing-worker")
	rcv := newHoldingReceiver(t)
	ep := uuid.NewString()
	if _, err := e.db.Exec(`INSERT INTO api_gateway.webhook_endpoints (id, owner_id, url, secret) VALUES ($1, 'owner-kill', $2, $3)`,
		ep, rcv.srv.URL+"/hook", webhook.NewSecret()); err != nil {
		t.Fatal(err)
	}
	id := webhook.NewID()
	if err := webhook.Enqueue(t.Context(), e.db, webhook.Event{ID: id, OwnerID: "owner-kill", Type: webhook.KeyCreated,
		Data: map[string]string{"keyId": "k"}}); err != nil {
		t.Fatal(err)
	}
	settings := []string{"WEBHOOK_ALLOW_HOSTS", "127.0.0.1", "WEBHOOK_TIMEOUT", "2s", "WEBHOOK_LEASE", "4s"}
	first := e.spawn(bin, settings...)
	select {
	case <-rcv.arrived:
	case <-time.After(90 * time.Second):
		t.Fatal("the first worker never sent the webhook")
	}
	first.Kill()
	var leasedUntil time.Time
	var attempts int
	if err := e.db.QueryRow(`SELECT leased_until, attempts FROM api_gateway.webhook_deliveries WHERE event_id = $1`, id).
		Scan(&leasedUntil, &attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 {
		t.Fatalf("attempts %d after the first send", attempts)
	}
	close(rcv.release)

	e.spawn(bin, settings...)
	deadline := time.Now().Add(90 * time.Second)
	for e.Count(`SELECT count(*) FROM api_gateway.webhook_deliveries WHERE event_id = $1 AND status = 'succeeded'`, id) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("never delivered after the kill")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ids, times := rcv.received()
	if len(ids) != 2 || ids[0] != id || ids[1] != id {
		t.Fatalf("webhook-ids received %v, want %s twice", ids, id)
	}
	if times[1].Before(leasedUntil.Add(-time.Second)) {
		t.Fatalf("sent again at %s, before the lease ended at %s", times[1], leasedUntil)
	}
	if n := e.Count(`SELECT attempts FROM api_gateway.webhook_deliveries WHERE event_id = $1`, id); n != 2 {
		t.Fatalf("attempts %d, want 2", n)
	}
}
