// Package audit owns the audit trail of the management API
// (api_gateway.audit_log): one append-only row per change, written in the
// change's own transaction, each carrying the SHA-256 of the row before it,
// so that a removed, inserted or edited row is detectable by Verify.
package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jmoiron/sqlx"
)

// Entry is one change: who (Actor, the JWT subject) did what (Action, e.g.
// "api_key.updated") to which target, for which owner, in which request,
// with the fields before and after (nil for none). Never put a secret in
// Before or After.
type Entry struct {
	At         time.Time
	Actor      string
	OwnerID    string
	RequestID  string
	Action     string
	TargetType string
	TargetID   string
	Before     any
	After      any
}

// Row is a stored entry.
type Row struct {
	Seq        int64           `db:"seq" json:"seq"`
	At         time.Time       `db:"at" json:"at"`
	Actor      string          `db:"actor" json:"actor"`
	OwnerID    string          `db:"owner_id" json:"ownerId"`
	RequestID  string          `db:"request_id" json:"requestId"`
	Action     string          `db:"action" json:"action"`
	TargetType string          `db:"target_type" json:"targetType"`
	TargetID   string          `db:"target_id" json:"targetId"`
	Before     json.RawMessage `db:"before" json:"before"`
	After      json.RawMessage `db:"after" json:"after"`
	PrevHash   []byte          `db:"prev_hash" json:"-"`
	Hash       []byte          `db:"hash" json:"-"`
}

// chainLock serialises appends, so each row's prev_hash is the hash of the
// row committed before it.
const chainLock = 0x61756469745f6c67 // "audit_lg"

// Hash is the row's link: SHA-256 over the previous hash and every field,
// each length-prefixed so no two rows can encode alike. before and after are
// hashed as PostgreSQL's jsonb text, which is what is stored and read back.
func Hash(prev []byte, r Row) []byte {
	h := sha256.New()
	field := func(b []byte) {
		h.Write([]byte(strconv.Itoa(len(b)) + ":"))
		h.Write(b)
	}
	field(prev)
	for _, s := range []string{r.At.UTC().Format(time.RFC3339Nano), r.Actor, r.OwnerID, r.RequestID, r.Action, r.TargetType, r.TargetID} {
		field([]byte(s))
	}
	field(r.Before)
	field(r.After)
	return h.Sum(nil)
}

// Record appends e inside tx (the change's transaction).
func Record(ctx context.Context, tx *sqlx.Tx, e Entry) error {
	r := Row{At: e.At.UTC().Truncate(time.Microsecond), Actor: e.Actor, OwnerID: e.OwnerID, RequestID: e.RequestID,
		Action: e.Action, TargetType: e.TargetType, TargetID: e.TargetID}
	var err error
	if r.Before, err = normalise(ctx, tx, e.Before); err != nil {
		return err
	}
	if r.After, err = normalise(ctx, tx, e.After); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(chainLock)); err != nil {
		return fmt.Errorf("audit: lock the chain: %w", err)
	}
	var prev []byte
	err = tx.GetContext(ctx, &prev, `SELECT hash FROM api_gateway.audit_log ORDER BY seq DESC LIMIT 1`)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("audit: read the chain's end: %w", err)
	}
	if prev == nil {
		prev = []byte{}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO api_gateway.audit_log
		(at, actor, owner_id, request_id, action, target_type, target_id, before, after, prev_hash, hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		r.At, r.Actor, r.OwnerID, r.RequestID, r.Action, r.TargetType, r.TargetID, nullJSON(r.Before), nullJSON(r.After),
		prev, Hash(prev, r)); err != nil {
		return fmt.Errorf("audit: append: %w", err)
	}
	return nil
}

// normalise encodes v as PostgreSQL's jsonb text of it (nil stays nil), so
// the hash covers exactly what is stored.
func normalise(ctx context.Context, tx *sqlx.Tx, v any) (json.RawMessage, error) {
	if v == nil {
		return nil, nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("audit: encode: %w", err)
	}
	var out string
	if err := tx.GetContext(ctx, &out, `SELECT $1::jsonb::text`, string(raw)); err != nil {
		return nil, fmt.Errorf("audit: normalise: %w", err)
	}
	return json.RawMessage(out), nil
}

func nullJSON(b json.RawMessage) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// ErrBroken is returned by Verify when the chain does not hold.
var ErrBroken = errors.New("audit chain broken")

// Verify walks the whole log in order and checks every link. It returns
// how many rows it checked.
func Verify(ctx context.Context, db *sqlx.DB) (int64, error) {
	rows, err := db.QueryxContext(ctx, `SELECT seq, at, actor, owner_id, request_id, action, target_type, target_id,
		before::text AS before, after::text AS after, prev_hash, hash FROM api_gateway.audit_log ORDER BY seq`)
	if err != nil {
		return 0, fmt.Errorf("audit: read: %w", err)
	}
	defer rows.Close()
	prev := []byte{}
	var n, lastSeq int64
	for rows.Next() {
		var r struct {
			Row
			Before, After *string
		}
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.OwnerID, &r.RequestID, &r.Action, &r.TargetType, &r.TargetID,
			&r.Before, &r.After, &r.PrevHash, &r.Hash); err != nil {
			return n, fmt.Errorf("audit: read: %w", err)
		}
		if r.Before != nil {
			r.Row.Before = json.RawMessage(*r.Before)
		}
		if r.After != nil {
			r.Row.After = json.RawMessage(*r.After)
		}
		if !bytes.Equal(r.PrevHash, prev) {
			return n, fmt.Errorf("%w at seq %d (after seq %d): it does not follow the row before it (a row was removed or inserted)", ErrBroken, r.Seq, lastSeq)
		}
		if !bytes.Equal(Hash(prev, r.Row), r.Hash) {
			return n, fmt.Errorf("%w at seq %d: its fields do not match its hash (the row was edited)", ErrBroken, r.Seq)
		}
		prev, lastSeq = r.Hash, r.Seq
		n++
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("audit: read: %w", err)
	}
	return n, nil
}
