package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/mana/apigw/gateway/internal/pricing"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// TestAChangedPricingFileKeepsTheStoresAgreed: a key keeps the grant it was
// created with when PRICING_FILE changes under it and the gateway restarts.
// Every event carries the key's own grant, /v1/key reports it, and once the
// billing worker has applied the events, Postgres (granted − used) and Redis
// hold the same balance, for the key made before the change and for the one
// made after it.
func TestAChangedPricingFileKeepsTheStoresAgreed(t *testing.T) {
	tier := func(credits int64) string {
		return string(pricing.WithTiers(fmt.Sprintf(`metered: {rateLimitPerMinute: 1000000, monthlyCredits: %d, endpoints: ["*"]}`, credits)))
	}
	const before, after = 1000, 9000
	s := newStack(t, stackOpts{pricing: tier(before)})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	old := s.createKey(gw, tok, map[string]any{"name": "before the change", "tier": "metered"})
	if old.MonthlyCredits != before {
		t.Fatalf("key made under the first file has %d credits, want %d", old.MonthlyCredits, before)
	}
	calls := func(secret string, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if st := s.search(secret); st != 200 {
				t.Fatalf("search answered %d", st)
			}
		}
	}
	calls(old.Key, 5)

	if err := os.WriteFile(s.pricingFile, []byte(tier(after)), 0o600); err != nil {
		t.Fatal(err)
	}
	s.gateways[0].Stop()
	s.gateways[0].StartWaitingFor(gw + "/ready")

	newer := s.createKey(gw, tok, map[string]any{"name": "after the change", "tier": "metered"})
	if newer.MonthlyCredits != after {
		t.Fatalf("key made under the second file has %d credits, want %d", newer.MonthlyCredits, after)
	}
	calls(old.Key, 5)
	calls(newer.Key, 5)
	s.drained(old.ID, 10)
	s.drained(newer.ID, 5)

	for _, tc := range []struct {
		k     keyObject
		grant int64
		used  int64
	}{{old, before, 10}, {newer, after, 5}} {
		var granted, used int64
		if err := s.db.QueryRowx(`SELECT granted, used FROM api_gateway.credit_balances
			WHERE key_id = $1 AND period = date_trunc('month', now() AT TIME ZONE 'UTC')::date`, tc.k.ID).Scan(&granted, &used); err != nil {
			t.Fatalf("%s: postgres balance: %v", tc.k.Name, err)
		}
		_, rd := s.balances(tc.k.ID, granted)
		wrong := s.countEvents(func(e *usagev1.UsageEvent) bool {
			return e.GetKeyId() == tc.k.ID && e.GetMonthlyCredits() != tc.grant
		})
		resp, b := s.do("GET", gw+"/v1/key", nil, map[string]string{"X-API-Key": tc.k.Key})
		var reported keyObject
		if err := json.Unmarshal(b, &reported); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: /v1/key %d %s (%v)", tc.k.Name, resp.StatusCode, b, err)
		}
		t.Logf("PRICING CHANGE %s: postgres granted %d used %d (balance %d), redis %d, /v1/key %d/%d, %d events with another grant",
			tc.k.Name, granted, used, granted-used, rd, reported.MonthlyCredits, reported.CreditsRemaining, wrong)
		if granted != tc.grant || used != tc.used || rd != granted-used || wrong != 0 ||
			reported.MonthlyCredits != tc.grant || reported.CreditsRemaining != granted-used {
			t.Fatalf("%s: want granted %d, used %d, Redis and /v1/key at %d, every event with grant %d",
				tc.k.Name, tc.grant, tc.used, tc.grant-tc.used, tc.grant)
		}
	}
}
