package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/mana/apigw/gateway/internal/keys"
)

// resync writes the state of recently changed keys to Redis every interval.
// The management API does so on every change already; this loop catches a
// change whose propagation failed (Redis away at that moment, the client
// never retried), so a revocation committed in Postgres always reaches
// Redis. Writes are versioned, so repeating them is harmless.
func resync(ctx context.Context, store *keys.Store, sync func(context.Context, *keys.Key) error, interval time.Duration, page int, logger *slog.Logger) {
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
		if m, err := resyncOnce(ctx, store, sync, mark.Add(-overlap), page); err != nil {
			logger.WarnContext(ctx, "key resync", "err", err)
		} else if m.After(mark) {
			mark = m
		}
	}
}

// resyncOnce syncs every key changed after from, page by page, and returns
// the latest change it synced. It stops at the first failure, so nothing
// after a key that did not reach Redis counts as done.
func resyncOnce(ctx context.Context, store *keys.Store, sync func(context.Context, *keys.Key) error, from time.Time, page int) (time.Time, error) {
	var mark time.Time
	at, id := from, ""
	for {
		changed, err := store.ChangedAfter(ctx, at, id, page)
		if err != nil {
			return mark, fmt.Errorf("list changed keys: %w", err)
		}
		for _, k := range changed {
			if err := sync(ctx, k); err != nil {
				return mark, fmt.Errorf("sync key %s: %w", k.ID, err)
			}
			mark = k.UpdatedAt
		}
		if len(changed) < page {
			return mark, nil
		}
		last := changed[len(changed)-1]
		at, id = last.UpdatedAt, last.ID
	}
}
