package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/pricing"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

// exhaustedPricing: a key of 5 credits, another of 10, no practical rate
// limit, every route.
var exhaustedPricing = string(pricing.WithTiers(
	`tiny: {rateLimitPerMinute: 1000000, monthlyCredits: 5, endpoints: ["*"]}`,
	`small: {rateLimitPerMinute: 1000000, monthlyCredits: 10, endpoints: ["*"]}`,
))

// exhaustedStack is a stack whose billing worker may deliver webhooks to a
// receiver on loopback, with the owner's endpoint subscribed to
// credits.exhausted only.
func exhaustedStack(t *testing.T, gateways int) (*stack, *hookRecorder, string) {
	s := newStack(t, stackOpts{gateways: gateways, pricing: exhaustedPricing, noWorkers: true})
	s.serverEnv = append(s.serverEnv, "WEBHOOK_ALLOW_HOSTS=127.0.0.1")
	s.startWorkers()
	owner := s.login("user@example.com")
	hooks := newHookRecorder(t)
	if resp, b := s.do("POST", s.gwURLs[0]+"/webhooks", map[string]any{"url": hooks.srv.URL + "/hook", "events": []string{"credits.exhausted"}},
		bearer(owner)); resp.StatusCode != 201 {
		t.Fatalf("register webhook: %d %s", resp.StatusCode, b)
	}
	return s, hooks, owner
}

// exhaustedNews counts the key's credits.exhausted events on the stream.
func (s *stack) exhaustedNews(keyID string) int {
	s.t.Helper()
	return s.countEvents(func(ev *usagev1.UsageEvent) bool { return ev.IsExhausted() && ev.GetKeyId() == keyID })
}

// billingDrained waits until the billing worker has acknowledged the whole
// stream and every webhook delivery succeeded.
func (s *stack) billingDrained() {
	s.t.Helper()
	eventually(s.t, "the billing worker through the stream, its deliveries done", func() (bool, string) {
		c, err := s.js.Consumer(context.Background(), usagev1.StreamName, usagev1.BillingConsumer)
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		var pending int64
		if err := s.db.QueryRowx(`SELECT count(*) FROM api_gateway.webhook_deliveries WHERE status <> 'succeeded'`).Scan(&pending); err != nil {
			return false, err.Error()
		}
		return info.NumPending == 0 && info.NumAckPending == 0 && pending == 0,
			fmt.Sprintf("pending %d, unacked %d, deliveries not succeeded %d", info.NumPending, info.NumAckPending, pending)
	})
}

// exhaustedDeliveries returns the credits.exhausted deliveries the receiver
// got, and how often it got each webhook-id.
func exhaustedDeliveries(h *hookRecorder) ([]hookDelivery, map[string]int) {
	got, _ := h.deliveries()
	var out []hookDelivery
	seen := map[string]int{}
	for _, d := range got {
		if d.Body.Type == "credits.exhausted" {
			out = append(out, d)
			seen[d.ID]++
		}
	}
	return out, seen
}

