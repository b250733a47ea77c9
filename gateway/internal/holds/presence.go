package holds

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// presenceSubject carries the gateways' heartbeats (a presenceBody).
const presenceSubject = "gw.v1.presence"

type presenceBody struct {
	Gateway string `json:"gateway"`
	Leaving bool   `json:"leaving,omitempty"`
}

// Presence knows which gateways are alive: each announces itself on NATS
// every interval, and one not heard of for three intervals is gone. A hold
// query waits for the answers of exactly these. Safe for concurrent use.
type Presence struct {
	nc       *nats.Conn
	self     string
	interval time.Duration
	logger   *slog.Logger
	sub      *nats.Subscription

	mu   sync.Mutex
	seen map[string]time.Time
}

// NewPresence listens to the heartbeats on nc. self is this gateway's ID,
// announced by Run; empty for a process that only asks (the reconcile command).
func NewPresence(nc *nats.Conn, self string, interval time.Duration, logger *slog.Logger) (*Presence, error) {
	p := &Presence{nc: nc, self: self, interval: interval, logger: logger, seen: map[string]time.Time{}}
	sub, err := nc.Subscribe(presenceSubject, func(m *nats.Msg) {
		var b presenceBody
		if err := json.Unmarshal(m.Data, &b); err != nil || b.Gateway == "" {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if b.Leaving {
			delete(p.seen, b.Gateway)
		} else {
			p.seen[b.Gateway] = time.Now()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("holds: presence: %w", err)
	}
	p.sub = sub
	if self != "" {
		p.announce(false)
	}
	return p, nil
}

// Live returns the IDs of the gateways heard of in the last three intervals.
func (p *Presence) Live() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	cutoff := time.Now().Add(-3 * p.interval)
	out := make([]string, 0, len(p.seen))
	for id, at := range p.seen {
		if at.After(cutoff) {
			out = append(out, id)
		} else {
			delete(p.seen, id)
		}
	}
	return out
}

// Listen waits one heartbeat interval and a little more, so that a process
// that only asks has heard of every live gateway.
func (p *Presence) Listen(ctx context.Context) error {
	select {
	case <-time.After(p.interval + p.interval/2):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run announces this gateway every interval until ctx ends, then says it
// is leaving.
func (p *Presence) Run(ctx context.Context) {
	if p.self == "" {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.announce(true)
			_ = p.sub.Unsubscribe()
			return
		case <-t.C:
			p.announce(false)
		}
	}
}

func (p *Presence) announce(leaving bool) {
	b, _ := json.Marshal(presenceBody{Gateway: p.self, Leaving: leaving})
	if err := p.nc.Publish(presenceSubject, b); err != nil && p.nc.IsConnected() {
		p.logger.Warn("announce gateway presence", "err", err)
	}
}
