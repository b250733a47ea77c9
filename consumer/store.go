package consumer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/google/uuid"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Event is a decoded event and where it sits in the stream.
type Event struct {
	*usagev1.UsageEvent
	StreamSeq    uint64 // of the message holding it
	NumDelivered uint64 // of that message
	// Index is the event's position in its UsageBatch; -1 for a message of
	// the older one-event form.
	Index int
}

// DeadLetter is a message, or one event of a batch, that can never be
// processed, kept with its reason.
type DeadLetter struct {
	Consumer  string // the durable name
	StreamSeq uint64
	// EventIndex is the position of the dead event in its batch; -1 when
	// the whole message is the dead letter (undecodable, or the older
	// one-event form).
	EventIndex int
	EventID    string // the dead event's ID when known; may be empty
	Subject    string
	MsgID      string // the Nats-Msg-Id header (a batch's ID); empty when the publisher set none
	// Payload is the whole message's bytes, or the dead event alone
	// (a marshalled UsageEvent) for an event of a batch. Never nil.
	Payload []byte
	Reason  string
}

// Applied is what Tx.Apply changed.
type Applied struct {
	// Inserted events were new; Duplicates had been applied before.
	Inserted, Duplicates int
}

// Store opens the transactions batches are committed in. Begin is called by
// one goroutine at a time per Consumer; several processes may use stores on
// the same tables at once.
type Store interface {
	Begin(ctx context.Context) (Tx, error)
}

// Tx is one transaction over the events of a set of fetched messages, used
// by one goroutine: nothing it writes may be seen by others before Commit,
// nor remain after Rollback. The consumer calls Apply at most once per Tx
// and acknowledges the messages only after Commit returned nil.
//
// An error the store returns for data it can never take (one carrying a
// SQLSTATE of class 22, data exception, or 23, integrity violation, through a
// SQLState() string method, as lib/pq's and pgx's errors do) makes the
// consumer narrow the set down — message by message, then event by event —
// and dead-letter the event that is rejected alone; any other error, and any
// error wrapping ErrTransient, is taken as transient and the whole set is
// redelivered.
type Tx interface {
	// Apply applies the events. It must be idempotent per event ID: an event
	// applied before changes nothing and counts as a duplicate.
	Apply(ctx context.Context, events []Event) (Applied, error)
	// DeadLetter keeps d; it must be idempotent per (consumer, stream
	// sequence, event index).
	DeadLetter(ctx context.Context, d DeadLetter) error
	Commit() error
	Rollback() error
}

// ErrTransient marks a store error that must be retried, never
// dead-lettered, whatever SQLSTATE it carries: e.g. the catalog's unique
// violation of two sessions creating the same partition at once.
var ErrTransient = errors.New("transient")

// CheckFunc rejects an event that decodes and validates but that this consumer
// can still never process; its error becomes the dead letter's reason.
type CheckFunc func(*usagev1.UsageEvent) error

// CheckKeyID rejects an event whose key ID is not a UUID: every store of
// the stream keys its rows by the key's UUID, so such an event can never be
// applied. The consumer applies it to every event before Config.Check; a
// replay of the stream applies it too, so that it skips what the live
// consumers dead-letter.
func CheckKeyID(ev *usagev1.UsageEvent) error {
	if _, err := uuid.Parse(ev.GetKeyId()); err != nil {
		return fmt.Errorf("%w: key_id is not a UUID", usagev1.ErrInvalid)
	}
	return nil
}

// Execer runs a statement: a *sql.Tx, a *sqlx.Tx.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// InsertDeadLetter keeps d in api_gateway.dead_letters within tx, once per
// (consumer, stream sequence, event index): the DeadLetter of every Postgres
// store's Tx.
func InsertDeadLetter(ctx context.Context, tx Execer, d DeadLetter) error {
	_, err := tx.ExecContext(ctx, `
INSERT INTO api_gateway.dead_letters (consumer, stream_seq, event_index, event_id, subject, msg_id, payload, reason)
VALUES ($1, $2, $3, NULLIF($4, ''), $5, NULLIF($6, ''), $7, $8)
ON CONFLICT (consumer, stream_seq, event_index) DO NOTHING`,
		d.Consumer, int64(d.StreamSeq), d.EventIndex, d.EventID, d.Subject, d.MsgID, d.Payload, d.Reason)
	return err // the consumer says what it was doing
}
