// Package quota owns the per-key state the gateway enforces from Redis: the
// key's validity (revocation is checked on every request), the sliding-log
// rate limit and the credit balance with its holds. One Lua script decides a
// request in one round trip; keys are hash-tagged per API key for Redis Cluster.
package quota

import (
	"context"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/mana/apigw/gateway/internal/keys"
)

var (
	//go:embed acquire.lua
	acquireSrc string
	//go:embed init.lua
	initSrc string
	//go:embed sync.lua
	syncSrc string
	//go:embed adjust.lua
	adjustSrc string
	//go:embed snapshot.lua
	snapshotSrc string
	//go:embed correct.lua
	correctSrc string
	//go:embed forget.lua
	forgetSrc string
)

// Window is the rate limit's sliding window.
const Window = time.Minute

// Outcome of an Acquire.
type Outcome int

// Outcomes, in the order the script checks them.
const (
	OK Outcome = iota
	noState
	Unknown      // the presented secret is not (or no longer) this key's
	Deleted      // the key was deleted
	Expired      // the key's expiresAt has passed
	Inactive     // the key was deactivated
	RateLimited  // the window is full
	Insufficient // not enough credits for the cost
	Forbidden    // the tier does not include the route
)

// State is what Redis holds of a key besides its balance. Version orders
// writes (api_keys.updated_at in µs) so a stale load never overwrites a newer change.
type State struct {
	KeyID              string
	Version            int64
	Hash               []byte
	PrevHash           []byte
	PrevExpiresAt      *time.Time
	Active             bool
	Deleted            bool
	ExpiresAt          *time.Time
	RateLimitPerMinute int
	MonthlyCredits     int64
}

// Loader rebuilds a key's state from the source of truth (Postgres and the
// events not yet in the ledger). Load returns ErrNoKey for an unknown ID.
// It must be safe for concurrent use.
type Loader interface {
	Load(ctx context.Context, keyID string, period string) (st State, balance int64, err error)
}

// ErrNoKey is returned by a Loader for an ID that does not exist.
var ErrNoKey = errors.New("no such key")

// Request asks to admit one call.
type Request struct {
	KeyID   string
	Hash    []byte
	Cost    int64
	Allowed bool   // the tier includes the route
	Member  string // unique per call (the event ID); the rate log's member
}

// Decision is the script's answer.
type Decision struct {
	Outcome    Outcome
	Limit      int
	Remaining  int
	Reset      time.Time // when the next slot of the window frees
	Credits    int64     // balance after the hold
	Now        time.Time // Redis time
	Period     string    // credit month, YYYY-MM
	RetryAfter time.Duration
	Window     time.Duration // the rate limit's window
	// FirstRefusal is set on an Insufficient outcome that is the key's
	// first of the period: the one to tell of the exhausted credits. Redis
	// remembers it with the key's state, so a flush may make one more
	// refusal of the period the first.
	FirstRefusal bool
}

// Holds is told of each credit hold around the script that takes it: Begin
// before the script runs, End when it answered (taken: the credits were
// held). A rebuild on any gateway then counts a call whose script ran on the
// state Redis lost. Safe for concurrent use.
type Holds interface {
	Begin(keyID, eventID string, credits int64)
	End(keyID, eventID string, taken bool)
}

// Store is the Redis face of quota. Safe for concurrent use.
type Store struct {
	window   time.Duration
	rdb      redis.UniversalClient
	loader   Loader
	holds    Holds
	acquire  *redis.Script
	init     *redis.Script
	sync     *redis.Script
	adjust   *redis.Script
	snapshot *redis.Script
	correct  *redis.Script
	forget   *redis.Script
	pipe     *pipeline // Acquire and Adjust, the calls of every request
	flight   *singleflight.Group
	rebuilds prometheus.Histogram
}

// NewStore wires a store; call Preload once at start. holds may be nil.
func NewStore(rdb redis.UniversalClient, loader Loader, holds Holds) *Store {
	return &Store{
		window:   Window,
		rdb:      rdb,
		loader:   loader,
		holds:    holds,
		acquire:  redis.NewScript(acquireSrc),
		init:     redis.NewScript(initSrc),
		sync:     redis.NewScript(syncSrc),
		adjust:   redis.NewScript(adjustSrc),
		snapshot: redis.NewScript(snapshotSrc),
		correct:  redis.NewScript(correctSrc),
		forget:   redis.NewScript(forgetSrc),
		pipe:     newPipeline(rdb),
		flight:   &singleflight.Group{},
		rebuilds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gateway_quota_rebuild_seconds",
			Help:    "Time to rebuild a key's state after Redis lacked it (first use, flush, restart), per rebuild.",
			Buckets: []float64{.001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1, 2, 5},
		}),
	}
}

