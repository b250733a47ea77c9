package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSpoolTornTailAcrossRestart: NATS is away, so the gateway spools its
// usage batches; the gateway is killed (kill -9) and the spool's tail is
// torn, as a crash in the middle of a write leaves it. The gateway restarts
// with NATS still away and spools more. When NATS comes back, every served
// call — spooled before the crash and after the restart — is in the ledger,
// exactly once.
func TestSpoolTornTailAcrossRestart(t *testing.T) {
	s := newStack(t, stackOpts{pricing: testPricing})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "spool", "tier": "soak"})
	served := int64(0)
	call := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			resp, b := s.do("POST", gw+"/v1/search", `{"query":"quantum computing"}`, map[string]string{"X-API-Key": k.Key})
			if resp.StatusCode != 200 {
				t.Fatalf("call %d: %d %s", served, resp.StatusCode, b)
			}
			served++
		}
	}
	call(5)
	s.nats.Stop()
	call(20)
	active := filepath.Join(s.spools[0], "active.spool")
	spooled, err := os.ReadFile(active)
	if err != nil || len(spooled) == 0 {
		t.Fatalf("nothing spooled while NATS was away: %d bytes, %v", len(spooled), err)
	}
	s.gateways[0].Kill()
	// A torn write: the start of a frame (its header and part of its
	// payload) with the rest never written.
	torn := spooled[:min(len(spooled), 40)]
	f, err := os.OpenFile(active, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(torn); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	s.gateways[0].StartWaitingFor(gw + "/health") // not ready: NATS is still away
	if !bytes.Contains(s.gateways[0].Log(), []byte("torn or damaged tail truncated")) {
		t.Fatal("the restarted gateway did not cut off the torn tail")
	}
	if _, m := s.do("GET", gw+"/metrics", nil, nil); !bytes.Contains(m, []byte(fmt.Sprintf("gateway_usage_spool_damaged_bytes_total %d\n", len(torn)))) {
		t.Fatalf("the cut is not counted in /metrics:\n%s", m)
	}
	call(20)
	s.nats.Start()
	eventuallyWithin(t, 90*time.Second, "ledger holds every served call", func() (bool, string) {
		rows, credits := s.ledger(k.ID)
		return rows == served && credits == served, fmt.Sprintf("%d rows, %d credits of %d served", rows, credits, served)
	})
	var dups int
	if err := s.db.Get(&dups, `SELECT count(*) - count(DISTINCT event_id) FROM api_gateway.credit_ledger WHERE key_id = $1`, k.ID); err != nil || dups != 0 {
		t.Fatalf("duplicates %d (%v)", dups, err)
	}
	eventually(t, "spool empty", func() (bool, string) {
		n := s.spoolBytes(0)
		return n == 0, fmt.Sprint(n, " bytes")
	})
}
