package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// LastUsedStore persists last-use times in one batched statement.
type LastUsedStore interface {
	TouchLastUsed(ctx context.Context, used map[string]time.Time) error
}

// LastUsed keeps api_keys.last_used_at current without a Postgres write on
// the hot path: Touch records in memory, Run flushes every interval.
// Touch is safe for concurrent use.
type LastUsed struct {
	store    LastUsedStore
	interval time.Duration
	logger   *slog.Logger
	mu       sync.Mutex
	pending  map[string]time.Time
}

// NewLastUsed builds a batcher flushing every interval.
func NewLastUsed(store LastUsedStore, interval time.Duration, logger *slog.Logger) *LastUsed {
	return &LastUsed{store: store, interval: interval, logger: logger, pending: map[string]time.Time{}}
}

// Touch records a use of the key.
func (l *LastUsed) Touch(keyID string, at time.Time) {
	l.mu.Lock()
	if at.After(l.pending[keyID]) {
		l.pending[keyID] = at
	}
	l.mu.Unlock()
}

// Flush writes what was recorded since the last flush.
func (l *LastUsed) Flush(ctx context.Context) error {
	l.mu.Lock()
	batch := l.pending
	l.pending = map[string]time.Time{}
	l.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if err := l.store.TouchLastUsed(ctx, batch); err != nil {
		l.mu.Lock()
		for k, t := range batch {
			if t.After(l.pending[k]) {
				l.pending[k] = t
			}
		}
		l.mu.Unlock()
		return err
	}
	return nil
}

// Run flushes every interval until ctx ends, then once more.
func (l *LastUsed) Run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := l.Flush(fctx); err != nil {
				l.logger.Warn("last-used flush at shutdown failed", "err", err)
			}
			cancel()
			return
		case <-t.C:
			if err := l.Flush(ctx); err != nil {
				l.logger.Warn("last-used flush failed", "err", err)
			}
		}
	}
}
