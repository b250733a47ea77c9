package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/gateway/internal/problem"
	"github.com/mana/apigw/services/testenv"
)

// TestReadyFollowsPostgres: /ready answers 503 problem+json with Retry-After
// while the gateway's own PostgreSQL is stopped and 200 once it is started
// again.
func TestReadyFollowsPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	db := sqlx.MustConnect("postgres", pg.URL())
	defer db.Close()
	e := NewEcho(testenv.Logger(t), prometheus.NewRegistry(),
		[]Check{{"postgres", func(ctx context.Context) error { return db.PingContext(ctx) }}}, false)
	var last *httptest.ResponseRecorder
	ready := func() int {
		last = httptest.NewRecorder()
		e.ServeHTTP(last, httptest.NewRequest(http.MethodGet, "/ready", nil))
		return last.Code
	}
	if c := ready(); c != http.StatusOK {
		t.Fatalf("/ready with Postgres up: %d", c)
	}
	pg.Stop()
	if c := ready(); c != http.StatusServiceUnavailable {
		t.Fatalf("/ready with Postgres stopped: %d, want 503", c)
	}
	if h := last.Header(); h.Get("Retry-After") != "1" || h.Get("Content-Type") != problem.ContentType {
		t.Fatalf("/ready 503 with Retry-After %q, Content-Type %q", h.Get("Retry-After"), h.Get("Content-Type"))
	}
	pg.Start()
	deadline := time.Now().Add(30 * time.Second)
	for ready() != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("/ready not 200 within 30 s of Postgres starting again")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
