package keys

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
)

// Store reads and writes api_gateway.api_keys. The gateway is the only
// writer of that table. Safe for concurrent use.
type Store struct {
	db *sqlx.DB
}

// NewStore returns a Store on db.
func NewStore(db *sqlx.DB) *Store {
	return &Store{db: db}
}

const keyColumns = `id, owner_id, name, key_prefix, key_hash, prev_key_hash, prev_key_expires_at, tier, active,
	rate_limit_per_minute, monthly_credits, expires_at, last_used_at, created_at, updated_at, deleted_at`

// Then runs inside a key's transaction once its row is written (before is
// nil for a create, after is the row as written): what must commit or roll
// back with the change, such as an outbox event. An error rolls it all back.
type Then func(ctx context.Context, tx *sqlx.Tx, before, after *Key) error

// Create inserts k. An empty k.ID is filled with NewID; CreatedAt and
// UpdatedAt are set from the database.
func (s *Store) Create(ctx context.Context, k *Key) error {
	return s.CreateThen(ctx, k, nil)
}

// CreateThen is Create, running then (if not nil) in its transaction.
func (s *Store) CreateThen(ctx context.Context, k *Key, then Then) error {
	if k.ID == "" {
		id, err := NewID()
		if err != nil {
			return err
		}
		k.ID = id
	}
	const q = `INSERT INTO api_gateway.api_keys (id, owner_id, name, key_prefix, key_hash, prev_key_hash,
		prev_key_expires_at, tier, active, rate_limit_per_minute, monthly_credits, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
		RETURNING created_at, updated_at`
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("insert api key %s: begin: %w", k.ID, err)
	}
	defer func() { _ = tx.Rollback() }()
	err = tx.QueryRowxContext(ctx, q, k.ID, k.OwnerID, k.Name, k.Prefix, k.Hash, nullBytes(k.PrevHash),
		k.PrevExpiresAt, k.Tier, k.Active, k.RateLimitPerMinute, k.MonthlyCredits, k.ExpiresAt).
		Scan(&k.CreatedAt, &k.UpdatedAt)
	if err != nil {
		return fmt.Errorf("insert api key %s: %w", k.ID, err)
	}
	if then != nil {
		if err := then(ctx, tx, nil, k); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("insert api key %s: commit: %w", k.ID, err)
	}
	return nil
}

// ByID returns the key with id, deleted or not (callers check DeletedAt).
// An id that is not a UUID is ErrNotFound.
func (s *Store) ByID(ctx context.Context, id string) (*Key, error) {
	if !ValidID(id) {
		return nil, ErrNotFound
	}
	var k Key
	err := s.db.GetContext(ctx, &k, `SELECT `+keyColumns+` FROM api_gateway.api_keys WHERE id = $1`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select api key %s: %w", id, err)
	}
	return &k, nil
}

// ByHash returns the key whose current or previous hash is hash, deleted or
// not. Whether it may be used is decided in Redis by the quota script, from
// the state this row is synced as.
func (s *Store) ByHash(ctx context.Context, hash []byte) (*Key, error) {
	if len(hash) == 0 {
		return nil, ErrNotFound
	}
	var k Key
	err := s.db.GetContext(ctx, &k, `SELECT `+keyColumns+` FROM api_gateway.api_keys
		WHERE key_hash = $1 OR prev_key_hash = $1 LIMIT 1`, hash)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select api key by hash: %w", err)
	}
	return &k, nil
}