// TestCreditsExhaustedOnce: one key of 5 credits, 48 concurrent calls
// through two gateways; 5 are served and the rest, on both gateways, are
// refused 402. Only the first refusal goes on the stream, and the owner's
// endpoint hears credits.exhausted exactly once — also after a Redis flush
// made a gateway tell it again, after the billing worker read the whole
// stream again, and with a replay of the aggregates agreeing. The news is
// no call: the ledger and the daily table count the 5 served calls only.
func TestCreditsExhaustedOnce(t *testing.T) {
	s, hooks, owner := exhaustedStack(t, 2)
	k := s.createKey(s.gwURLs[0], owner, map[string]any{"name": "runs dry", "tier": "tiny"})
	counts := s.load(k.Key, 48, 16, nil)
	// One more call on each gateway, so that both have refused.
	for _, gw := range s.gwURLs {
		resp, b := s.do("POST", gw+"/v1/search", `{"query":"quantum computing"}`, map[string]string{"X-API-Key": k.Key})
		if resp.StatusCode != 402 {
			t.Fatalf("a call on %s after the credits ran out: %d %s", gw, resp.StatusCode, b)
		}
		counts[resp.StatusCode]++
	}
	if counts[200] != 5 || counts[402] != 45 || len(counts) != 2 {
		t.Fatalf("answers %v, want 5 × 200 and 45 × 402", counts)
	}
	if n := s.exhaustedNews(k.ID); n != 1 {
		t.Fatalf("%d credits.exhausted events on the stream after 45 refusals, want the first one's", n)
	}
	period := time.Now().UTC().Format("2006-01")
	eventually(t, "the credits.exhausted delivery", func() (bool, string) {
		got, _ := exhaustedDeliveries(hooks)
		return len(got) >= 1, fmt.Sprintf("%d deliveries", len(got))
	})
	s.billingDrained()
	got, _ := exhaustedDeliveries(hooks)
	d := got[0].Body.Data
	if d.KeyID != k.ID || d.Period != period || d.CreditsGranted != 5 || d.CreditsUsed < 0 || d.CreditsUsed > 5 {
		t.Fatalf("credits.exhausted %+v", got[0].Body)
	}

	// Redis forgets: the next refusal is told again, and billing tells nobody.
	if err := s.rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if st := s.search(k.Key); st != 402 {
		t.Fatalf("a call after the flush: %d, want 402", st)
	}
	eventually(t, "the refusal after the flush on the stream", func() (bool, string) {
		n := s.exhaustedNews(k.ID)
		return n == 2, fmt.Sprintf("%d events", n)
	})
	s.billingDrained()

	// The billing worker reads the whole stream again.
	s.billing.Stop()
	if err := s.js.DeleteConsumer(context.Background(), usagev1.StreamName, usagev1.BillingConsumer); err != nil {
		t.Fatal(err)
	}
	s.billing.Start()
	eventually(t, "the billing consumer again", func() (bool, string) {
		_, err := s.js.Consumer(context.Background(), usagev1.StreamName, usagev1.BillingConsumer)
		return err == nil, fmt.Sprint(err)
	})
	s.billingDrained()

	got, seen := exhaustedDeliveries(hooks)
	if len(got) != 1 || len(seen) != 1 {
		t.Fatalf("credits.exhausted delivered %d times under %d webhook-ids, want once: %v", len(got), len(seen), seen)
	}
	var alerts, events int64
	if err := s.db.QueryRowx(`SELECT (SELECT count(*) FROM api_gateway.credit_alerts WHERE key_id = $1 AND kind = 'exhausted'),
		(SELECT count(*) FROM api_gateway.webhook_events WHERE type = 'credits.exhausted')`, k.ID).Scan(&alerts, &events); err != nil {
		t.Fatal(err)
	}
	if alerts != 1 || events != 1 {
		t.Fatalf("%d exhausted alerts, %d credits.exhausted events; want 1 and 1", alerts, events)
	}

	// No call of its own: the ledger, the balance and the daily table count
	// the 5 served calls.
	rows, credits := s.ledger(k.ID)
	var requests int64
	eventually(t, "the daily rows", func() (bool, string) {
		err := s.db.QueryRowx(`SELECT COALESCE(sum(requests), 0) FROM api_gateway.api_usage_daily WHERE key_id = $1`, k.ID).Scan(&requests)
		return err == nil && requests == 5, fmt.Sprintf("%d requests (%v)", requests, err)
	})
	var newsRows int64
	if err := s.db.QueryRowx(`SELECT (SELECT count(*) FROM api_gateway.api_usage WHERE key_id = $1 AND endpoint = $2)
		+ (SELECT count(*) FROM api_gateway.api_usage_daily WHERE key_id = $1 AND endpoint = $2)`, k.ID, usagev1.ExhaustedEndpoint).Scan(&newsRows); err != nil {
		t.Fatal(err)
	}
	if rows != 5 || credits != 5 || newsRows != 0 {
		t.Fatalf("ledger %d rows Σ %d, %d usage rows of the news; want 5, 5, 0", rows, credits, newsRows)
	}
	if pg, rd := s.balances(k.ID, 5); pg != 0 || rd != 0 {
		t.Fatalf("balance postgres %d redis %d, want 0", pg, rd)
	}
	cmd := exec.Command(bin(t, "./aggregator/cmd/aggregator"), "replay", "--from-start")
	cmd.Env = append([]string{"DATABASE_URL=" + s.dsn, "LOG_LEVEL=warn", "METRICS_PORT=" + strconv.Itoa(testenv.FreePort(t))}, s.serverEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	t.Logf("replay: %s", strings.TrimSpace(string(out)))
}

// TestCreditsExhaustedBeforeTheGrantIsUsed: a call whose hold is more than
// the key has left is refused 402 while the ledger is far from the grant
// (1 of 10 credits used); the owner hears credits.exhausted, with the
// ledger's 1 used of 10, though no threshold of the ledger was crossed.
func TestCreditsExhaustedBeforeTheGrantIsUsed(t *testing.T) {
	s, hooks, owner := exhaustedStack(t, 1)
	k := s.createKey(s.gwURLs[0], owner, map[string]any{"name": "big hold", "tier": "small"})
	if st := s.search(k.Key); st != 200 {
		t.Fatalf("the first call: %d", st)
	}
	s.drained(k.ID, 1)
	// 10,000 characters (the most a synthesis takes) hold 10 credits; 9 are left.
	body := fmt.Sprintf(`{"text":%q,"voice":"en-US-1"}`, strings.Repeat("a", 10000))
	resp, b := s.do("POST", s.gwURLs[0]+"/v1/tts/synthesize", body, map[string]string{"X-API-Key": k.Key})
	if resp.StatusCode != 402 || resp.Header.Get("X-Credits-Remaining") != "9" {
		t.Fatalf("a synthesis holding 10 credits of 9: %d (credits remaining %q) %s", resp.StatusCode, resp.Header.Get("X-Credits-Remaining"), b)
	}
	eventually(t, "the credits.exhausted delivery", func() (bool, string) {
		got, _ := exhaustedDeliveries(hooks)
		return len(got) == 1, fmt.Sprintf("%d deliveries", len(got))
	})
	got, _ := exhaustedDeliveries(hooks)
	d := got[0].Body.Data
	if d.KeyID != k.ID || d.Period != time.Now().UTC().Format("2006-01") || d.CreditsUsed != 1 || d.CreditsGranted != 10 {
		t.Fatalf("credits.exhausted %+v, want 1 used of 10", got[0].Body)
	}
	// The key still serves what its 9 credits cover; a second refusal of
	// the period tells nobody again.
	if st := s.search(k.Key); st != 200 {
		t.Fatalf("a call of 1 credit after the refusal: %d", st)
	}
	if resp, _ := s.do("POST", s.gwURLs[0]+"/v1/tts/synthesize", body, map[string]string{"X-API-Key": k.Key}); resp.StatusCode != 402 {
		t.Fatalf("the synthesis again: %d, want 402", resp.StatusCode)
	}
	s.drained(k.ID, 2)
	s.billingDrained()
	if got, seen := exhaustedDeliveries(hooks); len(got) != 1 || len(seen) != 1 {
		t.Fatalf("credits.exhausted delivered %d times, want once", len(got))
	}
	if n := s.exhaustedNews(k.ID); n != 1 {
		t.Fatalf("%d credits.exhausted events on the stream, want 1", n)
	}
}
