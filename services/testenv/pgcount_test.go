package testenv

import (
	"context"
	"database/sql"
	"testing"
)

// TestPostgresCounterCountsStatements: statements sent through the proxy
// are counted by their SQL text, parameterised ones and simple ones alike,
// however many times a connection runs them.
func TestPostgresCounterCountsStatements(t *testing.T) {
	c := CountingPostgres(t, PostgresURL(t))
	db, err := sql.Open("postgres", c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM api_gateway.api_keys WHERE key_hash = $1`, []byte{1}).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	if got := c.Statements("WHERE key_hash = $1"); got != 3 {
		t.Fatalf("lookups counted: %d, want 3", got)
	}
	if got := c.Statements(""); got != 4 {
		t.Fatalf("statements counted: %d, want 4", got)
	}
}
