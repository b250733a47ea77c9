package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/mana/apigw/gateway/internal/keys"
)

// resync writes the state of recently changed keys to Redis every interval.
// The management API does so on every change already; this loop catches a
// change whose propagation failed (Redis away at that moment, the client
// never retried), so a revocation committed in Postgres always reaches
// Redis. Writes are versioned, so repeating them is harmless.
func resync(ctx context.Context, store *keys.Store, sync func(context.Context, *keys.Key) error, interval time.Duration, logger *slog.Logger) {
	// Changes commit in a different order than their timestamps; looking
	// back a little further than the last change seen covers that.
	const overlap = 10 * time.Second
	mark := time.Now().Add(-time.Minute)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := store.ChangedSince(ctx, mark.Add(-overlap), 1000)
		if err != nil {
			logger.WarnContext(ctx, "key resync: list changed keys", "err", err)
			continue
		}
		for _, k := range changed {
			if err := sync(ctx, k); err != nil {
				logger.WarnContext(ctx, "key resync", "key_id", k.ID, "err", err)
				break
			}
			if k.UpdatedAt.After(mark) {
				mark = k.UpdatedAt
			}
		}
	}
}
