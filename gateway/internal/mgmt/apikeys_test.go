package mgmt

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/keys"
)

func TestKeyLifecycle(t *testing.T) {
	en := newEnv(t)
	ctx := context.Background()
	exp := en.now.Add(48 * time.Hour)

	// Create: the secret is shown once, well formed, stored only as a hash.
	r := en.do("user-a", "", http.MethodPost, "/api-keys", map[string]any{"name": "My API Key", "tier": "pro", "expiresAt": exp})
	if r.code != http.StatusCreated {
		t.Fatalf("create: %d %s", r.code, r.body)
	}
	var created keyView
	r.json(t, &created)
	if err := keys.Parse(created.Secret); err != nil {
		t.Fatalf("secret %q: %v", created.Secret, err)
	}
	if created.KeyPrefix != keys.Prefix(created.Secret) || created.Tier != "pro" || !created.Active ||
		created.RateLimitPerMinute != 100 || created.MonthlyCredits != 5000 || created.CreditsRemaining != 5000 ||
		created.ExpiresAt == nil || !created.ExpiresAt.Equal(exp) || created.LastUsedAt != nil || created.Name != "My API Key" {
		t.Fatalf("created %+v", created)
	}
	if loc := r.header.Get("Location"); loc != "/api-keys/"+created.ID {
		t.Fatalf("Location %q", loc)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Fatal("secret answer is cacheable")
	}
	stored, err := en.store.ByHash(ctx, en.hasher.Hash(created.Secret))
	if err != nil || stored.ID != created.ID || stored.OwnerID != "user-a" {
		t.Fatalf("by hash: %v %+v", err, stored)
	}
	// The row as Postgres holds it: the keyed hash, and the secret nowhere,
	// neither as text nor as the hex Postgres shows a bytea in.
	var row struct {
		JSON string `db:"row"`
		Hash []byte `db:"key_hash"`
	}
	if err := en.db.Get(&row, `SELECT row_to_json(k)::text AS row, key_hash FROM api_gateway.api_keys k WHERE id = $1`, created.ID); err != nil {
		t.Fatal(err)
	}
	if !keys.Equal(row.Hash, en.hasher.Hash(created.Secret)) {
		t.Fatalf("key_hash %x is not the keyed hash of the secret", row.Hash)
	}
	body := strings.TrimPrefix(created.Secret, created.KeyPrefix)
	for _, leak := range []string{created.Secret, body, hex.EncodeToString([]byte(created.Secret)), hex.EncodeToString([]byte(body))} {
		if strings.Contains(row.JSON, leak) {
			t.Fatalf("the stored row holds the secret (%q): %s", leak, row.JSON)
		}
	}
	if calls := en.state.snapshot(); len(calls) != 1 || calls[0].ID != created.ID || !calls[0].Active {
		t.Fatalf("sync calls %+v", calls)
	}

	// Read: never the secret.
	for _, path := range []string{"/api-keys", "/api-keys/" + created.ID} {
		r := en.do("user-a", "", http.MethodGet, path, nil)
		if r.code != http.StatusOK || strings.Contains(string(r.body), created.Secret) || strings.Contains(string(r.body), `"key"`) {
			t.Fatalf("GET %s: %d %s", path, r.code, r.body)
		}
	}
	var got keyView
	en.do("user-a", "", http.MethodGet, "/api-keys/"+created.ID, nil).json(t, &got)
	if got.ID != created.ID || got.KeyPrefix != created.KeyPrefix {
		t.Fatalf("get %+v", got)
	}

	// Credits used this month show in creditsRemaining.
	en.exec(`INSERT INTO api_gateway.credit_balances (key_id, period, granted, used) VALUES ($1, '2026-03-01', 5000, 120)`, created.ID)
	en.exec(`INSERT INTO api_gateway.credit_balances (key_id, period, granted, used) VALUES ($1, '2026-02-01', 5000, 4000)`, created.ID)
	en.do("user-a", "", http.MethodGet, "/api-keys/"+created.ID, nil).json(t, &got)
	if got.CreditsRemaining != 4880 {
		t.Fatalf("creditsRemaining %d", got.CreditsRemaining)
	}

	// PATCH: deactivate and rename; the state is propagated.
	r = en.do("user-a", "", http.MethodPatch, "/api-keys/"+created.ID, map[string]any{"name": "renamed", "active": false})
	if r.code != http.StatusOK {
		t.Fatalf("patch: %d %s", r.code, r.body)
	}
	r.json(t, &got)
	if got.Name != "renamed" || got.Active || got.ExpiresAt == nil {
		t.Fatalf("patched %+v", got)
	}
	calls := en.state.snapshot()
	last := calls[len(calls)-1]
	if len(calls) != 2 || last.Active || !last.UpdatedAt.After(calls[0].UpdatedAt) {
		t.Fatalf("sync after patch %+v", calls)
	}
	// expiresAt null clears it; other fields stay.
	r = en.do("user-a", "", http.MethodPatch, "/api-keys/"+created.ID, `{"expiresAt": null}`)
	r.json(t, &got)
	if r.code != http.StatusOK || got.ExpiresAt != nil || got.Name != "renamed" || got.Active {
		t.Fatalf("clear expiry: %d %s", r.code, r.body)
	}
	r = en.do("user-a", "", http.MethodPatch, "/api-keys/"+created.ID, map[string]any{"active": true})
	if r.code != http.StatusOK {
		t.Fatalf("reactivate: %d", r.code)
	}

	// Regenerate without grace: the old secret stops at once.
	r = en.do("user-a", "", http.MethodPost, "/api-keys/"+created.ID+"/regenerate", nil)
	if r.code != http.StatusOK {
		t.Fatalf("regenerate: %d %s", r.code, r.body)
	}
	var regen keyView
	r.json(t, &regen)
	if keys.Parse(regen.Secret) != nil || regen.Secret == created.Secret || regen.ID != created.ID || regen.KeyPrefix != keys.Prefix(regen.Secret) {
		t.Fatalf("regenerated %+v", regen)
	}
	calls = en.state.snapshot()
	last = calls[len(calls)-1]
	if !keys.Equal(last.Hash, en.hasher.Hash(regen.Secret)) {
		t.Fatal("regenerate did not sync the new hash")
	}
	if got := secretState(last, en.now, en.hasher.Hash(created.Secret)); got != "revoked" {
		t.Fatalf("old secret after regenerate: %s", got)
	}
	if got := secretState(last, en.now, en.hasher.Hash(regen.Secret)); got != "usable" {
		t.Fatalf("new secret: %s", got)
	}

	// Regenerate with a grace period: both work until it ends.
	r = en.do("user-a", "", http.MethodPost, "/api-keys/"+created.ID+"/regenerate", map[string]any{"gracePeriodSeconds": 3600})
	if r.code != http.StatusOK {
		t.Fatalf("regenerate with grace: %d %s", r.code, r.body)
	}
	var regen2 keyView
	r.json(t, &regen2)
	if keys.Parse(regen2.Secret) != nil || regen2.Secret == regen.Secret {
		t.Fatalf("regenerated with grace %+v", regen2)
	}
	calls = en.state.snapshot()
	last = calls[len(calls)-1]
	for _, s := range []string{regen.Secret, regen2.Secret} {
		if got := secretState(last, en.now.Add(59*time.Minute), en.hasher.Hash(s)); got != "usable" {
			t.Fatalf("within grace: %s", got)
		}
	}
	if got := secretState(last, en.now.Add(time.Hour), en.hasher.Hash(regen.Secret)); got != "revoked" {
		t.Fatalf("after grace: %s", got)
	}
	if got := secretState(last, en.now, en.hasher.Hash(created.Secret)); got != "unknown" {
		t.Fatalf("first secret: %s", got)
	}

	// Delete: 204, propagated, gone for reads, idempotent.
	r = en.do("user-a", "", http.MethodDelete, "/api-keys/"+created.ID, nil)
	if r.code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
	calls = en.state.snapshot()
	if last = calls[len(calls)-1]; last.DeletedAt == nil {
		t.Fatal("delete not propagated")
	}
	wantProblem(t, en.do("user-a", "", http.MethodGet, "/api-keys/"+created.ID, nil), http.StatusNotFound)
	wantProblem(t, en.do("user-a", "", http.MethodPatch, "/api-keys/"+created.ID, map[string]any{"name": "x"}), http.StatusNotFound)
	wantProblem(t, en.do("user-a", "", http.MethodPost, "/api-keys/"+created.ID+"/regenerate", nil), http.StatusNotFound)
	if r := en.do("user-a", "", http.MethodDelete, "/api-keys/"+created.ID, nil); r.code != http.StatusNoContent {
		t.Fatalf("second delete: %d", r.code)
	}
	var list listResponse
	en.do("user-a", "", http.MethodGet, "/api-keys", nil).json(t, &list)
	if len(list.Data) != 0 || list.NextCursor != nil {
		t.Fatalf("list after delete %+v", list)
	}
}