// ListByOwner returns up to limit of owner's keys that are not deleted, in
// creation order, starting after cursor ("" for the first page). next is the
// cursor of the following page, "" on the last one. A cursor this package
// did not issue is ErrBadCursor.
func (s *Store) ListByOwner(ctx context.Context, owner string, limit int, cursor string) ([]*Key, string, error) {
	if limit <= 0 {
		return nil, "", fmt.Errorf("list api keys: limit %d must be positive", limit)
	}
	after, afterID, err := decodeCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	var ks []*Key
	if cursor == "" {
		err = s.db.SelectContext(ctx, &ks, `SELECT `+keyColumns+` FROM api_gateway.api_keys
			WHERE owner_id = $1 AND deleted_at IS NULL
			ORDER BY created_at, id LIMIT $2`, owner, limit+1)
	} else {
		err = s.db.SelectContext(ctx, &ks, `SELECT `+keyColumns+` FROM api_gateway.api_keys
			WHERE owner_id = $1 AND deleted_at IS NULL AND (created_at, id) > ($2, $3)
			ORDER BY created_at, id LIMIT $4`, owner, after, afterID, limit+1)
	}
	if err != nil {
		return nil, "", fmt.Errorf("list api keys: %w", err)
	}
	next := ""
	if len(ks) > limit {
		ks = ks[:limit]
		last := ks[limit-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	return ks, next, nil
}

// Update runs fn on the key with id while holding its row lock (SELECT ...
// FOR UPDATE in a transaction) and writes back what fn changed: name, tier,
// limits, active, expiry, hashes and prefix, deleted_at. If fn returns an
// error nothing is written and that error is returned. UpdatedAt strictly
// increases. The returned key is the committed row.
func (s *Store) Update(ctx context.Context, id string, fn func(*Key) error) (*Key, error) {
	return s.UpdateThen(ctx, id, fn, nil)
}

// UpdateThen is Update, running then (if not nil) in its transaction with
// the row as it was locked and as it was written.
func (s *Store) UpdateThen(ctx context.Context, id string, fn func(*Key) error, then Then) (*Key, error) {
	if !ValidID(id) {
		return nil, ErrNotFound
	}
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("update api key %s: begin: %w", id, err)
	}
	defer func() { _ = tx.Rollback() }()
	var k Key
	err = tx.GetContext(ctx, &k, `SELECT `+keyColumns+` FROM api_gateway.api_keys WHERE id = $1 FOR UPDATE`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("update api key %s: lock: %w", id, err)
	}
	before := k
	if err := fn(&k); err != nil {
		return nil, err
	}
	var out Key
	err = tx.GetContext(ctx, &out, `UPDATE api_gateway.api_keys SET
			name = $2, key_prefix = $3, key_hash = $4, prev_key_hash = $5, prev_key_expires_at = $6, tier = $7,
			active = $8, rate_limit_per_minute = $9, monthly_credits = $10, expires_at = $11, deleted_at = $12,
			updated_at = GREATEST(clock_timestamp(), updated_at + interval '1 microsecond')
		WHERE id = $1
		RETURNING `+keyColumns,
		id, k.Name, k.Prefix, k.Hash, nullBytes(k.PrevHash), k.PrevExpiresAt, k.Tier,
		k.Active, k.RateLimitPerMinute, k.MonthlyCredits, k.ExpiresAt, k.DeletedAt)
	if err != nil {
		return nil, fmt.Errorf("update api key %s: %w", id, err)
	}
	if then != nil {
		if err := then(ctx, tx, &before, &out); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("update api key %s: commit: %w", id, err)
	}
	return &out, nil
}

// SoftDelete marks the key deleted (idempotent: a deleted key keeps its
// first deletion time) and returns the committed row.
func (s *Store) SoftDelete(ctx context.Context, id string) (*Key, error) {
	return s.Update(ctx, id, func(k *Key) error {
		if k.DeletedAt == nil {
			now := time.Now().UTC()
			k.DeletedAt = &now
		}
		return nil
	})
}

// TouchLastUsed records when keys were last used, in one statement. A time
// older than the stored one is ignored, so late or reordered batches never
// move last_used_at back. IDs that are not UUIDs are skipped.
func (s *Store) TouchLastUsed(ctx context.Context, used map[string]time.Time) error {
	ids := make([]string, 0, len(used))
	ts := make([]string, 0, len(used))
	for id, t := range used {
		if ValidID(id) {
			ids = append(ids, id)
			ts = append(ts, t.UTC().Format(time.RFC3339Nano))
		}
	}
	if len(ids) == 0 {
		return nil
	}
	const q = `UPDATE api_gateway.api_keys AS k SET last_used_at = u.t
		FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, t)
		WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.t)`
	if _, err := s.db.ExecContext(ctx, q, pq.Array(ids), pq.Array(ts)); err != nil {
		return fmt.Errorf("touch last used of %d keys: %w", len(ids), err)
	}
	return nil
}

func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

func encodeCursor(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(t.UTC().Format(time.RFC3339Nano) + "|" + id))
}

func decodeCursor(c string) (time.Time, string, error) {
	if c == "" {
		return time.Time{}, "", nil
	}
	if len(c) > 128 {
		return time.Time{}, "", ErrBadCursor
	}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", ErrBadCursor
	}
	ts, id, ok := strings.Cut(string(raw), "|")
	if !ok || !ValidID(id) {
		return time.Time{}, "", ErrBadCursor
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return time.Time{}, "", ErrBadCursor
	}
	return t, id, nil
}

// ChangedAfter returns up to limit keys (deleted ones included) whose row
// changed after the position (t, id), in (updated_at, id) order: the last
// key of a page is the position of the next one, so a page that is full of
// keys changed at the same moment does not hide the keys behind it. An
// empty id starts at t itself.
func (s *Store) ChangedAfter(ctx context.Context, t time.Time, id string, limit int) ([]*Key, error) {
	var out []*Key
	var err error
	if id == "" {
		err = s.db.SelectContext(ctx, &out, `SELECT `+keyColumns+` FROM api_gateway.api_keys
			WHERE updated_at > $1 ORDER BY updated_at, id LIMIT $2`, t, limit)
	} else {
		err = s.db.SelectContext(ctx, &out, `SELECT `+keyColumns+` FROM api_gateway.api_keys
			WHERE (updated_at, id) > ($1, $2) ORDER BY updated_at, id LIMIT $3`, t, id, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("keys changed after %s: %w", t.Format(time.RFC3339Nano), err)
	}
	return out, nil
}
