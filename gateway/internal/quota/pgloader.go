package quota

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/mana/apigw/gateway/internal/backlog"
	"github.com/mana/apigw/gateway/internal/holds"
)

// Backlog returns the events on the usage stream that the billing worker
// has not acknowledged yet, per key (every key for nil): key → event ID →
// credits, read up to the end of the stream as of the call. Safe for
// concurrent use.
type Backlog interface {
	Pending(ctx context.Context, keyIDs []string, period string) (map[string]map[string]int64, error)
}

// HoldCounter collects the credits held by calls in flight on every live
// gateway (every key for nil), by the ID of the event each will publish.
// It returns an error wrapping holds.ErrIncomplete, with what it got, when a
// gateway did not answer. Safe for concurrent use.
type HoldCounter interface {
	Held(ctx context.Context, keyIDs []string) (holds.Answer, error)
}

// PGLoader rebuilds key state from Postgres: api_keys (the gateway's own
// table) and the billing worker's ledger (read-only), plus what the ledger
// does not have yet — the events on the stream the billing worker has not
// applied, and the holds of calls in flight — each counted once by event ID.
//
// Loads of different keys that arrive while one is being computed are
// computed together in the next (one holds query, one backlog read, one
// Postgres snapshot for all of them), the way the usage publisher
// group-commits events: a key joins a batch that has not started, so every
// part of its balance is still read after its load began.
type PGLoader struct {
	db      *sqlx.DB
	backlog Backlog
	holds   HoldCounter
	logger  *slog.Logger

	mu      sync.Mutex // guards open, running
	open    *loadBatch // not started; joined by new loads
	running bool
}

// loadBatch is one computation shared by the loads of several keys.
type loadBatch struct {
	period string
	keys   []string
	done   chan struct{}
	rows   map[string]keyRow
	spends map[string]Spend
	err    error
}

// NewPGLoader builds a loader; backlog and holds may be nil (then the ledger
// alone counts).
func NewPGLoader(db *sqlx.DB, backlog Backlog, holds HoldCounter, logger *slog.Logger) *PGLoader {
	return &PGLoader{db: db, backlog: backlog, holds: holds, logger: logger}
}

// batchTimeout bounds one shared computation.
const batchTimeout = 5 * time.Second

// join adds the key to the open batch of the period (or computes it alone
// at a month's turn, when the open batch is of the other month) and waits
// for its result.
func (l *PGLoader) join(ctx context.Context, keyID, period string) (keyRow, Spend, bool, error) {
	l.mu.Lock()
	b := l.open
	if b != nil && b.period != period {
		l.mu.Unlock()
		rows, spends, err := l.spend(ctx, []string{keyID}, period)
		if err != nil || len(rows) == 0 {
			return keyRow{}, Spend{}, false, err
		}
		return rows[0], spends[keyID], true, nil
	}
	if b == nil {
		b = &loadBatch{period: period, done: make(chan struct{})}
		l.open = b
	}
	b.keys = append(b.keys, keyID)
	l.startLocked(ctx)
	l.mu.Unlock()
	select {
	case <-b.done:
	case <-ctx.Done():
		return keyRow{}, Spend{}, false, fmt.Errorf("load key %s: %w", keyID, ctx.Err())
	}
	if b.err != nil {
		return keyRow{}, Spend{}, false, b.err
	}
	r, ok := b.rows[keyID]
	return r, b.spends[keyID], ok, nil
}

// startLocked starts the open batch when none is running. l.mu is held.
func (l *PGLoader) startLocked(ctx context.Context) {
	if l.running || l.open == nil {
		return
	}
	b := l.open
	l.open, l.running = nil, true
	go func() {
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), batchTimeout)
		defer cancel()
		rows, spends, err := l.spend(bctx, b.keys, b.period)
		b.rows, b.spends, b.err = make(map[string]keyRow, len(rows)), spends, err
		for _, r := range rows {
			b.rows[r.ID] = r
		}
		close(b.done)
		l.mu.Lock()
		l.running = false
		l.startLocked(ctx)
		l.mu.Unlock()
	}()
}

