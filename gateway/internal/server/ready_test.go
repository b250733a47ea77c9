package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/services/testenv"
)

// TestReadyFollowsPostgres: /ready answers 503 while the gateway's own
// PostgreSQL is stopped and 200 once it is started again.
func TestReadyFollowsPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	db := sqlx.MustConnect("postgres", pg.URL())
	defer db.Close()
	e := NewEcho(testenv.Logger(t), prometheus.NewRegistry(),
		[]Check{{"postgres", func(ctx context.Context) error { return db.PingContext(ctx) }}}, false)
	ready := func() int {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
		return rec.Code
	}
	if c := ready(); c != http.StatusOK {
		t.Fatalf("/ready with Postgres up: %d", c)
	}
	pg.Stop()
	if c := ready(); c != http.StatusServiceUnavailable {
		t.Fatalf("/ready with Postgres stopped: %d, want 503", c)
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
