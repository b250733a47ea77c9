package server

import (
	"context"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/services/testenv"
)

// TestResyncCatchesAMissedPropagation: a deactivation committed in Postgres
// whose propagation to Redis failed still reaches Redis.
func TestResyncCatchesAMissedPropagation(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := sqlx.MustConnect("postgres", testenv.PostgresURL(t))
	defer db.Close()
	rdb := testenv.StartRedis(t).Client()
	store := keys.NewStore(db)
	q := quota.NewStore(rdb, quota.NewPGLoader(db, nil, nil, testenv.Logger(t)))
	hasher := keys.NewHasher([]byte("pepper-0123456789abcdef"))
	secret, _ := keys.Generate()
	k := &keys.Key{OwnerID: "o", Name: "n", Prefix: keys.Prefix(secret), Tier: "free", Active: true,
		RateLimitPerMinute: 10, MonthlyCredits: 100, Hash: hasher.Hash(secret)}
	if err := store.Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	req := quota.Request{KeyID: k.ID, Hash: k.Hash, Allowed: true, Member: "m1"}
	if d, err := q.Acquire(ctx, req); err != nil || d.Outcome != quota.OK {
		t.Fatalf("first call: %+v %v", d, err)
	}
	// Deactivated in Postgres only, as if Redis had been away for the Sync.
	if _, err := store.Update(ctx, k.ID, func(k *keys.Key) error { k.Active = false; return nil }); err != nil {
		t.Fatal(err)
	}
	req.Member = "m2"
	if d, _ := q.Acquire(ctx, req); d.Outcome != quota.OK {
		t.Fatalf("before resync the stale state still admits: %v", d.Outcome)
	}
	go resync(ctx, store, q.Sync, 50*time.Millisecond, testenv.Logger(t))
	deadline := time.Now().Add(5 * time.Second)
	for i := 3; ; i++ {
		req.Member = "m" + string(rune('0'+i%10)) + time.Now().String()
		d, err := q.Acquire(ctx, req)
		if err == nil && d.Outcome == quota.Inactive {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("resync never propagated the deactivation: %v %v", d.Outcome, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
