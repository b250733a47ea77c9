package mgmt

import (
	"bytes"
	"context"
	"encoding/csv"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestOwnerIsolation: user B, on every route, with A's key id, gets the
// same 404 as for an id that does not exist, and nothing changes.
func TestOwnerIsolation(t *testing.T) {
	en := newEnv(t)
	a := en.create("user-a", map[string]any{"name": "a", "tier": "pro"})
	en.create("user-b", map[string]any{"name": "b", "tier": "free"})
	before, err := en.store.ByID(context.Background(), a.ID)
	if err != nil {
		t.Fatal(err)
	}
	synced := len(en.state.snapshot())
	const unknown = "00000000-0000-7000-8000-000000000000"
	routes := []struct {
		method, suffix string
		body           any
	}{
		{http.MethodGet, "", nil},
		{http.MethodPatch, "", map[string]any{"name": "pwned", "active": false}},
		{http.MethodPatch, "", `{"name": 42}`},
		{http.MethodPatch, "", `{}`},
		{http.MethodDelete, "", nil},
		{http.MethodPost, "/regenerate", nil},
		{http.MethodPost, "/regenerate", map[string]any{"gracePeriodSeconds": 10}},
		{http.MethodPost, "/regenerate", `{"gracePeriodSeconds": -5}`},
		{http.MethodGet, "/usage", nil},
		{http.MethodGet, "/usage?from=2026-01-01&to=2026-03-01", nil},
		{http.MethodGet, "/usage?from=bogus", nil},
		{http.MethodGet, "/usage/summary", nil},
	}
	for _, rt := range routes {
		t.Run(rt.method+rt.suffix, func(t *testing.T) {
			foreign := en.do("user-b", "", rt.method, "/api-keys/"+a.ID+rt.suffix, rt.body)
			missing := en.do("user-b", "", rt.method, "/api-keys/"+unknown+rt.suffix, rt.body)
			wantProblem(t, foreign, http.StatusNotFound)
			if !bytes.Equal(foreign.body, missing.body) || foreign.code != missing.code {
				t.Fatalf("foreign %d %s differs from unknown %d %s", foreign.code, foreign.body, missing.code, missing.body)
			}
		})
	}
	after, err := en.store.ByID(context.Background(), a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("A's key changed:\n%+v\n%+v", before, after)
	}
	if n := len(en.state.snapshot()); n != synced {
		t.Fatalf("%d syncs caused by user B", n-synced)
	}
	var list listResponse
	en.do("user-b", "", http.MethodGet, "/api-keys", nil).json(t, &list)
	if len(list.Data) != 1 || list.Data[0].ID == a.ID {
		t.Fatalf("B's list %+v", list)
	}

	// Finance reads A's usage, but is not an owner of A's key.
	for _, role := range []string{"finance", "admin"} {
		for _, suffix := range []string{"/usage", "/usage/summary"} {
			if r := en.do("fin", role, http.MethodGet, "/api-keys/"+a.ID+suffix, nil); r.code != http.StatusOK {
				t.Fatalf("%s %s: %d %s", role, suffix, r.code, r.body)
			}
		}
		wantProblem(t, en.do("fin", role, http.MethodGet, "/api-keys/"+unknown+"/usage", nil), http.StatusNotFound)
		wantProblem(t, en.do("fin", role, http.MethodGet, "/api-keys/"+a.ID, nil), http.StatusNotFound)
		wantProblem(t, en.do("fin", role, http.MethodPatch, "/api-keys/"+a.ID, map[string]any{"active": false}), http.StatusNotFound)
		wantProblem(t, en.do("fin", role, http.MethodPost, "/api-keys/"+a.ID+"/regenerate", nil), http.StatusNotFound)
		wantProblem(t, en.do("fin", role, http.MethodDelete, "/api-keys/"+a.ID, nil), http.StatusNotFound)
	}
	if after2, _ := en.store.ByID(context.Background(), a.ID); !reflect.DeepEqual(before, after2) {
		t.Fatal("finance changed A's key")
	}
	// Roles are not owners of the billing export unless finance or admin.
	for _, role := range []string{"", "user", "Finance", "finance "} {
		wantProblem(t, en.do("user-a", role, http.MethodGet, "/billing/daily", nil), http.StatusForbidden)
	}
}

func insertUsage(en *env, day, keyID, owner, endpoint string, requests, credits, units, errs int64) {
	en.t.Helper()
	en.exec(`INSERT INTO api_gateway.api_usage_daily (day, key_id, owner_id, endpoint, requests, credits, units, errors)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, day, keyID, owner, endpoint, requests, credits, units, errs)
}

func TestUsageAndSummary(t *testing.T) {
	en := newEnv(t) // today is 2026-03-15
	a := en.create("user-a", map[string]any{"name": "a", "tier": "free"})
	other := en.create("user-b", map[string]any{"name": "b", "tier": "free"})
	insertUsage(en, "2025-12-01", a.ID, "user-a", "search", 1, 1, 1, 0)
	insertUsage(en, "2026-02-10", a.ID, "user-a", "search", 2, 2, 2, 0)
	insertUsage(en, "2026-03-01", a.ID, "user-a", "search", 5, 5, 5, 1)
	insertUsage(en, "2026-03-14", a.ID, "user-a", "tts.synthesize", 3, 7, 6500, 0)
	insertUsage(en, "2026-03-14", a.ID, "user-a", "search", 4, 4, 4, 0)
	insertUsage(en, "2026-03-14", other.ID, "user-b", "search", 50, 50, 50, 0)

	type rows struct {
		Data []usageRow `json:"data"`
	}
	tests := []struct {
		query string
		want  []string // date/endpoint
	}{
		{"", []string{"2026-03-01/search", "2026-03-14/search", "2026-03-14/tts.synthesize"}},
		{"?from=2026-02-01&to=2026-03-31", []string{"2026-02-10/search", "2026-03-01/search", "2026-03-14/search", "2026-03-14/tts.synthesize"}},
		{"?from=2026-03-14&to=2026-03-14", []string{"2026-03-14/search", "2026-03-14/tts.synthesize"}},
		{"?to=2026-02-28", []string{"2026-02-10/search"}},
		{"?from=2025-03-15&to=2026-03-15", []string{"2025-12-01/search", "2026-02-10/search", "2026-03-01/search", "2026-03-14/search", "2026-03-14/tts.synthesize"}},
		{"?from=2027-01-01", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := en.do("user-a", "", http.MethodGet, "/api-keys/"+a.ID+"/usage"+tt.query, nil)
			if r.code != http.StatusOK {
				t.Fatalf("%d %s", r.code, r.body)
			}
			var got rows
			r.json(t, &got)
			ids := []string{}
			for _, row := range got.Data {
				ids = append(ids, row.Date+"/"+row.Endpoint)
			}
			if strings.Join(ids, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("rows %v, want %v", ids, tt.want)
			}
		})
	}
	var got rows
	en.do("user-a", "", http.MethodGet, "/api-keys/"+a.ID+"/usage?from=2026-03-14&to=2026-03-14", nil).json(t, &got)
	if want := (usageRow{Date: "2026-03-14", Endpoint: "tts.synthesize", Requests: 3, Credits: 7, Units: 6500}); got.Data[1] != want {
		t.Fatalf("row %+v, want %+v", got.Data[1], want)
	}

	// Summary without a balance row: nothing used yet according to billing.
	var s summary
	en.do("user-a", "", http.MethodGet, "/api-keys/"+a.ID+"/usage/summary", nil).json(t, &s)
	if s.KeyID != a.ID || s.Period.Start.Format("2006-01-02T15:04:05Z07:00") != "2026-03-01T00:00:00Z" ||
		s.Period.End.Format("2006-01-02") != "2026-04-01" || s.MonthlyCredits != 100 || s.CreditsUsed != 0 ||
		s.CreditsRemaining != 100 || s.Requests != 12 || len(s.ByEndpoint) != 2 {
		t.Fatalf("summary %+v", s)
	}
	if s.ByEndpoint[0] != (endpointUsage{"search", 9, 9}) || s.ByEndpoint[1] != (endpointUsage{"tts.synthesize", 3, 7}) {
		t.Fatalf("by endpoint %+v", s.ByEndpoint)
	}
	en.exec(`INSERT INTO api_gateway.credit_balances (key_id, period, granted, used) VALUES ($1, '2026-03-01', 100, 16)`, a.ID)
	en.do("user-a", "", http.MethodGet, "/api-keys/"+a.ID+"/usage/summary", nil).json(t, &s)
	if s.CreditsUsed != 16 || s.CreditsRemaining != 84 {
		t.Fatalf("summary with balance %+v", s)
	}
	en.exec(`UPDATE api_gateway.credit_balances SET used = 250 WHERE key_id = $1`, a.ID)
	en.do("user-a", "", http.MethodGet, "/api-keys/"+a.ID+"/usage/summary", nil).json(t, &s)
	if s.CreditsUsed != 250 || s.CreditsRemaining != 0 {
		t.Fatalf("overused summary %+v", s)
	}
}

func TestBillingDaily(t *testing.T) {
	en := newEnv(t)
	a := en.create("user-a", map[string]any{"name": "a", "tier": "free"})
	b := en.create("=cmd|' /C calc'!A0", map[string]any{"name": "b", "tier": "pro"})
	insertUsage(en, "2026-03-01", a.ID, "user-a", "search", 5, 5, 5, 1)
	insertUsage(en, "2026-03-01", b.ID, "=cmd|' /C calc'!A0", "tts.synthesize", 2, 3, 2500, 0)
	insertUsage(en, "2026-03-02", a.ID, "user-a", "search", 1, 1, 1, 0)
	insertUsage(en, "2026-01-01", a.ID, "user-a", "search", 9, 9, 9, 0)

	var got struct {
		Data []billingRow `json:"data"`
	}
	r := en.do("fin", "finance", http.MethodGet, "/billing/daily?from=2026-03-01&to=2026-03-31", nil)
	if r.code != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("json: %d %v %s", r.code, r.header, r.body)
	}
	r.json(t, &got)
	if len(got.Data) != 3 || got.Data[0].Date != "2026-03-01" || got.Data[2].Date != "2026-03-02" {
		t.Fatalf("rows %+v", got.Data)
	}
	for _, row := range got.Data {
		if row.KeyID == b.ID && (row.OwnerID != "=cmd|' /C calc'!A0" || row.Credits != 3 || row.Units != 2500) {
			t.Fatalf("json row %+v", row)
		}
	}

	r = en.do("root", "admin", http.MethodGet, "/billing/daily?from=2026-03-01&to=2026-03-31&format=csv", nil)
	if r.code != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "text/csv") ||
		!strings.Contains(r.header.Get("Content-Disposition"), "billing-daily-2026-03-01-2026-03-31.csv") {
		t.Fatalf("csv: %d %v", r.code, r.header)
	}
	records, err := csv.NewReader(bytes.NewReader(r.body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 4 || strings.Join(records[0], ",") != "date,key_id,owner_id,endpoint,requests,credits,units,errors,granted" {
		t.Fatalf("csv %q", records)
	}
	for _, rec := range records[1:] {
		if rec[1] == b.ID && rec[2] != "'=cmd|' /C calc'!A0" {
			t.Fatalf("formula not neutralised: %q", rec)
		}
		if rec[1] == a.ID && rec[0] == "2026-03-01" && strings.Join(rec[3:], ",") != "search,5,5,5,1,0" {
			t.Fatalf("csv row %q", rec)
		}
	}

	// Empty ranges still answer a well-formed document.
	r = en.do("fin", "finance", http.MethodGet, "/billing/daily?from=2027-01-01&to=2027-01-31", nil)
	if r.code != http.StatusOK || strings.TrimSpace(string(r.body)) != `{"data":[]}` {
		t.Fatalf("empty json: %d %s", r.code, r.body)
	}
	r = en.do("fin", "finance", http.MethodGet, "/billing/daily?from=2027-01-01&to=2027-01-31&format=csv", nil)
	if r.code != http.StatusOK || strings.TrimSpace(string(r.body)) != "date,key_id,owner_id,endpoint,requests,credits,units,errors,granted" {
		t.Fatalf("empty csv: %d %s", r.code, r.body)
	}

	wantProblem(t, en.do("fin", "finance", http.MethodGet, "/billing/daily?format=xml", nil), http.StatusBadRequest)
	wantProblem(t, en.do("fin", "finance", http.MethodGet, "/billing/daily?from=2020-01-01&to=2026-01-01", nil), http.StatusUnprocessableEntity)
	wantProblem(t, en.do("fin", "finance", http.MethodGet, "/billing/daily?from=03/01/2026", nil), http.StatusBadRequest)
	wantProblem(t, en.do("", "", http.MethodGet, "/billing/daily", nil), http.StatusUnauthorized)
}
