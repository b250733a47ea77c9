package mgmt

import (
	"net/http"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/problem"
	"github.com/mana/apigw/services/testenv"
)

// TestPostgresStoppedAnswers503: with its own PostgreSQL stopped, every
// management route that needs the database answers 503 problem+json with
// Retry-After (not 500); once it is started again the same requests succeed.
func TestPostgresStoppedAnswers503(t *testing.T) {
	pg := testenv.StartPostgres(t)
	en := newEnvOn(t, pg.URL())
	k := en.create("alice", map[string]any{"name": "before", "tier": "free"})
	requests := []struct{ method, path, role string }{
		{http.MethodGet, "/api-keys", ""},
		{http.MethodPost, "/api-keys", ""},
		{http.MethodGet, "/api-keys/" + k.ID, ""},
		{http.MethodPatch, "/api-keys/" + k.ID, ""},
		{http.MethodPost, "/api-keys/" + k.ID + "/regenerate", ""},
		{http.MethodDelete, "/api-keys/" + k.ID, ""},
		{http.MethodGet, "/api-keys/" + k.ID + "/usage?from=2026-03-01&to=2026-03-15", ""},
		{http.MethodGet, "/api-keys/" + k.ID + "/usage/summary", ""},
		{http.MethodGet, "/billing/daily?from=2026-03-01&to=2026-03-15", "finance"},
	}
	body := func(method string) any {
		switch method {
		case http.MethodPost:
			return map[string]any{"name": "during", "tier": "free"}
		case http.MethodPatch:
			return map[string]any{"name": "renamed"}
		}
		return nil
	}
	pg.Stop()
	stoppedAt := time.Now()
	for _, rq := range requests {
		r := en.do("alice", rq.role, rq.method, rq.path, body(rq.method))
		if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" ||
			r.header.Get("Content-Type") != problem.ContentType {
			t.Errorf("%s %s with Postgres stopped: %d, Retry-After %q, %s %s", rq.method, rq.path, r.code,
				r.header.Get("Retry-After"), r.header.Get("Content-Type"), r.body)
		}
	}
	t.Logf("%d management requests answered 503 with Retry-After in %s while Postgres was stopped",
		len(requests), time.Since(stoppedAt).Round(time.Millisecond))
	pg.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := en.do("alice", "", http.MethodGet, "/api-keys/"+k.ID, nil)
		if r.code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Postgres back for 30 s, GET still answers %d %s", r.code, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, rq := range requests {
		if r := en.do("alice", rq.role, rq.method, rq.path, body(rq.method)); r.code >= 500 {
			t.Errorf("%s %s after Postgres came back: %d %s", rq.method, rq.path, r.code, r.body)
		}
	}
}
