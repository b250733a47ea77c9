package app_test

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

func (e *env) waitUsage(n int64, timeout time.Duration) {
	e.WaitRows("api_gateway.api_usage", n, timeout)
}

func (e *env) waitDrained(timeout time.Duration) { e.WaitDrained(usagev1.AggregatorConsumer, timeout) }

type daily struct {
	Owner                            string
	Requests, Credits, Units, Errors int64
}

// expectDaily is api_usage_daily as it must be for the given distinct events.
func expectDaily(evs []*usagev1.UsageEvent) map[string]daily {
	want := map[string]daily{}
	for _, ev := range evs {
		at := ev.GetOccurredAt().AsTime().UTC()
		k := at.Format(time.DateOnly) + "/" + ev.GetKeyId() + "/" + ev.GetEndpoint()
		d, ok := want[k]
		if !ok || ev.GetOwnerId() < d.Owner {
			d.Owner = ev.GetOwnerId()
		}
		d.Requests++
		d.Credits += ev.GetCredits()
		d.Units += ev.GetUnits()
		if ev.GetStatus() >= 400 {
			d.Errors++
		}
		want[k] = d
	}
	return want
}

func (e *env) daily() map[string]daily {
	e.t.Helper()
	rows, err := e.db.Query(`SELECT to_char(day, 'YYYY-MM-DD'), key_id::text, endpoint, owner_id, requests, credits, units, errors FROM api_gateway.api_usage_daily`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]daily{}
	for rows.Next() {
		var day, key, ep string
		var d daily
		if err := rows.Scan(&day, &key, &ep, &d.Owner, &d.Requests, &d.Credits, &d.Units, &d.Errors); err != nil {
			e.t.Fatal(err)
		}
		got[day+"/"+key+"/"+ep] = d
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return got
}

// checkUsage asserts api_usage holds each event once and the daily rows are exact.
func (e *env) checkUsage(evs []*usagev1.UsageEvent) {
	e.t.Helper()
	if got := e.Count(`SELECT count(*) FROM api_gateway.api_usage`); got != int64(len(evs)) {
		e.t.Errorf("api_usage rows = %d, want %d", got, len(evs))
	}
	if got := e.Count(`SELECT count(*) FROM api_gateway.api_usage_default`); got != 0 {
		e.t.Errorf("%d rows in the default partition", got)
	}
	want, got := expectDaily(evs), e.daily()
	if len(got) != len(want) {
		e.t.Errorf("daily: %d rows, want %d", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			e.t.Errorf("daily %s = %+v, want %+v", k, got[k], w)
		}
	}
}