type keyRow struct {
	ID                 string       `db:"id"`
	Hash               []byte       `db:"key_hash"`
	PrevHash           []byte       `db:"prev_key_hash"`
	PrevExpiresAt      sql.NullTime `db:"prev_key_expires_at"`
	Active             bool         `db:"active"`
	Deleted            sql.NullTime `db:"deleted_at"`
	ExpiresAt          sql.NullTime `db:"expires_at"`
	RateLimitPerMinute int          `db:"rate_limit_per_minute"`
	MonthlyCredits     int64        `db:"monthly_credits"`
	UpdatedAt          time.Time    `db:"updated_at"`
	Used               int64        `db:"used"`
	Grants             int64        `db:"grants"`
}

// Spend is what a key's balance of a period is made of, at one moment.
type Spend struct {
	Grant   int64 // the key's monthly grant
	Granted int64 // what credit grants in the ledger added to the period
	Ledger  int64 // charged in the ledger
	// Pending and Held count a credit grant not in the ledger yet as minus
	// its credits: what it adds is not taken.
	Pending int64 // events on the stream the ledger does not have yet
	Held    int64 // holds of calls in flight, neither on the stream nor in the ledger
	// Exact: every part was known — every live gateway answered, the stream
	// was read to its end, and no gateway had events waiting in its spool.
	// Otherwise the balance may be too high by what could not be seen.
	Exact bool
}

// Balance is grant + granted − ledger − pending − held.
func (s Spend) Balance() int64 { return s.Grant + s.Granted - s.Ledger - s.Pending - s.Held }

// Load implements Loader.
func (l *PGLoader) Load(ctx context.Context, keyID, period string) (State, int64, error) {
	r, sp, ok, err := l.join(ctx, keyID, period)
	if err != nil {
		return State{}, 0, err
	}
	if !ok {
		return State{}, 0, ErrNoKey
	}
	st := State{
		KeyID:              r.ID,
		Version:            r.UpdatedAt.UnixMicro(),
		Hash:               r.Hash,
		PrevHash:           r.PrevHash,
		PrevExpiresAt:      timePtr(r.PrevExpiresAt),
		Active:             r.Active,
		Deleted:            r.Deleted.Valid,
		ExpiresAt:          timePtr(r.ExpiresAt),
		RateLimitPerMinute: r.RateLimitPerMinute,
		MonthlyCredits:     r.MonthlyCredits,
	}
	return st, sp.Balance(), nil
}

// Spends returns the spend of each key of the period that exists.
func (l *PGLoader) Spends(ctx context.Context, keyIDs []string, period string) (map[string]Spend, error) {
	_, spends, err := l.spend(ctx, keyIDs, period)
	return spends, err
}

// manyKeys: above this many keys, the holds of every key are asked for (one
// small answer from each gateway) rather than listing the keys; the backlog
// is local and always asked for the keys themselves.
const manyKeys = 64

