package server

import (
	"context"
	"strconv"
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
	q := quota.NewStore(rdb, quota.NewPGLoader(db, nil, nil, testenv.Logger(t)), nil)
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
	go resync(ctx, store, q.Sync, 50*time.Millisecond, 1000, testenv.Logger(t))
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

// TestResyncProgressesPastAFullPage: more keys than one page change inside
// the overlap window (one UPDATE, as a bulk deactivation would), and every
// one of them reaches Redis, the last of the order included.
func TestResyncProgressesPastAFullPage(t *testing.T) {
	const n, page = 250, 100
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := sqlx.MustConnect("postgres", testenv.PostgresURL(t))
	defer db.Close()
	rdb := testenv.StartRedis(t).Client()
	store := keys.NewStore(db)
	q := quota.NewStore(rdb, quota.NewPGLoader(db, nil, nil, testenv.Logger(t)), nil)
	hasher := keys.NewHasher([]byte("pepper-0123456789abcdef"))
	ks := make([]*keys.Key, n)
	for i := range ks {
		secret, _ := keys.Generate()
		ks[i] = &keys.Key{OwnerID: "o", Name: "n", Prefix: keys.Prefix(secret), Tier: "free", Active: true,
			RateLimitPerMinute: 10, MonthlyCredits: 100, Hash: hasher.Hash(secret)}
		if err := store.Create(ctx, ks[i]); err != nil {
			t.Fatal(err)
		}
		if d, err := q.Acquire(ctx, quota.Request{KeyID: ks[i].ID, Hash: ks[i].Hash, Allowed: true, Member: "m0"}); err != nil || d.Outcome != quota.OK {
			t.Fatalf("first call of key %d: %+v %v", i, d, err)
		}
	}
	// Deactivated in Postgres only; the keys' changes lie microseconds apart.
	if _, err := db.ExecContext(ctx, `UPDATE api_gateway.api_keys SET active = false, updated_at = clock_timestamp()`); err != nil {
		t.Fatal(err)
	}
	go resync(ctx, store, q.Sync, 50*time.Millisecond, page, testenv.Logger(t))
	deadline := time.Now().Add(15 * time.Second)
	for i := 1; ; i++ {
		inactive := 0
		for _, k := range ks {
			d, err := q.Acquire(ctx, quota.Request{KeyID: k.ID, Hash: k.Hash, Allowed: true, Member: "m" + strconv.Itoa(i)})
			if err == nil && d.Outcome == quota.Inactive {
				inactive++
			}
		}
		if inactive == n {
			t.Logf("all %d keys deactivated in Redis by a resync with pages of %d", n, page)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 15 s, %d of %d deactivated keys still admitted in Redis", n-inactive, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
