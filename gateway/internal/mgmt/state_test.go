package mgmt

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/services/testenv"
)

// balanceOnly is a quota loader that knows the balance and nothing else of
// a key: the state it returns is older than any change and fits no secret,
// so every decision of the test stands on what the management API synced.
type balanceOnly struct{ loads *atomic.Int64 }

func (l balanceOnly) Load(_ context.Context, keyID, _ string) (quota.State, int64, error) {
	l.loads.Add(1)
	return quota.State{KeyID: keyID, Version: 0, RateLimitPerMinute: 1}, 5000, nil
}

// TestKeyChangesReachRedis runs the management API against real
// PostgreSQL and the real quota store on a real redis-server: each change
// is what the next call's Redis decision sees, over a stale rebuild; while
// Redis is down a change is committed and answered 503 with Retry-After,
// and its retry once Redis is back is what calls see.
func TestKeyChangesReachRedis(t *testing.T) {
	rd := testenv.StartRedis(t)
	loads := &atomic.Int64{}
	q := quota.NewStore(rd.Client(), balanceOnly{loads}, nil)
	en := newEnvState(t, testenv.PostgresURL(t), q)
	en.now = time.Now().UTC() // the management API's clock agrees with Redis's
	ctx := context.Background()
	decide := func(id, secret string) quota.Outcome {
		t.Helper()
		d, err := q.Acquire(ctx, quota.Request{KeyID: id, Hash: en.hasher.Hash(secret), Allowed: true, Member: ulid.Make().String()})
		if err != nil {
			t.Fatalf("acquire: %v", err)
		}
		return d.Outcome
	}
	want := func(step, id, secret string, outcome quota.Outcome) {
		t.Helper()
		if got := decide(id, secret); got != outcome {
			t.Fatalf("%s: Redis decides %d, want %d", step, got, outcome)
		}
	}
	patch := func(id string, body map[string]any) {
		t.Helper()
		if r := en.do("user-a", "", http.MethodPatch, "/api-keys/"+id, body); r.code != http.StatusOK {
			t.Fatalf("patch %v: %d %s", body, r.code, r.body)
		}
	}

	k := en.create("user-a", map[string]any{"name": "k", "tier": "pro"})
	want("created", k.ID, k.Secret, quota.OK)
	patch(k.ID, map[string]any{"active": false})
	want("deactivated", k.ID, k.Secret, quota.Inactive)
	patch(k.ID, map[string]any{"active": true})
	want("reactivated", k.ID, k.Secret, quota.OK)

	r := en.do("user-a", "", http.MethodPost, "/api-keys/"+k.ID+"/regenerate", nil)
	if r.code != http.StatusOK {
		t.Fatalf("regenerate: %d %s", r.code, r.body)
	}
	var regen keyView
	r.json(t, &regen)
	want("regenerated, old secret", k.ID, k.Secret, quota.Unknown)
	want("regenerated, new secret", k.ID, regen.Secret, quota.OK)
	r = en.do("user-a", "", http.MethodPost, "/api-keys/"+k.ID+"/regenerate", map[string]any{"gracePeriodSeconds": 3600})
	if r.code != http.StatusOK {
		t.Fatalf("regenerate with grace: %d %s", r.code, r.body)
	}
	var graced keyView
	r.json(t, &graced)
	want("in the grace period, old secret", k.ID, regen.Secret, quota.OK)
	want("in the grace period, new secret", k.ID, graced.Secret, quota.OK)

	// An expiry the management API's clock accepts and Redis's has passed.
	en.now = time.Now().UTC().Add(-2 * time.Hour)
	patch(k.ID, map[string]any{"expiresAt": en.now.Add(time.Hour).Format(time.RFC3339)})
	want("expired", k.ID, graced.Secret, quota.Expired)
	en.now = time.Now().UTC()
	patch(k.ID, map[string]any{"expiresAt": nil})
	want("expiry cleared", k.ID, graced.Secret, quota.OK)

	// Redis down: the change is committed, the answer is 503 with
	// Retry-After, and the key keeps its last state in Redis meanwhile.
	rd.Stop()
	r = en.do("user-a", "", http.MethodPatch, "/api-keys/"+k.ID, map[string]any{"active": false})
	wantProblem(t, r, http.StatusServiceUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Fatalf("503 without Retry-After: %v", r.header)
	}
	if row, err := en.store.ByID(ctx, k.ID); err != nil || row.Active {
		t.Fatalf("the change was not committed: %+v %v", row, err)
	}
	wantProblem(t, en.do("user-a", "", http.MethodDelete, "/api-keys/"+k.ID, nil), http.StatusServiceUnavailable)
	// A create that cannot be propagated leaves no usable key behind.
	wantProblem(t, en.do("user-a", "", http.MethodPost, "/api-keys", map[string]any{"name": "n", "tier": "free"}), http.StatusServiceUnavailable)
	var n int
	if err := en.db.Get(&n, `SELECT count(*) FROM api_gateway.api_keys WHERE deleted_at IS NULL AND name = 'n'`); err != nil || n != 0 {
		t.Fatalf("unpropagated create left %d keys (%v)", n, err)
	}
	rd.Start()
	if r := en.do("user-a", "", http.MethodDelete, "/api-keys/"+k.ID, nil); r.code != http.StatusNoContent {
		t.Fatalf("retried delete: %d %s", r.code, r.body)
	}
	want("deleted", k.ID, graced.Secret, quota.Deleted)
	if n := loads.Load(); n != 1 {
		t.Fatalf("%d loads, want 1 (the balance, once)", n)
	}
}
