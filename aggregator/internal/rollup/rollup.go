// Package rollup owns api_gateway.api_usage (one row per event, partitioned
// by month) and api_gateway.api_usage_daily (the daily rollup finance reads),
// and the replay that rebuilds both from the stream and compares them.
//
// The daily rows are a pure function of the set of events: they are only
// ever changed from api_usage rows a transaction actually inserted, and every
// column is order-independent (sums, counts, the least owner ID), so any
// batching or redelivery gives the same table.
package rollup

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// LiveSchema is the schema of the live tables.
const LiveSchema = "api_gateway"

// Row is one api_usage row.
type Row struct {
	EventID    string
	OccurredAt time.Time // UTC, truncated to microseconds like Postgres stores it
	RequestID  string
	KeyID      string
	OwnerID    string
	Tier       string
	Endpoint   string
	Status     int32
	Credits    int64
	Units      int64
	Unit       string
	LatencyUS  int64
	TraceID    string // the call's W3C trace ID; empty when tracing was off
	// Granted is the credits a credit grant added (endpoint credits.grant);
	// 0 for a call. A grant counts in its daily row's granted, not as a request.
	Granted int64
}

// RowOf turns a decoded (validated) event into its api_usage row.
func RowOf(ev *usagev1.UsageEvent) Row {
	return Row{
		EventID:    ev.GetEventId(),
		OccurredAt: ev.GetOccurredAt().AsTime().UTC().Truncate(time.Microsecond),
		RequestID:  ev.GetRequestId(),
		KeyID:      ev.GetKeyId(),
		OwnerID:    ev.GetOwnerId(),
		Tier:       ev.GetTier(),
		Endpoint:   ev.GetEndpoint(),
		Status:     ev.GetStatus(),
		Credits:    ev.GetCredits(),
		Units:      ev.GetUnits(),
		Unit:       ev.GetUnit(),
		LatencyUS:  ev.GetLatencyUs(),
		TraceID:    ev.GetTraceId(),
		Granted:    ev.GetGrant().GetCredits(),
	}
}

