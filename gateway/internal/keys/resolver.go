package keys

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/mana/apigw/gateway/internal/apierr"
)

// ThrottledError refuses a lookup: the client address (or all addresses
// together) presented too many unknown keys lately. RetryAfter is when the
// next lookup is allowed.
type ThrottledError struct{ RetryAfter time.Duration }

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("too many unknown api keys; retry after %s", e.RetryAfter)
}

// errThrottled is what a throttled client is told.
var errThrottled = apierr.New(apierr.RateLimited, "too many unknown API keys from this address; retry later")

// APIError is the refusal as the client is told of it, with its wait.
func (e *ThrottledError) APIError() *apierr.Error { return errThrottled.RetryIn(e.RetryAfter) }

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
	// Unknown keys each cost a Postgres lookup, and the checksum that
	// filters typos is public: every address, and all of them together,
	// may present only so many unknown keys per minute.
	perAddr *expirable.LRU[string, *rate.Limiter]
	total   *rate.Limiter
	limMu   sync.Mutex
	cfg     ResolverConfig
}

// ResolverConfig sizes the caches.
type ResolverConfig struct {
	Size       int           // entries of each cache
	TTL        time.Duration // how long a found key is kept
	UnknownTTL time.Duration // how long a hash that matched nothing is remembered
	// UnknownPerAddress and UnknownTotal cap the lookups that find nothing,
	// per client address and over all addresses, per minute; a tenth of a
	// minute's worth may come at once. Zero means no cap.
	UnknownPerAddress, UnknownTotal int
}

// NewResolver builds a resolver on store.
func NewResolver(cfg ResolverConfig, store *Store, hasher Hasher) *Resolver {
	return &Resolver{
		store:   store,
		hasher:  hasher,
		known:   expirable.NewLRU[string, *Key](cfg.Size, nil, cfg.TTL),
		unknown: expirable.NewLRU[string, struct{}](cfg.Size, nil, cfg.UnknownTTL),
		perAddr: expirable.NewLRU[string, *rate.Limiter](cfg.Size, nil, 10*time.Minute),
		total:   perMinute(cfg.UnknownTotal),
		cfg:     cfg,
	}
}

// perMinute is a limiter of n events per minute with a burst of n/10; nil
// (no limit) for n <= 0.
func perMinute(n int) *rate.Limiter {
	if n <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(float64(n)/60), max(1, n/10))
}

// limiters returns the budgets an unknown key from addr counts against.
// Callers hold limMu.
func (r *Resolver) limiters(addr string) []*rate.Limiter {
	var ls []*rate.Limiter
	if r.cfg.UnknownPerAddress > 0 {
		l, ok := r.perAddr.Get(addr)
		if !ok {
			l = perMinute(r.cfg.UnknownPerAddress)
			r.perAddr.Add(addr, l)
		}
		ls = append(ls, l)
	}
	if r.total != nil {
		ls = append(ls, r.total)
	}
	return ls
}

// wait tells how long addr must wait before its next lookup: zero while it
// and all addresses together have unknown keys to spare. The clock is read
// under the lock: an earlier instant reaching a limiter after a later one
// would move its clock back and refill it twice.
func (r *Resolver) wait(addr string) time.Duration {
	if r.cfg.UnknownPerAddress <= 0 && r.total == nil {
		return 0
	}
	r.limMu.Lock()
	defer r.limMu.Unlock()
	now := time.Now()
	var wait time.Duration
	for _, l := range r.limiters(addr) {
		if tok := l.TokensAt(now); tok < 1 {
			wait = max(wait, time.Duration((1-tok)/float64(l.Limit())*float64(time.Second)))
		}
	}
	if wait > 0 {
		return max(wait, time.Second)
	}
	return 0
}

// spend counts one unknown key from addr. Lookups that were in flight
// together may take the budget below zero; the debt delays the next ones,
// so over any stretch of time the lookups stay within the budget plus
// the lookups in flight.
func (r *Resolver) spend(addr string) {
	r.limMu.Lock()
	defer r.limMu.Unlock()
	now := time.Now()
	for _, l := range r.limiters(addr) {
		l.ReserveN(now, 1)
	}
}

// Resolve returns the key a secret presented from the client address addr
// belongs to and the secret's hash. A malformed secret (bad shape or
// checksum) is refused with ErrMalformed before any lookup; a well-formed
// one that matches no key gives ErrNotFound. A secret that is in neither
// cache is looked up only while addr, and all addresses together, have
// unknown keys to spare; else the answer is a *ThrottledError. Keys found
// never count. The returned key is shared: callers must not modify it.
func (r *Resolver) Resolve(ctx context.Context, secret, addr string) (*Key, []byte, error) {
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
	if wait := r.wait(addr); wait > 0 {
		return nil, hash, &ThrottledError{RetryAfter: wait}
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
	if errors.Is(err, ErrNotFound) && (r.cfg.UnknownPerAddress > 0 || r.total != nil) {
		r.spend(addr)
	}
	if err != nil {
		return nil, hash, err
	}
	return v.(*Key), hash, nil
}

// Lookups counts the Postgres lookups made so far (for tests and benchmarks).
func (r *Resolver) Lookups() int64 { return r.lookups.Load() }