// TestSyncFailure: when the state cannot be propagated the answer is 503;
// the change is committed and a retry propagates it.
func TestSyncFailure(t *testing.T) {
	en := newEnv(t)
	k := en.create("user-a", map[string]any{"name": "k", "tier": "free"})

	en.state.setFail(true)
	wantProblem(t, en.do("user-a", "", http.MethodPatch, "/api-keys/"+k.ID, map[string]any{"active": false}), http.StatusServiceUnavailable)
	if row, _ := en.store.ByID(context.Background(), k.ID); row.Active {
		t.Fatal("PATCH not committed")
	}
	wantProblem(t, en.do("user-a", "", http.MethodDelete, "/api-keys/"+k.ID, nil), http.StatusServiceUnavailable)

	// A create that cannot be propagated leaves no usable key behind.
	wantProblem(t, en.do("user-a", "", http.MethodPost, "/api-keys", map[string]any{"name": "n", "tier": "free"}), http.StatusServiceUnavailable)
	var n int
	if err := en.db.Get(&n, `SELECT count(*) FROM api_gateway.api_keys WHERE deleted_at IS NULL AND name = 'n'`); err != nil || n != 0 {
		t.Fatalf("unpropagated create left %d keys (%v)", n, err)
	}

	en.state.setFail(false)
	if r := en.do("user-a", "", http.MethodDelete, "/api-keys/"+k.ID, nil); r.code != http.StatusNoContent {
		t.Fatalf("retry delete: %d %s", r.code, r.body)
	}
	calls := en.state.snapshot()
	if last := calls[len(calls)-1]; last.ID != k.ID || last.DeletedAt == nil || last.Active {
		t.Fatalf("retried sync %+v", last)
	}
}