// Day is the UTC date a row counts for in api_usage_daily.
func (r Row) Day() time.Time {
	y, m, d := r.OccurredAt.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// Result tells what Record changed.
type Result struct {
	Inserted, Duplicates int
}

// Store writes the usage tables of one schema (the live one or a replay's
// scratch schema). It remembers which monthly partitions exist. Safe for
// concurrent use.
type Store struct {
	schema string
	mu     sync.Mutex
	parts  map[string]bool
}

// NewStore returns a store of the tables in schema.
func NewStore(schema string) *Store {
	return &Store{schema: schema, parts: map[string]bool{}}
}

func (s *Store) table(name string) string {
	return pq.QuoteIdentifier(s.schema) + "." + pq.QuoteIdentifier(name)
}

// EnsurePartitions makes sure api_usage has a partition for the month of
// every row, creating the missing ones (see EnsurePartition).
func (s *Store) EnsurePartitions(ctx context.Context, db *sqlx.DB, rows []Row) error {
	seen := map[time.Time]bool{}
	for _, r := range rows {
		y, m, _ := r.OccurredAt.Date()
		month := time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
		if seen[month] {
			continue
		}
		seen[month] = true
		if err := s.EnsurePartition(ctx, db, month); err != nil {
			return err
		}
	}
	return nil
}

// EnsurePartition creates the monthly partition api_usage_YYYY_MM holding
// month (UTC) if it does not exist. The default partition may already hold
// rows of that month (written before the partition existed); they are moved
// into the new partition in the same transaction, so attaching it never fails.
// A transaction-scoped advisory lock serialises concurrent creators of this
// code; a creator it does not serialise (another version, an operator, a
// replay of an older binary) can still make the DDL fail with a duplicate
// (42P07, or 23505 on the catalog). That failure says nothing about the data:
// when the partition is then attached, EnsurePartition succeeds, and
// otherwise its error is to be retried, never taken for bad data.
func (s *Store) EnsurePartition(ctx context.Context, db *sqlx.DB, month time.Time) error {
	y, m, _ := month.UTC().Date()
	from := time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(0, 1, 0)
	name := fmt.Sprintf("api_usage_%04d_%02d", y, int(m))
	s.mu.Lock()
	known := s.parts[name]
	s.mu.Unlock()
	if known {
		return nil
	}
	err := inTx(ctx, db, func(tx *sqlx.Tx) error {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, s.schema+".api_usage partitions"); err != nil {
			return err
		}
		exists, attached, err := s.partition(ctx, tx, name)
		if err != nil || attached {
			return err
		}
		bounds := fmt.Sprintf("FOR VALUES FROM ('%s') TO ('%s')", from.Format(time.RFC3339), to.Format(time.RFC3339))
		var stmts []string
		if !exists {
			stmts = append(stmts, fmt.Sprintf(`CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`, s.table(name), s.table("api_usage")))
		}
		stmts = append(stmts,
			fmt.Sprintf(`WITH moved AS (DELETE FROM %s WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *) INSERT INTO %s SELECT * FROM moved`,
				s.table("api_usage_default"), s.table(name)),
			fmt.Sprintf(`ALTER TABLE %s ATTACH PARTITION %s %s`, s.table("api_usage"), s.table(name), bounds))
		for _, q := range stmts {
			var args []any
			if strings.Contains(q, "$1") {
				args = []any{from, to}
			}
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Lost a race with a creator the lock does not serialise: what
		// counts is that the partition is there now.
		if _, attached, cerr := s.partition(ctx, db, name); cerr == nil && attached {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("ensure partition %s.%s: %w", s.schema, name, err)
	}
	s.mu.Lock()
	s.parts[name] = true
	s.mu.Unlock()
	return nil
}

// partition tells whether the table name exists in the store's schema and
// whether it is attached to api_usage.
func (s *Store) partition(ctx context.Context, q sqlx.QueryerContext, name string) (exists, attached bool, err error) {
	err = q.QueryRowxContext(ctx, `SELECT to_regclass($1) IS NOT NULL,
	EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass($1) AND inhparent = to_regclass($2))`,
		s.table(name), s.table("api_usage")).Scan(&exists, &attached)
	return exists, attached, err
}

func inTx(ctx context.Context, db *sqlx.DB, f func(*sqlx.Tx) error) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Record inserts the rows into api_usage inside tx, skipping events already
// there, and adds the inserted ones to api_usage_daily. The caller commits;
// the rows' partitions must exist (EnsurePartitions) or they land in the
// default partition. Rows are written in a fixed order (api_usage by event ID,
// daily rows by key) so concurrent writers do not deadlock each other.
//
// The gateway's news of a key refused for want of credits (endpoint
// credits.exhausted) is no call: it is left out of both tables, and of
// Result's counts, so requests and errors count calls only, live as in a
// replay.
func (s *Store) Record(ctx context.Context, tx *sqlx.Tx, rows []Row) (Result, error) {
	calls := slices.DeleteFunc(slices.Clone(rows), func(r Row) bool { return r.Endpoint == usagev1.ExhaustedEndpoint })
	if len(calls) == 0 {
		return Result{}, nil
	}
	slices.SortFunc(calls, func(a, b Row) int { return cmp.Compare(a.EventID, b.EventID) })
	inserted, err := s.insertUsage(ctx, tx, calls)
	if err != nil {
		return Result{}, err
	}
	if err := s.addDaily(ctx, tx, inserted); err != nil {
		return Result{}, err
	}
	return Result{Inserted: len(inserted), Duplicates: len(calls) - len(inserted)}, nil
}

// insertUsage inserts the rows (sorted by event ID) into api_usage, skipping
// events already there, and returns the rows it inserted, in their order. A
// row repeated within rows is inserted once.
func (s *Store) insertUsage(ctx context.Context, tx *sqlx.Tx, rows []Row) ([]Row, error) {
	n := len(rows)
	ids, times, reqs, keys, owners := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	tiers, endpoints, units, traces := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	status, credits, amounts, latency, granted := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i, r := range rows {
		ids[i], times[i], reqs[i], keys[i], owners[i] = r.EventID, r.OccurredAt.Format(time.RFC3339Nano), r.RequestID, r.KeyID, r.OwnerID
		tiers[i], endpoints[i], units[i], traces[i] = r.Tier, r.Endpoint, r.Unit, r.TraceID
		status[i], credits[i], amounts[i], latency[i], granted[i] = int64(r.Status), r.Credits, r.Units, r.LatencyUS, r.Granted
	}
	var ins []string
	q := `INSERT INTO ` + s.table("api_usage") + ` (` + usageColumns + `)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                     $8::int[], $9::bigint[], $10::bigint[], $11::text[], $12::bigint[], $13::text[], $14::bigint[])
ON CONFLICT (event_id, occurred_at) DO NOTHING
RETURNING event_id`
	if err := tx.SelectContext(ctx, &ins, q, pq.Array(ids), pq.Array(times), pq.Array(reqs), pq.Array(keys),
		pq.Array(owners), pq.Array(tiers), pq.Array(endpoints), pq.Array(status), pq.Array(credits), pq.Array(amounts),
		pq.Array(units), pq.Array(latency), pq.Array(traces), pq.Array(granted)); err != nil {
		return nil, fmt.Errorf("insert api_usage: %w", err)
	}
	isNew := make(map[string]bool, len(ins))
	for _, id := range ins {
		isNew[id] = true
	}
	inserted := make([]Row, 0, len(ins))
	for _, r := range rows {
		if isNew[r.EventID] {
			delete(isNew, r.EventID) // a repeated row counts once
			inserted = append(inserted, r)
		}
	}
	return inserted, nil
}

// dailyKey is the key of one api_usage_daily row.
type dailyKey struct {
	day           time.Time
	key, endpoint string
}

// dailySums is what a set of rows adds to one api_usage_daily row.
type dailySums struct {
	owner                                   string
	requests, credits, units, errs, granted int64
}

// addDaily adds the rows, newly inserted into api_usage, to api_usage_daily.
func (s *Store) addDaily(ctx context.Context, tx *sqlx.Tx, rows []Row) error {
	daily := map[dailyKey]*dailySums{}
	for _, r := range rows {
		k := dailyKey{r.Day(), r.KeyID, r.Endpoint}
		v := daily[k]
		if v == nil {
			v = &dailySums{owner: r.OwnerID}
			daily[k] = v
		}
		v.owner = min(v.owner, r.OwnerID)
		if r.Granted > 0 {
			v.granted += r.Granted
		} else {
			v.requests++
		}
		v.credits += r.Credits
		v.units += r.Units
		if r.Status >= 400 {
			v.errs++
		}
	}
	if len(daily) == 0 {
		return nil
	}
	dkeys := slices.SortedFunc(maps.Keys(daily), func(a, b dailyKey) int {
		return cmp.Or(a.day.Compare(b.day), cmp.Compare(a.key, b.key), cmp.Compare(a.endpoint, b.endpoint))
	})
	m := len(dkeys)
	days, dk, downer, dep := make([]string, m), make([]string, m), make([]string, m), make([]string, m)
	dreq, dcred, dunits, derr, dgrant := make([]int64, m), make([]int64, m), make([]int64, m), make([]int64, m), make([]int64, m)
	for i, k := range dkeys {
		v := daily[k]
		days[i], dk[i], downer[i], dep[i] = k.day.Format(time.DateOnly), k.key, v.owner, k.endpoint
		dreq[i], dcred[i], dunits[i], derr[i], dgrant[i] = v.requests, v.credits, v.units, v.errs, v.granted
	}
	uq := `INSERT INTO ` + s.table("api_usage_daily") + ` AS d (` + dailyColumns + `)
SELECT * FROM unnest($1::date[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
ON CONFLICT (day, key_id, endpoint) DO UPDATE SET
    owner_id = LEAST(d.owner_id, EXCLUDED.owner_id),
    requests = d.requests + EXCLUDED.requests,
    credits  = d.credits + EXCLUDED.credits,
    units    = d.units + EXCLUDED.units,
    errors   = d.errors + EXCLUDED.errors,
    granted  = d.granted + EXCLUDED.granted`
	if _, err := tx.ExecContext(ctx, uq, pq.Array(days), pq.Array(dk), pq.Array(downer), pq.Array(dep),
		pq.Array(dreq), pq.Array(dcred), pq.Array(dunits), pq.Array(derr), pq.Array(dgrant)); err != nil {
		return fmt.Errorf("upsert api_usage_daily: %w", err)
	}
	return nil
}

const (
	usageColumns = `event_id, occurred_at, request_id, key_id, owner_id, tier, endpoint, status, credits, units, unit, latency_us, trace_id, granted`
	dailyColumns = `day, key_id, owner_id, endpoint, requests, credits, units, errors, granted`
)
