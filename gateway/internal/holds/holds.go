// Package holds tracks the credits held by calls in flight at this gateway —
// taken from the key's balance in Redis, not yet on the event stream — and
// answers, over NATS, the question a gateway asks when it rebuilds or checks
// a key's balance: "what do your calls in flight hold on these keys?"
//
// A hold is registered before the Redis script that takes it runs, as
// tentative, and confirmed or dropped when the script answers. A query waits
// for the tentative holds of the keys it asks about to settle (one Redis round
// trip), so a call whose script ran on the state Redis then lost is counted,
// and one whose script found no state is not. Gateways announce themselves
// (presence.go), so a query knows whose answers to wait for and returns as
// soon as all of them are in.
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

// querySubject is the subject of hold queries; the body is a queryBody.
const querySubject = "gw.v2.holds"

// Held is a set of holds: key ID → event ID → credits.
type Held map[string]map[string]int64

type hold struct {
	credits   int64
	tentative bool          // the script has not answered yet
	settled   chan struct{} // closed when a tentative hold settles; made by a waiting query
}

// Ledger is this gateway's table of held credits. Safe for concurrent use.
type Ledger struct {
	mu   sync.Mutex
	held map[string]map[string]hold
	// Spooled, if set, reports the bytes of usage waiting in the local spool:
	// events that are durable but on no stream yet. Answers carry it so that
	// a reader knows its view of the stream is short of them.
	Spooled func() int64
}

// NewLedger returns an empty table.
func NewLedger() *Ledger { return &Ledger{held: map[string]map[string]hold{}} }

// Begin records a tentative hold of credits for the call that will publish
// eventID; call it before the script that takes the credits runs.
func (l *Ledger) Begin(keyID, eventID string, credits int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.held[keyID]
	if m == nil {
		m = map[string]hold{}
		l.held[keyID] = m
	}
	m[eventID] = hold{credits: credits, tentative: true}
}

// End settles a tentative hold once its script answered: taken keeps it
// (until Release), otherwise it is forgotten.
func (l *Ledger) End(keyID, eventID string, taken bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.held[keyID]
	h, ok := m[eventID]
	if !ok {
		return
	}
	if h.settled != nil {
		close(h.settled)
	}
	if !taken {
		l.deleteLocked(m, keyID, eventID)
		return
	}
	m[eventID] = hold{credits: h.credits}
}

// Settle changes what a confirmed hold counts: the call's charge, once the
// backend answered and the balance was adjusted to it.
func (l *Ledger) Settle(keyID, eventID string, credits int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h, ok := l.held[keyID][eventID]; ok && !h.tentative {
		l.held[keyID][eventID] = hold{credits: credits}
	}
}

// Release forgets a hold (its event is durable, or nothing was charged).
func (l *Ledger) Release(keyID, eventID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.held[keyID]; m != nil {
		if h, ok := m[eventID]; ok && h.settled != nil {
			close(h.settled)
		}
		l.deleteLocked(m, keyID, eventID)
	}
}

func (l *Ledger) deleteLocked(m map[string]hold, keyID, eventID string) {
	delete(m, eventID)
	if len(m) == 0 {
		delete(l.held, keyID)
	}
}

// Snapshot returns the holds on the keys (every key when keyIDs is nil)
// that exist when it is called, after waiting up to settle for those of them
// that are tentative to settle. Holds begun later are left out: their
// scripts ran after the question was asked, so not on any state the asker
// lost, and an asker checking a balance sees them change it. A hold still
// tentative at the end is reported: counting a call that may not have taken
// its credits errs on the side of granting less.
func (l *Ledger) Snapshot(ctx context.Context, keyIDs []string, settle time.Duration) Held {
	type ref struct{ key, event string }
	var asked []ref
	var wait []chan struct{}
	l.mu.Lock()
	l.eachLocked(keyIDs, func(keyID string, m map[string]hold) {
		for id, h := range m {
			asked = append(asked, ref{keyID, id})
			if h.tentative {
				if h.settled == nil {
					h.settled = make(chan struct{})
					m[id] = h
				}
				wait = append(wait, h.settled)
			}
		}
	})
	l.mu.Unlock()
	if len(wait) > 0 {
		t := time.NewTimer(settle)
	waiting:
		for _, ch := range wait {
			select {
			case <-ch:
			case <-t.C:
				break waiting
			case <-ctx.Done():
				break waiting
			}
		}
		t.Stop()
	}
	out := Held{}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range asked {
		h, ok := l.held[r.key][r.event]
		if !ok {
			continue // released: its event is durable, or it took nothing
		}
		m := out[r.key]
		if m == nil {
			m = map[string]int64{}
			out[r.key] = m
		}
		m[r.event] = h.credits
	}
	return out
}

func (l *Ledger) eachLocked(keyIDs []string, f func(string, map[string]hold)) {
	if keyIDs == nil {
		for k, m := range l.held {
			f(k, m)
		}
		return
	}
	for _, k := range keyIDs {
		if m := l.held[k]; m != nil {
			f(k, m)
		}
	}
}

