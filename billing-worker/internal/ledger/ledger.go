// Package ledger owns the idempotent credit ledger (api_gateway.credit_ledger)
// and the per-key monthly balances derived from it (api_gateway.credit_balances).
//
// The ledger is keyed by event ID: recording an event that is already in it
// changes nothing, so redelivered or republished events are never charged twice.
// Balances are only ever updated from the rows a transaction actually inserted,
// in the same transaction, so used = Σ ledger credits, grants = Σ ledger
// granted and requests = the ledger's rows of calls per key and period. A
// credit grant is a row of its own (credits 0, granted > 0): the period's
// allowance is the monthly grant plus the grants. The gateway's news of a
// key refused for want of credits (endpoint credits.exhausted) is no call
// and no charge: it never becomes a ledger row, and Record returns it with
// the key's balance for the alerts.
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
	// Exhausted are the batch's refusals for want of credits, each with its
	// key's balance after the batch; they are in neither Inserted nor
	// Duplicates, and the same refusal may come again (a redelivery).
	Exhausted []Exhausted
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

// Exhausted is a key the gateway refused for want of credits, first in its
// period, with the key's balance of the period after the batch (the monthly
// grant and nothing used when the ledger has none yet).
type Exhausted struct {
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
// skipped; entries of endpoint credits.exhausted are not written and come
// back in Result.Exhausted. The caller commits tx; nothing is visible before
// that.
//
// Rows are written in a fixed order (ledger by event ID, balances by key and
// period), so concurrent workers lock in the same order and never deadlock
// each other on the same rows.
func Record(ctx context.Context, tx *sqlx.Tx, entries []Entry) (Result, error) {
	var exhausted []Entry
	sorted := make([]Entry, 0, len(entries))
	for _, e := range entries {
		if e.Endpoint == usagev1.ExhaustedEndpoint {
			exhausted = append(exhausted, e)
		} else {
			sorted = append(sorted, e)
		}
	}
	res, balances, err := record(ctx, tx, sorted)
	if err != nil || len(exhausted) == 0 {
		return res, err
	}
	res.Exhausted, err = exhaustedBalances(ctx, tx, exhausted, balances)
	return res, err
}

// balance is one key's balance of one period.
type balance struct {
	key    string
	period time.Time
}

type amounts struct{ allowance, used int64 }

// record writes the ledger rows of calls and grants and moves their
// balances; it returns the balances it moved, as they stand after.
func record(ctx context.Context, tx *sqlx.Tx, sorted []Entry) (Result, map[balance]amounts, error) {
	if len(sorted) == 0 {
		return Result{}, nil, nil
	}
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
		return Result{}, nil, fmt.Errorf("insert ledger rows: %w", err)
	}

	isNew := make(map[string]bool, len(inserted))
	for _, id := range inserted {
		isNew[id] = true
	}
	type bval struct {
		owner          string
		granted        int64
		grantedAt      time.Time
		used, requests int64
		grants         int64
	}
	deltas := make(map[balance]*bval)
	var res Result
	var grants []Entry
	for _, e := range sorted {
		if !isNew[e.EventID] {
			continue
		}
		delete(isNew, e.EventID) // the same event twice in one batch is inserted once
		res.Inserted++
		res.Credits += e.Credits
		k := balance{e.KeyID, e.Period}
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
	res.Duplicates = len(sorted) - res.Inserted
	if len(deltas) == 0 {
		return res, nil, nil
	}

	order := make([]balance, 0, len(deltas))
	for k := range deltas {
		order = append(order, k)
	}
	slices.SortFunc(order, func(a, b balance) int {
		return cmp.Or(cmp.Compare(a.key, b.key), a.period.Compare(b.period))
	})
	m := len(order)
	bk, bp := make([]string, m), make([]string, m)
	granted, used, reqs, added := make([]int64, m), make([]int64, m), make([]int64, m), make([]int64, m)
	for i, k := range order {
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
		return Result{}, nil, fmt.Errorf("upsert balances: %w", err)
	}
	balances := make(map[balance]amounts, len(after))
	for _, a := range after {
		k := balance{a.KeyID, a.Period.UTC()}
		v := deltas[k]
		if v == nil {
			continue
		}
		balances[k] = amounts{a.Allowance, a.Used}
		res.Changes = append(res.Changes, Change{KeyID: a.KeyID, OwnerID: v.owner, Period: a.Period.UTC(),
			Granted: a.Allowance, UsedBefore: a.Used - v.used, Used: a.Used})
	}
	for _, g := range grants {
		b := balances[balance{g.KeyID, g.Period}]
		res.Grants = append(res.Grants, Grant{Entry: g, Allowance: b.allowance, Used: b.used})
	}
	return res, balances, nil
}

const readBalances = `
SELECT b.key_id::text, b.period, b.granted + b.grants AS allowance, b.used
FROM api_gateway.credit_balances b
JOIN unnest($1::uuid[], $2::date[]) AS w (key_id, period) ON b.key_id = w.key_id AND b.period = w.period`

// exhaustedBalances gives each refusal its key's balance of the period: the
// one the batch just moved, or the one in credit_balances (read inside tx,
// so it is what this batch's alerts see).
func exhaustedBalances(ctx context.Context, tx *sqlx.Tx, entries []Entry, moved map[balance]amounts) ([]Exhausted, error) {
	var keys, periods []string
	for _, e := range entries {
		if _, ok := moved[balance{e.KeyID, e.Period}]; !ok {
			keys, periods = append(keys, e.KeyID), append(periods, e.Period.Format(time.DateOnly))
		}
	}
	found := map[balance]amounts{}
	if len(keys) > 0 {
		var rows []struct {
			KeyID     string    `db:"key_id"`
			Period    time.Time `db:"period"`
			Allowance int64     `db:"allowance"`
			Used      int64     `db:"used"`
		}
		if err := tx.SelectContext(ctx, &rows, readBalances, pq.Array(keys), pq.Array(periods)); err != nil {
			return nil, fmt.Errorf("read balances of exhausted keys: %w", err)
		}
		for _, r := range rows {
			found[balance{r.KeyID, r.Period.UTC()}] = amounts{r.Allowance, r.Used}
		}
	}
	out := make([]Exhausted, 0, len(entries))
	for _, e := range entries {
		k := balance{e.KeyID, e.Period}
		b, ok := moved[k]
		if !ok {
			b, ok = found[k]
		}
		if !ok {
			b = amounts{allowance: e.MonthlyCredits} // nothing in the ledger for the period yet
		}
		out = append(out, Exhausted{Entry: e, Allowance: b.allowance, Used: b.used})
	}
	return out, nil
}
