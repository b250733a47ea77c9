package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// TestQuickstart is the seed's quickstart, verbatim, across every part of
// the system: login → create key → search → event on the stream → ledger →
// daily aggregate → usage summary.
func TestQuickstart(t *testing.T) {
	s := newStack(t, stackOpts{})
	gw := s.gwURLs[0]
	token := s.login("user@example.com")
	k := s.createKey(gw, token, map[string]any{"name": "My API Key", "tier": "free"})
	if len(k.Key) < len("sk_live_")+32 || k.Key[:8] != "sk_live_" || k.Tier != "free" || !k.Active ||
		k.RateLimitPerMinute != 10 || k.MonthlyCredits != 100 || k.CreditsRemaining != 100 || k.KeyPrefix == "" {
		t.Fatalf("created key %+v", k)
	}

	resp, b := s.do("POST", gw+"/v1/search", `{"query": "quantum computing"}`, map[string]string{"X-API-Key": k.Key})
	if resp.StatusCode != 200 {
		t.Fatalf("search: %d %s", resp.StatusCode, b)
	}
	var res struct {
		Results []struct {
			Title string `json:"title"`
			URL   string `json:"url"`
		} `json:"results"`
	}
	if err := json.Unmarshal(b, &res); err != nil || len(res.Results) == 0 {
		t.Fatalf("search body: %s", b)
	}
	for h, want := range map[string]string{"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9", "X-Credits-Remaining": "99"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	reset, err := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64)
	if err != nil || reset < time.Now().Unix() || reset > time.Now().Add(61*time.Second).Unix() {
		t.Errorf("X-RateLimit-Reset %q", resp.Header.Get("X-RateLimit-Reset"))
	}
	reqID := resp.Header.Get("X-Request-Id")
	if reqID == "" {
		t.Fatal("no X-Request-Id")
	}

	// The event is on the USAGE stream, in a batch published under the
	// batch's ID by this gateway.
	ctx := context.Background()
	stream, err := s.js.Stream(ctx, usagev1.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, usagev1.BatchSubjectPrefix+".>")
	if err != nil {
		t.Fatalf("no batch on the stream: %v", err)
	}
	dm, err := usagev1.DecodeMessage(msg.Subject, msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if len(dm.Events) != 1 || msg.Header.Get(jetstream.MsgIDHeader) != dm.BatchID {
		t.Fatalf("batch %s of %d events, msg id %q", dm.BatchID, len(dm.Events), msg.Header.Get(jetstream.MsgIDHeader))
	}
	ev := dm.Events[0]
	if ev.KeyId != k.ID || ev.Credits != 1 || ev.RequestId != reqID || ev.Endpoint != "/v1/search" {
		t.Fatalf("event %+v", ev)
	}

	// The billing worker wrote the ledger and the balance.
	eventually(t, "ledger row", func() (bool, string) {
		var n, credits int64
		err := s.db.QueryRowx(`SELECT count(*), COALESCE(sum(credits),0) FROM api_gateway.credit_ledger WHERE event_id = $1 AND key_id = $2`, ev.EventId, k.ID).Scan(&n, &credits)
		return err == nil && n == 1 && credits == 1, fmt.Sprint(n, credits, err)
	})
	eventually(t, "balance row", func() (bool, string) {
		var used int64
		err := s.db.QueryRowx(`SELECT used FROM api_gateway.credit_balances WHERE key_id = $1`, k.ID).Scan(&used)
		return err == nil && used == 1, fmt.Sprint(used, err)
	})
	// The aggregator wrote api_usage and api_usage_daily.
	eventually(t, "daily row", func() (bool, string) {
		var reqs, credits int64
		err := s.db.QueryRowx(`SELECT requests, credits FROM api_gateway.api_usage_daily WHERE key_id = $1 AND endpoint = '/v1/search' AND day = $2`,
			k.ID, time.Now().UTC().Format("2006-01-02")).Scan(&reqs, &credits)
		return err == nil && reqs == 1 && credits == 1, fmt.Sprint(reqs, credits, err)
	})
	var usageRows int
	if err := s.db.Get(&usageRows, `SELECT count(*) FROM api_gateway.api_usage WHERE event_id = $1`, ev.EventId); err != nil || usageRows != 1 {
		t.Fatalf("api_usage rows %d (%v)", usageRows, err)
	}

	// The summary shows it.
	resp, b = s.do("GET", gw+"/api-keys/"+k.ID+"/usage/summary", nil, map[string]string{"Authorization": "Bearer " + token})
	if resp.StatusCode != 200 {
		t.Fatalf("summary: %d %s", resp.StatusCode, b)
	}
	var sum struct {
		MonthlyCredits   int64 `json:"monthlyCredits"`
		CreditsUsed      int64 `json:"creditsUsed"`
		CreditsRemaining int64 `json:"creditsRemaining"`
		Requests         int64 `json:"requests"`
	}
	if err := json.Unmarshal(b, &sum); err != nil || sum.CreditsUsed != 1 || sum.CreditsRemaining != 99 || sum.MonthlyCredits != 100 || sum.Requests != 1 {
		t.Fatalf("summary %s", b)
	}
	// And the daily usage rows.
	resp, b = s.do("GET", gw+"/api-keys/"+k.ID+"/usage", nil, map[string]string{"Authorization": "Bearer " + token})
	if resp.StatusCode != 200 {
		t.Fatalf("usage: %d %s", resp.StatusCode, b)
	}
	var usage struct {
		Data []struct {
			Date     string `json:"date"`
			Endpoint string `json:"endpoint"`
			Requests int64  `json:"requests"`
			Credits  int64  `json:"credits"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &usage); err != nil || len(usage.Data) != 1 || usage.Data[0].Credits != 1 || usage.Data[0].Requests != 1 {
		t.Fatalf("usage %s", b)
	}
}