// Collectors are the store's metrics, for registering.
func (s *Store) Collectors() []prometheus.Collector { return []prometheus.Collector{s.rebuilds} }

// WithWindow returns a copy of the store with another rate window (the
// tiers are priced per minute; tests use a shorter one).
func (s *Store) WithWindow(w time.Duration) *Store {
	c := *s
	c.window = w
	return &c
}

// Preload loads the scripts so that requests run them with EVALSHA alone.
func (s *Store) Preload(ctx context.Context) error {
	for _, sc := range []*redis.Script{s.acquire, s.init, s.sync, s.adjust, s.snapshot, s.correct} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("quota: load script: %w", err)
		}
	}
	return nil
}

func stateKey(id string) string { return "gw:{" + id + "}:s" }
func rateKey(id string) string  { return "gw:{" + id + "}:rl" }

// run calls EVALSHA and falls back to EVAL only when Redis lost its script cache.
func run(ctx context.Context, rdb redis.UniversalClient, sc *redis.Script, keys []string, args ...any) *redis.Cmd {
	cmd := sc.EvalSha(ctx, rdb, keys, args...)
	if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		return sc.Eval(ctx, rdb, keys, args...)
	}
	return cmd
}

// Acquire decides a request: validity, rate and credit hold, in one round
// trip in steady state. When Redis has no state for the key (first use, or
// after a flush) it is rebuilt through the Loader and the decision retried.
func (s *Store) Acquire(ctx context.Context, r Request) (Decision, error) {
	allowed := "0"
	if r.Allowed {
		allowed = "1"
	}
	keys := []string{stateKey(r.KeyID), rateKey(r.KeyID)}
	hash := hex.EncodeToString(r.Hash)
	for attempt := 0; attempt < 3; attempt++ {
		d, err := s.decide(ctx, r, keys, hash, allowed)
		if err != nil {
			return Decision{}, err
		}
		if d.Outcome != noState {
			return d, nil
		}
		if err := s.rebuild(ctx, r.KeyID, d.Now); err != nil {
			if errors.Is(err, ErrNoKey) {
				return Decision{Outcome: Unknown, Now: d.Now}, nil
			}
			return Decision{}, err
		}
	}
	return Decision{}, errors.New("quota: key state vanished while loading")
}

// decide runs the script once, with the call's hold registered around it.
func (s *Store) decide(ctx context.Context, r Request, keys []string, hash, allowed string) (Decision, error) {
	holding := r.Cost > 0 && r.Allowed && s.holds != nil
	if holding {
		s.holds.Begin(r.KeyID, r.Member, r.Cost)
	}
	res, err := s.pipe.eval(ctx, s.acquire, keys, hash, r.Cost, allowed, r.Member, s.window.Microseconds()).Slice()
	var d Decision
	if err == nil {
		d, err = parseDecision(res)
	}
	if holding {
		s.holds.End(r.KeyID, r.Member, err == nil && d.Outcome == OK)
	}
	if err != nil {
		return Decision{}, fmt.Errorf("quota: acquire: %w", err)
	}
	d.Window = s.window
	return d, nil
}

// rebuildTimeout bounds one rebuild, which the calls waiting for it share.
const rebuildTimeout = 5 * time.Second

