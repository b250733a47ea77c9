// Package ledger owns the idempotent credit ledger (api_gateway.credit_ledger)
// and the per-key monthly balances derived from it (api_gateway.credit_balances).
//
// The ledger is keyed by event ID: recording an event that is already in it
// changes nothing, so redelivered or republished events are never charged twice.
// Balances are only ever updated from the rows a transaction actually inserted,
// in the same transaction, so used = Σ ledger credits, grants = Σ ledger
// granted and requests = the ledger's rows of calls per key and period. A
// credit grant is a row of its own (credits 0, granted > 0): the period's
// allowance is the monthly grant plus the grants.
package ledger

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Entry is one ledger row: a usage event as billing sees it.
type Entry struct {
	EventID        string
	KeyID          string
	OwnerID        string
	Endpoint       string
	Period         time.Time // first day of the credit month, UTC
	Credits        int64
	MonthlyCredits int64
	OccurredAt     time.Time
	StreamSeq      uint64
	// Granted is set on a credit grant (then Credits is 0), with who gave
	// it why.
	Granted       int64
	Reason, Actor string
}

// EntryOf turns a decoded (already validated) event into a ledger entry.
func EntryOf(ev *usagev1.UsageEvent, streamSeq uint64) (Entry, error) {
	period, err := time.Parse("2006-01", ev.GetPeriod())
	if err != nil {
		return Entry{}, fmt.Errorf("ledger entry %s: period: %w", ev.GetEventId(), err)
	}
	return Entry{
		EventID:        ev.GetEventId(),
		KeyID:          ev.GetKeyId(),
		OwnerID:        ev.GetOwnerId(),
		Endpoint:       ev.GetEndpoint(),
		Period:         period.UTC(),
		Credits:        ev.GetCredits(),
		MonthlyCredits: ev.GetMonthlyCredits(),
		OccurredAt:     ev.GetOccurredAt().AsTime().UTC(),
		StreamSeq:      streamSeq,
		Granted:        ev.GetGrant().GetCredits(),
		Reason:         ev.GetGrant().GetReason(),
		Actor:          ev.GetGrant().GetActor(),
	}, nil
}

// Result tells what a Record call changed.
type Result struct {
	// Inserted entries are new ledger rows; Duplicates were already recorded
	// (or appeared twice in the batch) and changed nothing.
	Inserted, Duplicates int
	// Credits is the sum of the inserted entries' credits.
	Credits int64
	// Changes are the balances the inserted entries moved, by key and period.
	Changes []Change
	// Grants are the inserted credit grants, each with its key's balance
	// after the batch.
	Grants []Grant
}

// Change is one balance as a Record call moved it: Used went from
// UsedBefore to Used, out of Granted — the period's whole allowance, the
// monthly grant plus the credit grants, as it stands after the batch.
type Change struct {
	KeyID, OwnerID   string
	Period           time.Time
	Granted          int64
	UsedBefore, Used int64
}

// Grant is one credit grant the ledger took in, with the balance of its
// key and period after the batch that holds it.
type Grant struct {
	Entry
	Allowance, Used int64
}

const insertLedger = `
INSERT INTO api_gateway.credit_ledger
    (event_id, key_id, owner_id, period, endpoint, credits, occurred_at, stream_seq, granted)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::date[], $5::text[], $6::bigint[], $7::timestamptz[], $8::bigint[], $9::bigint[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id`

const upsertBalances = `
INSERT INTO api_gateway.credit_balances AS b (key_id, period, granted, used, requests, grants)
SELECT * FROM unnest($1::uuid[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
ON CONFLICT (key_id, period) DO UPDATE SET
    granted    = EXCLUDED.granted,
    used       = b.used + EXCLUDED.used,
    requests   = b.requests + EXCLUDED.requests,
    grants     = b.grants + EXCLUDED.grants,
    updated_at = now()
RETURNING key_id::text, period, granted + grants AS allowance, used`

