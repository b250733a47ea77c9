// Package holds tracks the credits held by calls in flight at this gateway —
// admitted by Redis, not yet on the event stream — and answers, over NATS,
// the question a gateway asks when it rebuilds a key's balance after Redis
// lost it: "how much of this key is held by calls in flight at your place?"
// Asking every gateway before scanning the stream means a call is counted
// either as a hold or as an event, never neither.
package holds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// subjectPrefix is the prefix of the hold queries: gw.v1.holds.<keyID>.
const subjectPrefix = "gw.v1.holds."

// Ledger is this gateway's table of held credits: key → event ID → credits.
// Safe for concurrent use.
type Ledger struct {
	mu   sync.Mutex
	held map[string]map[string]int64
}

// NewLedger returns an empty table.
func NewLedger() *Ledger { return &Ledger{held: map[string]map[string]int64{}} }

// Hold records credits held for the call that will publish eventID.
func (l *Ledger) Hold(keyID, eventID string, credits int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.held[keyID]
	if m == nil {
		m = map[string]int64{}
		l.held[keyID] = m
	}
	m[eventID] = credits
}

// Release forgets a hold (its event is durable, or nothing was charged).
func (l *Ledger) Release(keyID, eventID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.held[keyID]; m != nil {
		delete(m, eventID)
		if len(m) == 0 {
			delete(l.held, keyID)
		}
	}
}

// Held returns the holds on a key here, by event ID.
func (l *Ledger) Held(keyID string) map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int64, len(l.held[keyID]))
	for id, c := range l.held[keyID] {
		out[id] = c
	}
	return out
}

// Serve answers hold queries from other gateways until the subscription is
// drained (on connection close).
func (l *Ledger) Serve(nc *nats.Conn, logger *slog.Logger) (*nats.Subscription, error) {
	sub, err := nc.Subscribe(subjectPrefix+"*", func(m *nats.Msg) {
		keyID := m.Subject[len(subjectPrefix):]
		b, err := json.Marshal(l.Held(keyID))
		if err == nil {
			err = m.Respond(b)
		}
		if err != nil {
			logger.Warn("answer hold query", "key_id", keyID, "err", err)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("holds: subscribe: %w", err)
	}
	return sub, nil
}

// Query asks every gateway for its holds on a key. Gateways answer within
// window; the sum of the answers is returned. Safe for concurrent use.
type Query struct {
	nc     *nats.Conn
	window time.Duration
}

// NewQuery asks over nc and collects answers for window.
func NewQuery(nc *nats.Conn, window time.Duration) *Query {
	return &Query{nc: nc, window: window}
}

// Held collects the holds of every gateway (this one included) by event
// ID, so that the caller can skip those whose events it finds on the stream.
func (q *Query) Held(ctx context.Context, keyID string) (map[string]int64, error) {
	if !q.nc.IsConnected() {
		return nil, errors.New("holds: NATS is not connected")
	}
	inbox := q.nc.NewRespInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := q.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, fmt.Errorf("holds: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := q.nc.PublishRequest(subjectPrefix+keyID, inbox, nil); err != nil {
		return nil, fmt.Errorf("holds: %w", err)
	}
	t := time.NewTimer(q.window)
	defer t.Stop()
	all := map[string]int64{}
	answers := 0
	for {
		select {
		case m := <-ch:
			var got map[string]int64
			if err := json.Unmarshal(m.Data, &got); err == nil {
				for id, c := range got {
					all[id] = c
				}
			}
			answers++
		case <-t.C:
			if answers == 0 {
				return nil, errors.New("holds: no gateway answered (not even this one)")
			}
			return all, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("holds: %w", ctx.Err())
		}
	}
}
