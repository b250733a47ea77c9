package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/services/testenv"
)

// grantPricing has a tier of 5 credits and no practical rate limit, so a
// test runs a key dry in a few calls.
var grantPricing = string(pricing.WithTiers(`tiny: {rateLimitPerMinute: 1000000, monthlyCredits: 5, endpoints: ["*"]}`))

// hookRecorder is a webhook receiver that keeps what it was sent.
type hookRecorder struct {
	mu   sync.Mutex
	got  []hookDelivery
	srv  *httptest.Server
	seen map[string]int // webhook-id → deliveries
}

type hookDelivery struct {
	ID   string
	Body struct {
		Type string `json:"type"`
		Data struct {
			KeyID          string `json:"keyId"`
			Period         string `json:"period"`
			Credits        int64  `json:"credits"`
			Reason         string `json:"reason"`
			Actor          string `json:"actor"`
			GrantID        string `json:"grantId"`
			CreditsAllowed int64  `json:"creditsAllowed"`
			CreditsUsed    int64  `json:"creditsUsed"`
			CreditsLeft    int64  `json:"creditsLeft"`
			CreditsGranted int64  `json:"creditsGranted"`
		} `json:"data"`
	}
}

func newHookRecorder(t *testing.T) *hookRecorder {
	h := &hookRecorder{seen: map[string]int{}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var d hookDelivery
		d.ID = r.Header.Get("webhook-id")
		if err := json.Unmarshal(b, &d.Body); err != nil {
			t.Errorf("webhook body %s: %v", b, err)
		}
		h.mu.Lock()
		h.got = append(h.got, d)
		h.seen[d.ID]++
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookRecorder) deliveries() ([]hookDelivery, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := make(map[string]int, len(h.seen))
	for k, v := range h.seen {
		seen[k] = v
	}
	return append([]hookDelivery(nil), h.got...), seen
}

type grantAnswer struct {
	ID        string    `json:"id"`
	KeyID     string    `json:"keyId"`
	Credits   int64     `json:"credits"`
	Reason    string    `json:"reason"`
	Period    string    `json:"period"`
	Actor     string    `json:"actor"`
	CreatedAt time.Time `json:"createdAt"`
}

// search makes one paid call and returns its status.
func (s *stack) search(secret string) int {
	s.t.Helper()
	resp, _ := s.do("POST", s.gwURLs[0]+"/v1/search", `{"query":"quantum computing"}`, map[string]string{"X-API-Key": secret})
	return resp.StatusCode
}

// grantCredits posts a grant as token with the Idempotency-Key idem (none
// when empty).
func (s *stack) grantCredits(token, keyID, idem string, body any) (*http.Response, []byte) {
	s.t.Helper()
	hdr := bearer(token)
	if idem != "" {
		hdr["Idempotency-Key"] = idem
	}
	return s.do("POST", s.gwURLs[0]+"/api-keys/"+keyID+"/credits", body, hdr)
}

// TestCreditGrants: finance grants credits to a key that was refused 402;
// the very next call is served. Only finance and admin may grant; an
// Idempotency-Key makes a retried request grant once; the grant reaches the
// ledger, the summary, the daily table, the finance CSV, the audit trail and
// the owner's webhook (once, also after the billing worker read the whole
// stream again), survives a Redis flush, and a replay of the stream agrees.
func TestCreditGrants(t *testing.T) {
	s := newStack(t, stackOpts{pricing: grantPricing, noWorkers: true})
	s.serverEnv = append(s.serverEnv, "WEBHOOK_ALLOW_HOSTS=127.0.0.1")
	s.startWorkers()
	gw := s.gwURLs[0]
	owner, other := s.login("user@example.com"), s.login("other@example.com")
	finance, admin := s.login("finance@example.com"), s.login("admin@example.com")
	hooks := newHookRecorder(t)
	if resp, b := s.do("POST", gw+"/webhooks", map[string]any{"url": hooks.srv.URL + "/hook", "events": []string{"credits.granted"}},
		bearer(owner)); resp.StatusCode != 201 {
		t.Fatalf("register webhook: %d %s", resp.StatusCode, b)
	}
	k := s.createKey(gw, owner, map[string]any{"name": "granted", "tier": "tiny"})

	for i := 1; i <= 5; i++ {
		if st := s.search(k.Key); st != 200 {
			t.Fatalf("call %d of the monthly 5: %d", i, st)
		}
	}
	if st := s.search(k.Key); st != 402 {
		t.Fatalf("call 6 with no credits left: %d, want 402", st)
	}

	good := map[string]any{"credits": 3, "reason": "goodwill after the outage"}
	refusals := []struct {
		name   string
		token  string
		keyID  string
		body   any
		status int
	}{
		{"the owner", owner, k.ID, good, 403},
		{"another owner", other, k.ID, good, 404},
		{"finance, unknown key", finance, "00000000-0000-0000-0000-000000000000", good, 404},
		{"malformed JSON", finance, k.ID, `{"credits": 3,`, 400},
		{"unknown field", finance, k.ID, `{"credits": 3, "reason": "x", "bonus": 1}`, 400},
		{"credits a string", finance, k.ID, `{"credits": "3", "reason": "x"}`, 400},
		{"credits a fraction", finance, k.ID, `{"credits": 1.5, "reason": "x"}`, 400},
		{"credits zero", finance, k.ID, map[string]any{"credits": 0, "reason": "x"}, 422},
		{"credits negative", finance, k.ID, map[string]any{"credits": -4, "reason": "x"}, 422},
		{"credits too many", finance, k.ID, map[string]any{"credits": 1_000_001, "reason": "x"}, 422},
		{"no credits", finance, k.ID, map[string]any{"reason": "x"}, 422},
		{"no reason", finance, k.ID, map[string]any{"credits": 3}, 422},
		{"blank reason", finance, k.ID, map[string]any{"credits": 3, "reason": "  "}, 422},
		{"reason too long", finance, k.ID, map[string]any{"credits": 3, "reason": strings.Repeat("r", 501)}, 422},
	}
	for _, r := range refusals {
		resp, b := s.grantCredits(r.token, r.keyID, "", r.body)
		if resp.StatusCode != r.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
			t.Errorf("%s: %d %s %s, want %d problem+json", r.name, resp.StatusCode, resp.Header.Get("Content-Type"), b, r.status)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if st := s.search(k.Key); st != 402 {
		t.Fatalf("after refused grants a call got %d, want 402", st)
	}

	// The grant, and at once the key may call again.
	resp, b := s.grantCredits(finance, k.ID, "grant-1", good)
	if resp.StatusCode != 201 {
		t.Fatalf("grant: %d %s", resp.StatusCode, b)
	}
	var g1 grantAnswer
	if err := json.Unmarshal(b, &g1); err != nil {
		t.Fatal(err)
	}
	period := time.Now().UTC().Format("2006-01")
	if g1.ID == "" || g1.KeyID != k.ID || g1.Credits != 3 || g1.Reason != good["reason"] || g1.Period != period || g1.Actor != "user-3" {
		t.Fatalf("grant answer %s", b)
	}
	if st := s.search(k.Key); st != 200 {
		t.Fatalf("the call right after the grant: %d, want 200", st)
	}
	// The same request again: the same answer, nothing more granted.
	resp, again := s.grantCredits(finance, k.ID, "grant-1", good)
	if resp.StatusCode != 201 || string(again) != string(b) || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("repeated grant: %d %q %s, want 201 and the first answer %s", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), again, b)
	}
	resp, b = s.grantCredits(finance, k.ID, "grant-1", map[string]any{"credits": 30, "reason": "goodwill after the outage"})
	if resp.StatusCode != 422 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("the key with another body: %d %s, want 422", resp.StatusCode, b)
	}
	for i := 2; i <= 3; i++ {
		if st := s.search(k.Key); st != 200 {
			t.Fatalf("granted call %d of 3: %d", i, st)
		}
	}
	if st := s.search(k.Key); st != 402 {
		t.Fatalf("a call past the 3 granted: %d, want 402 (granted twice?)", st)
	}

	// An admin grants too.
	resp, b = s.grantCredits(admin, k.ID, "", map[string]any{"credits": 2, "reason": "admin top-up"})
	if resp.StatusCode != 201 {
		t.Fatalf("admin grant: %d %s", resp.StatusCode, b)
	}
	var g2 grantAnswer
	if err := json.Unmarshal(b, &g2); err != nil {
		t.Fatal(err)
	}

	// The ledger: 8 charged, 5 granted; Postgres and Redis agree on 2 left.
	eventually(t, "the ledger has both grants and 8 calls", func() (bool, string) {
		var used, grants, requests int64
		err := s.db.QueryRowx(`SELECT used, grants, requests FROM api_gateway.credit_balances WHERE key_id = $1`, k.ID).Scan(&used, &grants, &requests)
		return err == nil && used == 8 && grants == 5 && requests == 8, fmt.Sprintf("used %d grants %d requests %d (%v)", used, grants, requests, err)
	})
	if _, rd := s.balances(k.ID, 0); rd != 2 {
		t.Fatalf("redis balance %d, want 5 + 5 - 8 = 2", rd)
	}

	// The summary shows the grants beside the monthly grant.
	var sum struct {
		MonthlyCredits   int64 `json:"monthlyCredits"`
		GrantedCredits   int64 `json:"grantedCredits"`
		CreditsUsed      int64 `json:"creditsUsed"`
		CreditsRemaining int64 `json:"creditsRemaining"`
		Requests         int64 `json:"requests"`
		ByEndpoint       []struct {
			Endpoint string `json:"endpoint"`
		} `json:"byEndpoint"`
	}
	eventually(t, "the summary", func() (bool, string) {
		resp, b := s.do("GET", gw+"/api-keys/"+k.ID+"/usage/summary", nil, bearer(owner))
		if resp.StatusCode != 200 || json.Unmarshal(b, &sum) != nil {
			return false, string(b)
		}
		return sum.MonthlyCredits == 5 && sum.GrantedCredits == 5 && sum.CreditsUsed == 8 && sum.CreditsRemaining == 2 &&
			sum.Requests == 8 && len(sum.ByEndpoint) == 1, string(b)
	})

	// A Redis flush: the rebuilt balance still counts the grants.
	if err := s.rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if st := s.search(k.Key); st != 200 {
			t.Fatalf("call %d of the 2 left after the flush: %d", i, st)
		}
	}
	if st := s.search(k.Key); st != 402 {
		t.Fatalf("a call past the balance after the flush: %d, want 402", st)
	}

	// The daily table and the finance CSV: a credits.grant row.
	eventually(t, "the daily grant row", func() (bool, string) {
		var requests, credits, granted int64
		err := s.db.QueryRowx(`SELECT requests, credits, granted FROM api_gateway.api_usage_daily
			WHERE key_id = $1 AND endpoint = 'credits.grant'`, k.ID).Scan(&requests, &credits, &granted)
		return err == nil && requests == 0 && credits == 0 && granted == 5, fmt.Sprintf("%d %d %d %v", requests, credits, granted, err)
	})
	eventually(t, "the daily call rows", func() (bool, string) {
		var requests int64
		err := s.db.QueryRowx(`SELECT COALESCE(sum(requests), 0) FROM api_gateway.api_usage_daily WHERE key_id = $1`, k.ID).Scan(&requests)
		return err == nil && requests == 10, fmt.Sprintf("%d %v", requests, err)
	})
	day := time.Now().UTC().Format(time.DateOnly)
	resp, b = s.do("GET", gw+"/billing/daily?format=csv&from="+day+"&to="+day, nil, bearer(finance))
	csv := string(b)
	if resp.StatusCode != 200 || !strings.HasPrefix(csv, "date,key_id,owner_id,endpoint,requests,credits,units,errors,granted\n") ||
		!strings.Contains(csv, day+","+k.ID+",user-1,credits.grant,0,0,0,0,5\n") {
		t.Fatalf("finance CSV: %d\n%s", resp.StatusCode, csv)
	}

	// The audit trail: one row per grant (none for the repeated request).
	var trail struct {
		Data []struct {
			Actor      string          `json:"actor"`
			OwnerID    string          `json:"ownerId"`
			RequestID  string          `json:"requestId"`
			Action     string          `json:"action"`
			TargetType string          `json:"targetType"`
			TargetID   string          `json:"targetId"`
			Before     json.RawMessage `json:"before"`
			After      json.RawMessage `json:"after"`
		} `json:"data"`
	}
	resp, b = s.do("GET", gw+"/audit?from="+day+"&to="+day, nil, bearer(owner))
	if resp.StatusCode != 200 || json.Unmarshal(b, &trail) != nil {
		t.Fatalf("audit: %d %s", resp.StatusCode, b)
	}
	var grants []string
	for _, r := range trail.Data {
		if r.Action != "credits.granted" {
			continue
		}
		if r.TargetType != "api_key" || r.TargetID != k.ID || r.OwnerID != "user-1" || r.RequestID == "" {
			t.Errorf("audit row %+v", r)
		}
		grants = append(grants, r.Actor+" "+compactJSON(t, r.Before)+" -> "+compactJSON(t, r.After))
	}
	want := []string{
		`user-3 {"grantedCredits":0,"monthlyCredits":5,"period":"` + period + `"} -> {"credits":3,"grantId":"` + g1.ID + `","grantedCredits":3,"monthlyCredits":5,"period":"` + period + `","reason":"goodwill after the outage"}`,
		`user-4 {"grantedCredits":3,"monthlyCredits":5,"period":"` + period + `"} -> {"credits":2,"grantId":"` + g2.ID + `","grantedCredits":5,"monthlyCredits":5,"period":"` + period + `","reason":"admin top-up"}`,
	}
	if strings.Join(grants, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit rows of the grants:\n%s\nwant\n%s", strings.Join(grants, "\n"), strings.Join(want, "\n"))
	}

	// The owner's endpoint hears of each grant once.
	eventually(t, "two credits.granted deliveries", func() (bool, string) {
		got, _ := hooks.deliveries()
		return len(got) >= 2, fmt.Sprintf("%d deliveries", len(got))
	})
	got, _ := hooks.deliveries()
	byGrant := map[string]hookDelivery{}
	for _, d := range got {
		byGrant[d.Body.Data.GrantID] = d
	}
	first, second := byGrant[g1.ID], byGrant[g2.ID]
	if first.Body.Type != "credits.granted" || first.Body.Data.KeyID != k.ID || first.Body.Data.Credits != 3 ||
		first.Body.Data.Reason != "goodwill after the outage" || first.Body.Data.Actor != "user-3" || first.Body.Data.Period != period ||
		(first.Body.Data.CreditsAllowed != 8 && first.Body.Data.CreditsAllowed != 10) || first.Body.Data.CreditsLeft != first.Body.Data.CreditsAllowed-first.Body.Data.CreditsUsed {
		t.Fatalf("first grant's webhook %+v", first)
	}
	if second.Body.Data.Credits != 2 || second.Body.Data.Actor != "user-4" || second.Body.Data.CreditsAllowed != 10 {
		t.Fatalf("second grant's webhook %+v", second)
	}

	// The billing worker reads the whole stream again: nothing is charged,
	// granted or told twice.
	s.billing.Stop()
	if err := s.js.DeleteConsumer(context.Background(), "USAGE", "billing"); err != nil {
		t.Fatal(err)
	}
	s.billing.Start()
	eventually(t, "the billing worker through the stream again", func() (bool, string) {
		c, err := s.js.Consumer(context.Background(), "USAGE", "billing")
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream > 0,
			fmt.Sprintf("pending %d, unacked %d", info.NumPending, info.NumAckPending)
	})
	var used, granted, events int64
	if err := s.db.QueryRowx(`SELECT used, grants FROM api_gateway.credit_balances WHERE key_id = $1`, k.ID).Scan(&used, &granted); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRowx(`SELECT count(*) FROM api_gateway.webhook_events WHERE type = 'credits.granted'`).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if used != 10 || granted != 5 || events != 2 {
		t.Fatalf("after the billing worker read the stream again: used %d, grants %d, credits.granted events %d; want 10, 5, 2", used, granted, events)
	}
	// A delivery worker that restarted must not send them again either.
	var pending int64
	if err := s.db.QueryRowx(`SELECT count(*) FROM api_gateway.webhook_deliveries WHERE status <> 'succeeded'`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if _, seen := hooks.deliveries(); len(seen) != 2 || pending != 0 {
		t.Fatalf("webhook deliveries by id %v, %d not succeeded; want two ids, once each", seen, pending)
	}
	for id, n := range func() map[string]int { _, seen := hooks.deliveries(); return seen }() {
		if n != 1 {
			t.Fatalf("webhook %s delivered %d times", id, n)
		}
	}

	// A replay of the stream gives the live aggregates, grant row included.
	cmd := exec.Command(bin(t, "./aggregator/cmd/aggregator"), "replay", "--from-start")
	cmd.Env = append([]string{"DATABASE_URL=" + s.dsn, "LOG_LEVEL=warn", "METRICS_PORT=" + strconv.Itoa(testenv.FreePort(t))}, s.serverEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	t.Logf("replay: %s", strings.TrimSpace(string(out)))
}

func compactJSON(t *testing.T, b json.RawMessage) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("audit JSON %s: %v", b, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestUnpublishedGrantTakesEffect: a grant committed by a gateway that
// stopped before publishing it is published by a gateway within the
// reconcile interval: the key refused with 402 calls again and the ledger
// has the grant.
func TestUnpublishedGrantTakesEffect(t *testing.T) {
	s := newStack(t, stackOpts{pricing: grantPricing, extraEnv: []string{"RECONCILE_INTERVAL=1s"}})
	owner := s.login("user@example.com")
	k := s.createKey(s.gwURLs[0], owner, map[string]any{"name": "late grant", "tier": "tiny"})
	for i := 1; i <= 5; i++ {
		if st := s.search(k.Key); st != 200 {
			t.Fatalf("call %d: %d", i, st)
		}
	}
	if st := s.search(k.Key); st != 402 {
		t.Fatalf("call 6: %d, want 402", st)
	}
	id := ulid.Make().String()
	if _, err := s.db.Exec(`INSERT INTO api_gateway.credit_grants (event_id, key_id, owner_id, actor, request_hash, request_id,
		credits, reason, period, tier, monthly_credits, created_at)
		VALUES ($1, $2, 'user-1', 'user-3', '\x00', 'req-late', 4, 'late', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 'tiny', 5, now())`,
		id, k.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the late grant in effect", func() (bool, string) {
		st := s.search(k.Key)
		return st == 200, strconv.Itoa(st)
	})
	eventually(t, "the late grant in the ledger and marked published", func() (bool, string) {
		var granted int64
		var published bool
		err := s.db.QueryRowx(`SELECT (SELECT granted FROM api_gateway.credit_ledger WHERE event_id = $1),
			(SELECT published_at IS NOT NULL FROM api_gateway.credit_grants WHERE event_id = $1)`, id).Scan(&granted, &published)
		return err == nil && granted == 4 && published, fmt.Sprintf("granted %d published %v (%v)", granted, published, err)
	})
	for i := 2; i <= 4; i++ {
		if st := s.search(k.Key); st != 200 {
			t.Fatalf("granted call %d of 4: %d", i, st)
		}
	}
	if st := s.search(k.Key); st != 402 {
		t.Fatalf("a call past the late grant: %d, want 402", st)
	}
}
