package proxy_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

// TestGrantComesFromTheKey: the grant in the event and in /v1/key is the
// key's own (what Redis enforces), not the pricing file's for its tier — a
// key created before PRICING_FILE changed keeps the grant it was given.
func TestGrantComesFromTheKey(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("pro")
	if _, err := ev.db.ExecContext(context.Background(),
		`UPDATE api_gateway.api_keys SET monthly_credits = 777, rate_limit_per_minute = 42 WHERE id = $1`, k.ID); err != nil {
		t.Fatal(err)
	}
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-Credits-Remaining") != "776" || resp.Header.Get("X-RateLimit-Limit") != "42" {
		t.Fatalf("status %d, credits %q, limit %q: %s", resp.StatusCode, resp.Header.Get("X-Credits-Remaining"), resp.Header.Get("X-RateLimit-Limit"), b)
	}
	evs := ev.events()
	if len(evs) != 1 || evs[0].MonthlyCredits != 777 {
		t.Fatalf("events %+v, want one with monthly_credits 777", evs)
	}
	resp, b = ev.do("GET", "/v1/key", secret, "", "")
	var got struct {
		MonthlyCredits   int64 `json:"monthlyCredits"`
		RateLimit        int   `json:"rateLimitPerMinute"`
		CreditsRemaining int64 `json:"creditsRemaining"`
	}
	if err := json.Unmarshal(b, &got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s (%v)", resp.StatusCode, b, err)
	}
	t.Logf("/v1/key: %s", b)
	if got.MonthlyCredits != 777 || got.RateLimit != 42 || got.CreditsRemaining != 776 {
		t.Fatalf("/v1/key reports %+v, want the key's 777 credits and 42/min", got)
	}
}

// TestPeriodIsTheHolds: a gateway whose clock is a month behind Redis's
// publishes the event in the month its hold was taken in (Redis TIME), with
// a time inside that month.
func TestPeriodIsTheHolds(t *testing.T) {
	behind := func() time.Time { return time.Now().AddDate(0, -1, -3) }
	ev := newEnv(t, "capture", "capture", "capture", withClock(behind))
	secret, _ := ev.key("pro")
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	evs := ev.events()
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	want := time.Now().UTC().Format("2006-01")
	at := evs[0].OccurredAt.AsTime()
	t.Logf("gateway clock %s, event period %s, occurred_at %s", behind().UTC().Format("2006-01"), evs[0].Period, at)
	if evs[0].Period != want || at.Format("2006-01") != want {
		t.Fatalf("event period %s at %s, want the hold's period %s", evs[0].Period, at, want)
	}
}
