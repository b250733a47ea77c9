package quota

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jmoiron/sqlx"
)

// Spender sums the credits a key was charged in a period according to the
// event stream, which runs ahead of the ledger, and returns the IDs of the
// events it counted. Safe for concurrent use.
type Spender interface {
	Spent(ctx context.Context, keyID, period string) (int64, map[string]bool, error)
}

// PGLoader rebuilds key state from Postgres: api_keys (the gateway's own
// table) and credit_balances (read-only; the billing worker writes it).
// The balance is grant − max(ledger, stream): a rebuild never grants a
// credit that the ledger, or an event on its way to it, has spent. Holds of
// calls still at a backend on other gateways at the moment Redis lost its
// state are the only spend it cannot see (see docs/billing.md).
type PGLoader struct {
	db     *sqlx.DB
	spent  Spender
	holds  HoldCounter
	logger *slog.Logger
}

// HoldCounter collects the credits held by calls in flight on every
// gateway, by the ID of the event each will publish. Safe for concurrent use.
type HoldCounter interface {
	Held(ctx context.Context, keyID string) (map[string]int64, error)
}

// NewPGLoader builds a loader; spent and holds may be nil (then the ledger
// alone counts).
func NewPGLoader(db *sqlx.DB, spent Spender, holds HoldCounter, logger *slog.Logger) *PGLoader {
	return &PGLoader{db: db, spent: spent, holds: holds, logger: logger}
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
}

// Load implements Loader.
func (l *PGLoader) Load(ctx context.Context, keyID, period string) (State, int64, error) {
	start, err := time.Parse("2006-01", period)
	if err != nil {
		return State{}, 0, fmt.Errorf("load key: period %q: %w", period, err)
	}
	// Holds first, then the stream: a call is either still held when its
	// gateway answers, or its event is on the stream by the time it is
	// scanned; a call that is both is counted once, by its event ID.
	var held map[string]int64
	if l.holds != nil {
		if held, err = l.holds.Held(ctx, keyID); err != nil {
			l.logger.WarnContext(ctx, "holds in flight unknown while rebuilding a balance", "key_id", keyID, "err", err)
		}
	}
	var r keyRow
	err = l.db.GetContext(ctx, &r, `
		SELECT k.id, k.key_hash, k.prev_key_hash, k.prev_key_expires_at, k.active, k.deleted_at,
		       k.expires_at, k.rate_limit_per_minute, k.monthly_credits, k.updated_at,
		       COALESCE(b.used, 0) AS used
		FROM api_gateway.api_keys k
		LEFT JOIN api_gateway.credit_balances b ON b.key_id = k.id AND b.period = $2
		WHERE k.id = $1`, keyID, start)
	if errors.Is(err, sql.ErrNoRows) {
		return State{}, 0, ErrNoKey
	}
	if err != nil {
		return State{}, 0, fmt.Errorf("load key %s: %w", keyID, err)
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
	used := r.Used
	var onStream map[string]bool
	if l.spent != nil {
		s, ids, err := l.spent.Spent(ctx, keyID, period)
		if err != nil {
			// The ledger alone still never grants a credit it has spent.
			l.logger.WarnContext(ctx, "stream unavailable while rebuilding a balance; using the ledger alone", "key_id", keyID, "err", err)
		} else {
			onStream = ids
			if s > used {
				used = s
			}
		}
	}
	for id, c := range held {
		if !onStream[id] {
			used += c
		}
	}
	return st, r.MonthlyCredits - used, nil
}

func timePtr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	v := t.Time
	return &v
}
