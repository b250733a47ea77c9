package mgmt

import (
	"net/http"
	"reflect"
	"testing"
)

func TestMeAndTiers(t *testing.T) {
	en := newEnv(t)
	tests := []struct {
		sub, role string
		want      meResponse
	}{
		{"user-a", "", meResponse{Subject: "user-a"}},
		{"fin", "finance", meResponse{Subject: "fin", Role: "finance", Finance: true}},
		{"root", "admin", meResponse{Subject: "root", Role: "admin", Finance: true}},
		{"odd", "auditor", meResponse{Subject: "odd", Role: "auditor"}},
	}
	for _, tt := range tests {
		t.Run(tt.sub, func(t *testing.T) {
			r := en.do(tt.sub, tt.role, http.MethodGet, "/me", nil)
			if r.code != http.StatusOK {
				t.Fatalf("%d %s", r.code, r.body)
			}
			var got meResponse
			r.json(t, &got)
			if got != tt.want {
				t.Fatalf("me %+v, want %+v", got, tt.want)
			}
		})
	}
	wantProblem(t, en.do("", "", http.MethodGet, "/me", nil), http.StatusUnauthorized)

	r := en.do("user-a", "", http.MethodGet, "/tiers", nil)
	var got struct{ Data []TierInfo }
	r.json(t, &got)
	if r.code != http.StatusOK || !reflect.DeepEqual(got.Data, testCatalog) {
		t.Fatalf("tiers %d %s", r.code, r.body)
	}
	wantProblem(t, en.do("", "", http.MethodGet, "/tiers", nil), http.StatusUnauthorized)
}

func TestBillingKeys(t *testing.T) {
	en := newEnv(t)
	a := en.create("user-a", map[string]any{"name": "alpha", "tier": "free"})
	b := en.create("user-b", map[string]any{"name": "beta", "tier": "pro"})
	c := en.create("user-b", map[string]any{"name": "gamma", "tier": "pro"})
	quiet := en.create("user-c", map[string]any{"name": "quiet", "tier": "pro"})
	insertUsage(en, "2026-03-01", a.ID, "user-a", "/v1/search", 5, 5, 5, 1)
	insertUsage(en, "2026-03-02", a.ID, "user-a", "/v1/search", 2, 2, 2, 0)
	insertUsage(en, "2026-03-01", b.ID, "user-b", "/v1/search", 1, 1, 1, 0)
	insertUsage(en, "2026-03-01", b.ID, "user-b", "/v1/tts/synthesize", 3, 30, 30000, 2)
	insertUsage(en, "2026-03-01", c.ID, "user-b", "/v1/search/engines", 40, 0, 40, 0)
	insertUsage(en, "2026-02-01", quiet.ID, "user-c", "/v1/search", 900, 900, 900, 0)
	if r := en.do("user-b", "", http.MethodDelete, "/api-keys/"+b.ID, nil); r.code != http.StatusNoContent {
		t.Fatalf("delete: %d", r.code)
	}

	type list struct{ Data []billingKey }
	var got list
	r := en.do("fin", "finance", http.MethodGet, "/billing/keys?from=2026-03-01&to=2026-03-31", nil)
	if r.code != http.StatusOK {
		t.Fatalf("%d %s", r.code, r.body)
	}
	r.json(t, &got)
	want := []billingKey{
		{KeyID: b.ID, OwnerID: "user-b", Name: "beta", KeyPrefix: b.KeyPrefix, Tier: "pro", Deleted: true, Requests: 4, Credits: 31, Errors: 2},
		{KeyID: a.ID, OwnerID: "user-a", Name: "alpha", KeyPrefix: a.KeyPrefix, Tier: "free", Requests: 7, Credits: 7, Errors: 1},
		{KeyID: c.ID, OwnerID: "user-b", Name: "gamma", KeyPrefix: c.KeyPrefix, Tier: "pro", Requests: 40},
	}
	if !reflect.DeepEqual(got.Data, want) {
		t.Fatalf("top keys\n%+v\nwant\n%+v", got.Data, want)
	}
	en.do("root", "admin", http.MethodGet, "/billing/keys?from=2026-03-01&to=2026-03-31&limit=1", nil).json(t, &got)
	if len(got.Data) != 1 || got.Data[0].KeyID != b.ID {
		t.Fatalf("limit 1: %+v", got.Data)
	}
	en.do("fin", "finance", http.MethodGet, "/billing/keys?from=2027-01-01&to=2027-01-31", nil).json(t, &got)
	if got.Data == nil || len(got.Data) != 0 {
		t.Fatalf("empty range: %+v", got.Data)
	}

	wantProblem(t, en.do("user-a", "", http.MethodGet, "/billing/keys", nil), http.StatusForbidden)
	wantProblem(t, en.do("", "", http.MethodGet, "/billing/keys", nil), http.StatusUnauthorized)
	for _, q := range []string{"?limit=0", "?limit=101", "?limit=x", "?from=03/01/2026"} {
		wantProblem(t, en.do("fin", "finance", http.MethodGet, "/billing/keys"+q, nil), http.StatusBadRequest)
	}
	wantProblem(t, en.do("fin", "finance", http.MethodGet, "/billing/keys?from=2026-03-02&to=2026-03-01", nil), http.StatusUnprocessableEntity)
}