// Record inserts the entries into the ledger inside tx and adds the ones that
// were actually inserted to their balances. Entries already in the ledger are
// skipped. The caller commits tx; nothing is visible before that.
//
// Rows are written in a fixed order (ledger by event ID, balances by key and
// period), so concurrent workers lock in the same order and never deadlock
// each other on the same rows.
func Record(ctx context.Context, tx *sqlx.Tx, entries []Entry) (Result, error) {
	if len(entries) == 0 {
		return Result{}, nil
	}
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b Entry) int { return cmp.Compare(a.EventID, b.EventID) })

	n := len(sorted)
	ids, keys, owners, periods, endpoints := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	credits, seqs, grantedCol := make([]int64, n), make([]int64, n), make([]int64, n)
	times := make([]string, n)
	for i, e := range sorted {
		ids[i], keys[i], owners[i], endpoints[i] = e.EventID, e.KeyID, e.OwnerID, e.Endpoint
		periods[i] = e.Period.Format(time.DateOnly)
		credits[i] = e.Credits
		times[i] = e.OccurredAt.Format(time.RFC3339Nano)
		seqs[i] = int64(e.StreamSeq)
		grantedCol[i] = e.Granted
	}
	var inserted []string
	if err := tx.SelectContext(ctx, &inserted, insertLedger,
		pq.Array(ids), pq.Array(keys), pq.Array(owners), pq.Array(periods), pq.Array(endpoints),
		pq.Array(credits), pq.Array(times), pq.Array(seqs), pq.Array(grantedCol)); err != nil {
		return Result{}, fmt.Errorf("insert ledger rows: %w", err)
	}

	isNew := make(map[string]bool, len(inserted))
	for _, id := range inserted {
		isNew[id] = true
	}
	type bkey struct {
		key    string
		period time.Time
	}
	type bval struct {
		owner          string
		granted        int64
		grantedAt      time.Time
		used, requests int64
		grants         int64
	}
	deltas := make(map[bkey]*bval)
	var res Result
	var grants []Entry
	for _, e := range sorted {
		if !isNew[e.EventID] {
			continue
		}
		delete(isNew, e.EventID) // the same event twice in one batch is inserted once
		res.Inserted++
		res.Credits += e.Credits
		k := bkey{e.KeyID, e.Period}
		v := deltas[k]
		if v == nil {
			v = &bval{owner: e.OwnerID, granted: e.MonthlyCredits, grantedAt: e.OccurredAt}
			deltas[k] = v
		}
		if !e.OccurredAt.Before(v.grantedAt) {
			v.granted, v.grantedAt = e.MonthlyCredits, e.OccurredAt
		}
		v.used += e.Credits
		if e.Granted > 0 {
			v.grants += e.Granted
			grants = append(grants, e)
		} else {
			v.requests++
		}
	}
	res.Duplicates = len(entries) - res.Inserted
	if len(deltas) == 0 {
		return res, nil
	}

	bkeys := make([]bkey, 0, len(deltas))
	for k := range deltas {
		bkeys = append(bkeys, k)
	}
	slices.SortFunc(bkeys, func(a, b bkey) int {
		return cmp.Or(cmp.Compare(a.key, b.key), a.period.Compare(b.period))
	})
	m := len(bkeys)
	bk, bp := make([]string, m), make([]string, m)
	granted, used, reqs, added := make([]int64, m), make([]int64, m), make([]int64, m), make([]int64, m)
	for i, k := range bkeys {
		v := deltas[k]
		bk[i], bp[i] = k.key, k.period.Format(time.DateOnly)
		granted[i], used[i], reqs[i], added[i] = v.granted, v.used, v.requests, v.grants
	}
	var after []struct {
		KeyID     string    `db:"key_id"`
		Period    time.Time `db:"period"`
		Allowance int64     `db:"allowance"`
		Used      int64     `db:"used"`
	}
	if err := tx.SelectContext(ctx, &after, upsertBalances,
		pq.Array(bk), pq.Array(bp), pq.Array(granted), pq.Array(used), pq.Array(reqs), pq.Array(added)); err != nil {
		return Result{}, fmt.Errorf("upsert balances: %w", err)
	}
	type bal struct{ allowance, used int64 }
	balances := make(map[bkey]bal, len(after))
	for _, a := range after {
		k := bkey{a.KeyID, a.Period.UTC()}
		v := deltas[k]
		if v == nil {
			continue
		}
		balances[k] = bal{a.Allowance, a.Used}
		res.Changes = append(res.Changes, Change{KeyID: a.KeyID, OwnerID: v.owner, Period: a.Period.UTC(),
			Granted: a.Allowance, UsedBefore: a.Used - v.used, Used: a.Used})
	}
	for _, g := range grants {
		b := balances[bkey{g.KeyID, g.Period}]
		res.Grants = append(res.Grants, Grant{Entry: g, Allowance: b.allowance, Used: b.used})
	}
	return res, nil
}