// rebuild loads the key's state once for every call that found it missing
// at the same time: one rebuild per key and period at a time.
func (s *Store) rebuild(ctx context.Context, keyID string, now time.Time) error {
	period := now.UTC().Format("2006-01")
	ch := s.flight.DoChan(keyID+"/"+period, func() (any, error) {
		// Not the first caller's deadline: the others share the result.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rebuildTimeout)
		defer cancel()
		start := time.Now()
		defer func() { s.rebuilds.Observe(time.Since(start).Seconds()) }()
		st, bal, err := s.loader.Load(ctx, keyID, period)
		if err != nil {
			return nil, fmt.Errorf("quota: load key state: %w", err)
		}
		args := append(stateArgs(st), period, bal)
		if err := run(ctx, s.rdb, s.init, []string{stateKey(keyID)}, args...).Err(); err != nil {
			return nil, fmt.Errorf("quota: init key state: %w", err)
		}
		return nil, nil
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return fmt.Errorf("quota: rebuild: %w", ctx.Err())
	}
}

// Put writes a key's state after a management change (create, update,
// delete, regenerate). Every gateway reads it on its next request for the
// key, so revocation takes effect at once everywhere.
func (s *Store) Put(ctx context.Context, st State) error {
	if err := run(ctx, s.rdb, s.sync, []string{stateKey(st.KeyID)}, stateArgs(st)...).Err(); err != nil {
		return fmt.Errorf("quota: put key state: %w", err)
	}
	return nil
}

// Adjust moves a key's balance after the backend answered: delta > 0 gives a
// hold back (failed call, or actual cost below the hold), delta < 0 takes more.
// It does nothing if the credit month changed meanwhile. op names the
// adjustment (unique per call and settlement): an op applied once is never
// applied again, so a caller may retry an Adjust whose outcome it did not
// learn (a timeout) without moving the balance twice.
func (s *Store) Adjust(ctx context.Context, keyID, period, op string, delta int64) error {
	if delta == 0 {
		return nil
	}
	err := s.pipe.eval(ctx, s.adjust, []string{stateKey(keyID), "gw:{" + keyID + "}:adj:" + op}, period, delta).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("quota: adjust balance: %w", err)
	}
	return nil
}

// ForgetRefusal undoes the mark of a first refusal for want of credits in
// period (Decision.FirstRefusal) whose news could not be recorded, so that
// the key's next refusal of that period is told again instead of never.
func (s *Store) ForgetRefusal(ctx context.Context, keyID, period string) error {
	if err := run(ctx, s.rdb, s.forget, []string{stateKey(keyID)}, period).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("quota: forget refusal: %w", err)
	}
	return nil
}

// Balance reads a key's enforced balance for the period; ok is false when
// Redis holds no balance of that period.
func (s *Store) Balance(ctx context.Context, keyID, period string) (bal int64, ok bool, err error) {
	v, err := s.rdb.HMGet(ctx, stateKey(keyID), "per", "bal").Result()
	if err != nil {
		return 0, false, fmt.Errorf("quota: read balance: %w", err)
	}
	p, _ := v[0].(string)
	b, _ := v[1].(string)
	if p != period || b == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(b, 10, 64)
	return n, err == nil, err
}

func stateArgs(st State) []any {
	ms := func(t *time.Time) int64 {
		if t == nil {
			return 0
		}
		return t.UnixMilli()
	}
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	return []any{st.Version, hex.EncodeToString(st.Hash), hex.EncodeToString(st.PrevHash), ms(st.PrevExpiresAt),
		b(st.Active), b(st.Deleted), ms(st.ExpiresAt), st.RateLimitPerMinute, st.MonthlyCredits}
}

func parseDecision(res []any) (Decision, error) {
	if len(res) != 9 {
		return Decision{}, fmt.Errorf("quota: unexpected script reply of %d values", len(res))
	}
	n := func(i int) int64 { v, _ := res[i].(int64); return v }
	per, _ := res[6].(string)
	now := time.UnixMilli(n(5)).UTC()
	return Decision{
		Outcome:      Outcome(n(0)),
		Limit:        int(n(1)),
		Remaining:    int(n(2)),
		Reset:        time.UnixMilli(n(3)).UTC(),
		Credits:      n(4),
		Now:          now,
		Period:       per,
		RetryAfter:   time.Duration(n(7)) * time.Millisecond,
		FirstRefusal: n(8) == 1,
	}, nil
}

// Sync writes the state of a key after a management change; it implements
// the management API's KeyState.
func (s *Store) Sync(ctx context.Context, k *keys.Key) error {
	return s.Put(ctx, StateOf(k))
}

// StateOf is the Redis state of a key row.
func StateOf(k *keys.Key) State {
	return State{
		KeyID:              k.ID,
		Version:            k.UpdatedAt.UnixMicro(),
		Hash:               k.Hash,
		PrevHash:           k.PrevHash,
		PrevExpiresAt:      k.PrevExpiresAt,
		Active:             k.Active,
		Deleted:            k.DeletedAt != nil,
		ExpiresAt:          k.ExpiresAt,
		RateLimitPerMinute: k.RateLimitPerMinute,
		MonthlyCredits:     k.MonthlyCredits,
	}
}
