package consumer

import (
	"context"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Event is a decoded message and where it sits in the stream.
type Event struct {
	*usagev1.UsageEvent
	StreamSeq    uint64
	NumDelivered uint64
}

// DeadLetter is a message that can never be processed, kept with its reason.
type DeadLetter struct {
	Consumer  string // the durable name
	StreamSeq uint64
	Subject   string
	MsgID     string // the Nats-Msg-Id header; empty when the publisher set none
	Payload   []byte // never nil
	Reason    string
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

// Tx is one batch's transaction, used by one goroutine: nothing it writes may
// be seen by others before Commit, nor remain after Rollback. The consumer
// acknowledges a batch only after Commit returned nil.
//
// An error the store returns for data it can never take (one carrying a
// SQLSTATE of class 22, data exception, or 23, integrity violation, through a
// SQLState() string method, as lib/pq's and pgx's errors do) makes the
// consumer retry the batch message by message and dead-letter the message
// that is rejected alone; any other error is taken as transient and the whole
// batch is redelivered.
type Tx interface {
	// Apply applies the events. It must be idempotent per event ID: an event
	// applied before changes nothing and counts as a duplicate.
	Apply(ctx context.Context, events []Event) (Applied, error)
	// DeadLetter keeps d; it must be idempotent per (consumer, stream sequence).
	DeadLetter(ctx context.Context, d DeadLetter) error
	Commit() error
	Rollback() error
}

// CheckFunc rejects an event that decodes and validates but that this consumer
// can still never process; its error becomes the dead letter's reason.
type CheckFunc func(*usagev1.UsageEvent) error
