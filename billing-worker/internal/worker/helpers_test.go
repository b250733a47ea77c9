package worker_test

import (
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

// env is one test's servers: a JetStream server with the USAGE stream and a
// fresh migrated database.
type env struct {
	*testenv.UsageDB
	t  testing.TB
	db *sqlx.DB
}

func newEnv(t testing.TB) *env {
	u := testenv.StartUsageDB(t)
	return &env{UsageDB: u, t: t, db: sqlx.NewDb(u.DB, "postgres")}
}

func (e *env) waitLedger(n int64, timeout time.Duration) {
	e.WaitRows("api_gateway.credit_ledger", n, timeout)
}

func (e *env) waitDrained(timeout time.Duration) { e.WaitDrained(usagev1.BillingConsumer, timeout) }

type balance struct{ Granted, Used, Requests int64 }

// expectBalances is what the balances must be for the given (distinct) events.
func expectBalances(evs []*usagev1.UsageEvent) map[string]balance {
	want := map[string]balance{}
	for _, ev := range evs {
		k := ev.GetKeyId() + "/" + ev.GetPeriod() + "-01"
		b := want[k]
		b.Granted = ev.GetMonthlyCredits()
		b.Used += ev.GetCredits()
		b.Requests++
		want[k] = b
	}
	return want
}

func (e *env) balances() map[string]balance {
	e.t.Helper()
	rows, err := e.db.Query(`SELECT key_id::text, to_char(period, 'YYYY-MM-DD'), granted, used, requests FROM api_gateway.credit_balances`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]balance{}
	for rows.Next() {
		var k, p string
		var b balance
		if err := rows.Scan(&k, &p, &b.Granted, &b.Used, &b.Requests); err != nil {
			e.t.Fatal(err)
		}
		got[k+"/"+p] = b
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return got
}

// checkLedger asserts the ledger holds exactly the events, once each, and
// the balances are their sums.
func (e *env) checkLedger(evs []*usagev1.UsageEvent) {
	e.t.Helper()
	var credits int64
	for _, ev := range evs {
		credits += ev.GetCredits()
	}
	if got := e.Count(`SELECT count(*) FROM api_gateway.credit_ledger`); got != int64(len(evs)) {
		e.t.Errorf("ledger rows = %d, want %d", got, len(evs))
	}
	if got := e.Count(`SELECT sum(credits) FROM api_gateway.credit_ledger`); got != credits {
		e.t.Errorf("ledger credits = %d, want %d", got, credits)
	}
	want, got := expectBalances(evs), e.balances()
	if len(got) != len(want) {
		e.t.Errorf("balances: %d rows, want %d", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			e.t.Errorf("balance %s = %+v, want %+v", k, got[k], w)
		}
	}
	// The balances are the ledger's sums, whatever the events were.
	if n := e.Count(`SELECT count(*) FROM api_gateway.credit_balances b FULL JOIN (
		SELECT key_id, period, sum(credits) AS used, count(*) AS requests FROM api_gateway.credit_ledger GROUP BY 1, 2) l
		USING (key_id, period) WHERE b.used IS DISTINCT FROM l.used OR b.requests IS DISTINCT FROM l.requests`); n != 0 {
		e.t.Errorf("%d balances disagree with the ledger", n)
	}
}