func TestPagination(t *testing.T) {
	en := newEnv(t)
	var want []string
	for i := range 5 {
		want = append(want, en.create("user-a", map[string]any{"name": fmt.Sprint("k", i), "tier": "free"}).ID)
	}
	en.create("user-b", map[string]any{"name": "b", "tier": "free"})
	var got []string
	path := "/api-keys?limit=2"
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatal("too many pages")
		}
		var list listResponse
		r := en.do("user-a", "", http.MethodGet, path, nil)
		if r.code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, r.code, r.body)
		}
		r.json(t, &list)
		for _, k := range list.Data {
			got = append(got, k.ID)
		}
		if list.NextCursor == nil {
			break
		}
		path = "/api-keys?limit=2&cursor=" + *list.NextCursor
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("pages %v, want %v", got, want)
	}
	var list listResponse
	en.do("user-a", "", http.MethodGet, "/api-keys", nil).json(t, &list)
	if len(list.Data) != 5 || list.NextCursor != nil {
		t.Fatalf("default page %d %v", len(list.Data), list.NextCursor)
	}
	for _, q := range []string{"limit=0", "limit=-1", "limit=101", "limit=x", "limit=1e3", "cursor=bogus", "cursor=" + strings.Repeat("A", 500)} {
		wantProblem(t, en.do("user-a", "", http.MethodGet, "/api-keys?"+q, nil), http.StatusBadRequest)
	}
}