type queryBody struct {
	// Keys asked about; none means every key.
	Keys []string `json:"keys,omitempty"`
}

type answerBody struct {
	Gateway string `json:"gateway"`
	Holds   Held   `json:"holds"`
	Spooled int64  `json:"spooled,omitempty"`
}

// Serve answers hold queries from other gateways (and this one) as gateway
// id until the subscription is drained (on connection close) or ctx ends.
// Each answer waits up to settle for tentative holds.
func (l *Ledger) Serve(ctx context.Context, nc *nats.Conn, id string, settle time.Duration, logger *slog.Logger) (*nats.Subscription, error) {
	sub, err := nc.Subscribe(querySubject, func(m *nats.Msg) {
		// Answer off the subscription's goroutine: one query waiting for
		// tentative holds must not delay the others.
		go func() {
			var q queryBody
			if len(m.Data) > 0 {
				if err := json.Unmarshal(m.Data, &q); err != nil {
					logger.Warn("undecodable hold query", "err", err)
					return
				}
			}
			keys := q.Keys
			if len(keys) == 0 {
				keys = nil
			}
			ctx, cancel := context.WithTimeout(ctx, settle)
			defer cancel()
			a := answerBody{Gateway: id, Holds: l.Snapshot(ctx, keys, settle)}
			if l.Spooled != nil {
				a.Spooled = l.Spooled()
			}
			b, err := json.Marshal(a)
			if err == nil {
				err = m.Respond(b)
			}
			if err != nil {
				logger.Warn("answer hold query", "err", err)
			}
		}()
	})
	if err != nil {
		return nil, fmt.Errorf("holds: subscribe: %w", err)
	}
	return sub, nil
}

// ErrIncomplete: some gateways that announced themselves did not answer in
// time; the holds returned with it are those of the gateways that did.
var ErrIncomplete = errors.New("holds: not every gateway answered")

// Answer is what a query collected.
type Answer struct {
	Holds Held
	// Spooled is the bytes of usage in the answering gateways' spools: durable
	// events that no stream reader can see yet.
	Spooled int64
}

// Query asks every live gateway for its holds. Safe for concurrent use.
type Query struct {
	nc       *nats.Conn
	presence *Presence
	deadline time.Duration
}

// NewQuery asks over nc the gateways presence knows of, and waits at most
// deadline for their answers.
func NewQuery(nc *nats.Conn, presence *Presence, deadline time.Duration) *Query {
	return &Query{nc: nc, presence: presence, deadline: deadline}
}

// Held collects the holds on the keys (every key when keyIDs is nil) of
// every live gateway, by event ID, so that the caller can skip those whose
// events it finds on the stream or in the ledger. It returns as soon as each
// gateway the presence knows has answered; at the deadline it returns what
// came with ErrIncomplete.
func (q *Query) Held(ctx context.Context, keyIDs []string) (Answer, error) {
	if !q.nc.IsConnected() {
		return Answer{}, errors.New("holds: NATS is not connected")
	}
	body, err := json.Marshal(queryBody{Keys: keyIDs})
	if err != nil {
		return Answer{}, fmt.Errorf("holds: %w", err)
	}
	inbox := q.nc.NewRespInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := q.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return Answer{}, fmt.Errorf("holds: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	want := q.presence.Live()
	if err := q.nc.PublishRequest(querySubject, inbox, body); err != nil {
		return Answer{}, fmt.Errorf("holds: %w", err)
	}
	t := time.NewTimer(q.deadline)
	defer t.Stop()
	a := Answer{Holds: Held{}}
	answered := map[string]bool{}
	for {
		if len(want) > 0 && allAnswered(want, answered) {
			return a, nil
		}
		select {
		case m := <-ch:
			var got answerBody
			if err := json.Unmarshal(m.Data, &got); err != nil || answered[got.Gateway] {
				continue
			}
			answered[got.Gateway] = true
			a.Spooled += got.Spooled
			for k, evs := range got.Holds {
				dst := a.Holds[k]
				if dst == nil {
					dst = map[string]int64{}
					a.Holds[k] = dst
				}
				for id, c := range evs {
					dst[id] = c
				}
			}
		case <-t.C:
			var missing []string
			for _, id := range want {
				if !answered[id] {
					missing = append(missing, id)
				}
			}
			if len(answered) == 0 {
				return Answer{}, errors.New("holds: no gateway answered")
			}
			if len(missing) > 0 {
				return a, fmt.Errorf("%w: missing %v", ErrIncomplete, missing)
			}
			return a, nil
		case <-ctx.Done():
			return Answer{}, fmt.Errorf("holds: %w", ctx.Err())
		}
	}
}

func allAnswered(want []string, answered map[string]bool) bool {
	for _, id := range want {
		if !answered[id] {
			return false
		}
	}
	return true
}
