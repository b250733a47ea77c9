package keys

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/sync/singleflight"
)

// Resolver maps a presented secret to its key on the hot path. Only what
// never changes for a given hash (ID, owner, tier, prefix) is cached in the
// process; whether the key may still be used (active, deleted, expired,
// regenerated) is decided from Redis on every request by the quota script,
// so this cache can live long without delaying revocation.
// Safe for concurrent use.
type Resolver struct {
	store   *Store
	hasher  Hasher
	known   *expirable.LRU[string, *Key]
	unknown *expirable.LRU[string, struct{}]
	group   singleflight.Group
	lookups atomic.Int64
}

// ResolverConfig sizes the caches.
type ResolverConfig struct {
	Size       int           // entries of each cache
	TTL        time.Duration // how long a found key is kept
	UnknownTTL time.Duration // how long a hash that matched nothing is remembered
}

// NewResolver builds a resolver on store.
func NewResolver(cfg ResolverConfig, store *Store, hasher Hasher) *Resolver {
	return &Resolver{
		store:   store,
		hasher:  hasher,
		known:   expirable.NewLRU[string, *Key](cfg.Size, nil, cfg.TTL),
		unknown: expirable.NewLRU[string, struct{}](cfg.Size, nil, cfg.UnknownTTL),
	}
}

// Resolve returns the key a secret belongs to and the secret's hash. A
// malformed secret (bad shape or checksum) is refused with ErrMalformed before
// any lookup; a well-formed one that matches no key gives ErrNotFound. The
// returned key is shared: callers must not modify it.
func (r *Resolver) Resolve(ctx context.Context, secret string) (*Key, []byte, error) {
	if err := Parse(secret); err != nil {
		return nil, nil, err
	}
	hash := r.hasher.Hash(secret)
	h := hex.EncodeToString(hash)
	if k, ok := r.known.Get(h); ok {
		return k, hash, nil
	}
	if _, ok := r.unknown.Get(h); ok {
		return nil, hash, ErrNotFound
	}
	v, err, _ := r.group.Do(h, func() (any, error) {
		r.lookups.Add(1)
		// Shared by every caller waiting on this hash: one client going
		// away must not fail the others.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		k, err := r.store.ByHash(lctx, hash)
		if errors.Is(err, ErrNotFound) {
			r.unknown.Add(h, struct{}{})
			return nil, err
		}
		if err != nil {
			return nil, fmt.Errorf("resolve api key: %w", err)
		}
		r.known.Add(h, k)
		return k, nil
	})
	if err != nil {
		return nil, hash, err
	}
	return v.(*Key), hash, nil
}

// Lookups counts the Postgres lookups made so far (for tests and benchmarks).
func (r *Resolver) Lookups() int64 { return r.lookups.Load() }