// TestValidation: every bad request is a 4xx problem, never a 5xx, and
// changes nothing.
func TestValidation(t *testing.T) {
	en := newEnv(t)
	k := en.create("user-a", map[string]any{"name": "k", "tier": "free"})
	past := en.now.Add(-time.Minute).Format(time.RFC3339)
	id := "/api-keys/" + k.ID
	tests := []struct {
		name, method, path, body, ctype string
		want                            int
	}{
		{"empty body", "POST", "/api-keys", "", "application/json", 400},
		{"malformed", "POST", "/api-keys", `{"name":`, "application/json", 400},
		{"not an object", "POST", "/api-keys", `["x"]`, "application/json", 400},
		{"null", "POST", "/api-keys", `null`, "application/json", 400},
		{"string", "POST", "/api-keys", `"x"`, "application/json", 400},
		{"trailing data", "POST", "/api-keys", `{"name":"a","tier":"free"} {}`, "application/json", 400},
		{"unknown field", "POST", "/api-keys", `{"name":"a","tier":"free","owner":"user-b"}`, "application/json", 400},
		{"name wrong type", "POST", "/api-keys", `{"name":1,"tier":"free"}`, "application/json", 400},
		{"bad utf8", "POST", "/api-keys", "{\"name\":\"\xff\xfe\",\"tier\":\"free\"}", "application/json", 400},
		{"bad time", "POST", "/api-keys", `{"name":"a","tier":"free","expiresAt":"tomorrow"}`, "application/json", 400},
		{"text/plain", "POST", "/api-keys", `{"name":"a","tier":"free"}`, "text/plain", 415},
		{"too large", "POST", "/api-keys", `{"name":"` + strings.Repeat("a", 70<<10) + `","tier":"free"}`, "application/json", 413},
		{"missing name", "POST", "/api-keys", `{"tier":"free"}`, "application/json", 422},
		{"blank name", "POST", "/api-keys", `{"name":"   ","tier":"free"}`, "application/json", 422},
		{"long name", "POST", "/api-keys", `{"name":"` + strings.Repeat("é", 101) + `","tier":"free"}`, "application/json", 422},
		{"control in name", "POST", "/api-keys", `{"name":"a\u0000b","tier":"free"}`, "application/json", 422},
		{"missing tier", "POST", "/api-keys", `{"name":"a"}`, "application/json", 422},
		{"unknown tier", "POST", "/api-keys", `{"name":"a","tier":"platinum"}`, "application/json", 422},
		{"tier case", "POST", "/api-keys", `{"name":"a","tier":"FREE"}`, "application/json", 422},
		{"past expiry", "POST", "/api-keys", `{"name":"a","tier":"free","expiresAt":"` + past + `"}`, "application/json", 422},
		{"year 10000", "POST", "/api-keys", `{"name":"a","tier":"free","expiresAt":"10000-01-01T00:00:00Z"}`, "application/json", 400},
		{"patch empty object", "PATCH", id, `{}`, "application/json", 422},
		{"patch empty body", "PATCH", id, ``, "application/json", 400},
		{"patch null name", "PATCH", id, `{"name":null}`, "application/json", 422},
		{"patch null active", "PATCH", id, `{"active":null}`, "application/json", 422},
		{"patch active string", "PATCH", id, `{"active":"false"}`, "application/json", 400},
		{"patch past expiry", "PATCH", id, `{"expiresAt":"` + past + `"}`, "application/json", 422},
		{"patch tier", "PATCH", id, `{"tier":"enterprise"}`, "application/json", 400},
		{"patch long name", "PATCH", id, `{"name":"` + strings.Repeat("a", 101) + `"}`, "application/json", 422},
		{"regenerate negative grace", "POST", id + "/regenerate", `{"gracePeriodSeconds":-1}`, "application/json", 422},
		{"regenerate long grace", "POST", id + "/regenerate", `{"gracePeriodSeconds":86401}`, "application/json", 422},
		{"regenerate huge grace", "POST", id + "/regenerate", `{"gracePeriodSeconds":1e30}`, "application/json", 400},
		{"regenerate fractional grace", "POST", id + "/regenerate", `{"gracePeriodSeconds":1.5}`, "application/json", 400},
		{"regenerate unknown field", "POST", id + "/regenerate", `{"grace":10}`, "application/json", 400},
		{"usage bad from", "GET", id + "/usage?from=2026-3-1", "", "", 400},
		{"usage bad to", "GET", id + "/usage?to=yesterday", "", "", 400},
		{"usage from after to", "GET", id + "/usage?from=2026-03-10&to=2026-03-01", "", "", 422},
		{"usage range too long", "GET", id + "/usage?from=2024-01-01&to=2026-01-01", "", "", 422},
		{"usage invalid date", "GET", id + "/usage?from=2026-02-30", "", "", 400},
		{"unknown id", "GET", "/api-keys/00000000-0000-7000-8000-000000000000", "", "", 404},
		{"id not a uuid", "GET", "/api-keys/'%20OR%201=1%20--", "", "", 404},
		{"id traversal", "PATCH", "/api-keys/..%2f..%2fetc", `{"name":"x"}`, "application/json", 404},
	}
	before := en.state.snapshot()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body any
			if tt.body != "" || tt.method != "GET" {
				body = tt.body
			}
			r := en.doCT("user-a", tt.method, tt.path, body, tt.ctype)
			wantProblem(t, r, tt.want)
		})
	}
	if after := en.state.snapshot(); len(after) != len(before) {
		t.Fatalf("invalid requests synced %d states", len(after)-len(before))
	}
	var n int
	if err := en.db.Get(&n, `SELECT count(*) FROM api_gateway.api_keys`); err != nil || n != 1 {
		t.Fatalf("keys in table: %d (%v)", n, err)
	}
	row, err := en.store.ByID(context.Background(), k.ID)
	if err != nil || row.Name != "k" || !row.Active || row.Tier != "free" || row.ExpiresAt != nil {
		t.Fatalf("key changed: %+v %v", row, err)
	}
	wantProblem(t, en.do("", "", http.MethodGet, "/api-keys", nil), http.StatusUnauthorized)
}

// secretState reads the key state the handler synced for a secret's hash
// at now: "usable" (the current secret, or the previous one within its
// grace period), "revoked" (the previous one past it, or a deleted,
// expired or inactive key) or "unknown" (neither).
func secretState(k keys.Key, now time.Time, hash []byte) string {
	switch {
	case keys.Equal(k.Hash, hash):
	case keys.Equal(k.PrevHash, hash):
		if k.PrevExpiresAt == nil || !now.Before(*k.PrevExpiresAt) {
			return "revoked"
		}
	default:
		return "unknown"
	}
	if k.DeletedAt != nil || k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) || !k.Active {
		return "revoked"
	}
	return "usable"
}