// spend reads, in this order, the holds in flight, the backlog and then the
// ledger, and counts each call once by event ID. The order is what makes it
// exact: a call not held when its gateway answered was on the stream by
// then (a hold is released once its event is acknowledged), so the backlog
// read after it sees it unless the billing worker applied it — and then the
// ledger, read last, has it.
func (l *PGLoader) spend(ctx context.Context, keyIDs []string, period string) ([]keyRow, map[string]Spend, error) {
	start, err := time.Parse("2006-01", period)
	if err != nil {
		return nil, nil, fmt.Errorf("load key: period %q: %w", period, err)
	}
	ask := keyIDs
	if len(ask) > manyKeys {
		ask = nil
	}
	exact := true
	var held holds.Held
	if l.holds == nil {
		exact = false
	} else {
		a, err := l.holds.Held(ctx, ask)
		switch {
		case err == nil:
			held = a.Holds
		case errors.Is(err, holds.ErrIncomplete):
			held, exact = a.Holds, false
			l.logger.WarnContext(ctx, "holds of some gateways unknown while computing balances", "keys", len(keyIDs), "err", err)
		default:
			exact = false
			l.logger.WarnContext(ctx, "holds in flight unknown while computing balances", "keys", len(keyIDs), "err", err)
		}
		if a.Spooled > 0 {
			exact = false
		}
	}
	var pending map[string]map[string]int64
	if l.backlog == nil {
		exact = false
	} else if pending, err = l.backlog.Pending(ctx, keyIDs, period); err != nil {
		// What was read is used (a part of the backlog, or none); the
		// balance may then be too high by what could not be seen.
		exact = false
		if !errors.Is(err, backlog.ErrIncomplete) { // that one is logged by the backlog once
			l.logger.WarnContext(ctx, "stream backlog unknown while computing balances; using the ledger", "keys", len(keyIDs), "err", err)
		}
	}
	var ids []string
	for _, k := range keyIDs {
		for id := range pending[k] {
			ids = append(ids, id)
		}
		for id := range held[k] {
			ids = append(ids, id)
		}
	}
	// One snapshot for the balances and the ledger lookup, so an event the
	// billing worker commits meanwhile is counted in both or in neither.
	tx, err := l.db.BeginTxx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return nil, nil, fmt.Errorf("load keys: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	var rows []keyRow
	err = tx.SelectContext(ctx, &rows, `
		SELECT k.id, k.key_hash, k.prev_key_hash, k.prev_key_expires_at, k.active, k.deleted_at,
		       k.expires_at, k.rate_limit_per_minute, k.monthly_credits, k.updated_at,
		       COALESCE(b.used, 0) AS used, COALESCE(b.grants, 0) AS grants
		FROM api_gateway.api_keys k
		LEFT JOIN api_gateway.credit_balances b ON b.key_id = k.id AND b.period = $2
		WHERE k.id = ANY($1::uuid[])`, pq.Array(keyIDs), start)
	if err != nil {
		return nil, nil, fmt.Errorf("load keys: %w", err)
	}
	inLedger := map[string]bool{}
	if len(ids) > 0 {
		var found []string
		if err := tx.SelectContext(ctx, &found, `SELECT event_id FROM api_gateway.credit_ledger WHERE event_id = ANY($1)`, pq.Array(ids)); err != nil {
			return nil, nil, fmt.Errorf("load keys: ledger: %w", err)
		}
		for _, id := range found {
			inLedger[id] = true
		}
	}
	spends := make(map[string]Spend, len(rows))
	for _, r := range rows {
		s := Spend{Grant: r.MonthlyCredits, Granted: r.Grants, Ledger: r.Used, Exact: exact}
		for id, c := range pending[r.ID] {
			if !inLedger[id] {
				s.Pending += c
			}
		}
		for id, c := range held[r.ID] {
			if _, onStream := pending[r.ID][id]; !onStream && !inLedger[id] {
				s.Held += c
			}
		}
		spends[r.ID] = s
	}
	return rows, spends, nil
}

// ActiveKeys returns the keys charged in the period within the last window
// (by the ledger's balances), and those with events not applied yet.
func (l *PGLoader) ActiveKeys(ctx context.Context, period string, window time.Duration) ([]string, error) {
	start, err := time.Parse("2006-01", period)
	if err != nil {
		return nil, fmt.Errorf("active keys: period %q: %w", period, err)
	}
	var ids []string
	if err := l.db.SelectContext(ctx, &ids, `
		SELECT key_id::text FROM api_gateway.credit_balances
		WHERE period = $1 AND updated_at > now() - make_interval(secs => $2)`, start, window.Seconds()); err != nil {
		return nil, fmt.Errorf("active keys: %w", err)
	}
	if l.backlog != nil {
		seen := make(map[string]bool, len(ids))
		for _, id := range ids {
			seen[id] = true
		}
		pending, err := l.backlog.Pending(ctx, nil, period)
		if err != nil && !errors.Is(err, backlog.ErrIncomplete) {
			return nil, fmt.Errorf("active keys: %w", err)
		}
		for id := range pending {
			if !seen[id] {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

func timePtr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	v := t.Time
	return &v
}
