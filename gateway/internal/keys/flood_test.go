package keys

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/mana/apigw/services/testenv"
)

// TestUnknownKeyFloodIsBounded: 48 clients send random keys that pass the
// public checksum as fast as they can, from one address and then from 1,000
// addresses. The Postgres statements (counted on the real database) stay
// within the per-address and the total budget of unknown keys, the flood is
// refused with ThrottledError, and a key in use presented from the flooding
// address during the flood still resolves.
func TestUnknownKeyFloodIsBounded(t *testing.T) {
	const perAddr, total = 600, 1200 // per minute: 10/s burst 60, 20/s burst 120
	const clients = 48
	raw, statements := testenv.CountingDB(t, testenv.PostgresURL(t))
	store := NewStore(sqlx.NewDb(raw, "postgres"))
	hasher := NewHasher([]byte("pepper-0123456789abcdef"))
	ctx := context.Background()
	secret, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	real := &Key{OwnerID: "o", Name: "n", Prefix: Prefix(secret), Tier: "free", Active: true,
		RateLimitPerMinute: 10, MonthlyCredits: 100, Hash: hasher.Hash(secret)}
	if err := store.Create(ctx, real); err != nil {
		t.Fatal(err)
	}
	flood := func(t *testing.T, addrs int, d time.Duration) (lookups, throttled int64, rate float64) {
		r := NewResolver(ResolverConfig{Size: 100_000, TTL: time.Minute, UnknownTTL: 10 * time.Second,
			UnknownPerAddress: perAddr, UnknownTotal: total}, store, hasher)
		before := statements.Load()
		var refused, sent atomic.Int64
		stop := time.Now().Add(d)
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(stop); i++ {
					s, err := Generate()
					if err != nil {
						t.Error(err)
						return
					}
					_, _, err = r.Resolve(ctx, s, fmt.Sprintf("198.51.%d.%d", (c*1000+i)%addrs/256, (c*1000+i)%addrs%256))
					var te *ThrottledError
					switch {
					case errors.As(err, &te):
						refused.Add(1)
					case !errors.Is(err, ErrNotFound):
						t.Errorf("invented key: %v", err)
						return
					}
					sent.Add(1)
				}
			}()
		}
		// A key in use before the flood, from an address of the flood,
		// while it runs: found keys are never throttled.
		if _, _, err := r.Resolve(ctx, secret, "198.51.0.0"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(d / 2)
		if k, _, err := r.Resolve(ctx, secret, "198.51.0.0"); err != nil || k.ID != real.ID {
			t.Errorf("a real key during the flood: %v", err)
		}
		wg.Wait()
		n := statements.Load() - before
		t.Logf("%d addresses, %s: %d invented keys sent, %d refused as throttled, %d Postgres statements (%.0f/s)",
			addrs, d, sent.Load(), refused.Load(), n, float64(n)/d.Seconds())
		return n, refused.Load(), float64(n) / d.Seconds()
	}
	const d = 3 * time.Second
	t.Run("one address", func(t *testing.T) {
		n, refused, _ := flood(t, 1, d)
		// Burst (a tenth of a minute's budget) + the refill over d + the
		// lookups in flight when the budget ran out (one per client) + the
		// key in use.
		if limit := int64(perAddr/10 + perAddr*int(d.Seconds())/60 + clients + 1); n > limit || refused == 0 {
			t.Fatalf("%d Postgres statements from one address in %s (limit %d), %d refused", n, d, limit, refused)
		}
	})
	t.Run("1000 addresses", func(t *testing.T) {
		n, refused, _ := flood(t, 1000, d)
		if limit := int64(total/10 + total*int(d.Seconds())/60 + clients + 1); n > limit || refused == 0 {
			t.Fatalf("%d Postgres statements from 1,000 addresses in %s (limit %d), %d refused", n, d, limit, refused)
		}
	})
}
