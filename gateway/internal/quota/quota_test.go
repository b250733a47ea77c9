package quota

import (
	"context"
	"crypto/sha256"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"

	"github.com/mana/apigw/services/testenv"
)

// staticLoader is the source of truth for a test: a pure in-memory stand-in
// for Postgres (Redis itself is real).
type staticLoader struct {
	mu    sync.Mutex
	st    map[string]State
	bal   map[string]int64
	loads atomic.Int64
}

func (l *staticLoader) Load(_ context.Context, id, _ string) (State, int64, error) {
	l.loads.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.st[id]
	if !ok {
		return State{}, 0, ErrNoKey
	}
	return st, l.bal[id], nil
}

func hashOf(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// cmdCounter counts commands sent to Redis (pipelines count each command).
type cmdCounter struct{ n atomic.Int64 }

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(int64(len(cmds))); return next(ctx, cmds) }
}

// onEachRedis runs test against one redis-server and against a Redis
// Cluster of three masters: the scripts must work the same on both.
func onEachRedis(t *testing.T, test func(t *testing.T, rdb redis.UniversalClient)) {
	for _, b := range []struct {
		name  string
		start func(t *testing.T) redis.UniversalClient
	}{
		{"redis", func(t *testing.T) redis.UniversalClient { return testenv.StartRedis(t).Client() }},
		{"cluster", func(t *testing.T) redis.UniversalClient { return testenv.StartRedisCluster(t, 3, 0).Client() }},
	} {
		t.Run(b.name, func(t *testing.T) { test(t, b.start(t)) })
	}
}

// flushAll empties Redis, every master of a cluster.
func flushAll(ctx context.Context, rdb redis.UniversalClient) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
	}
	return rdb.FlushAll(ctx).Err()
}

func setup(t *testing.T, rdb redis.UniversalClient, rate int, credits int64) (*Store, *staticLoader, redis.UniversalClient, *cmdCounter) {
	t.Helper()
	cc := &cmdCounter{}
	rdb.AddHook(cc)
	l := &staticLoader{st: map[string]State{}, bal: map[string]int64{}}
	l.st["k1"] = State{KeyID: "k1", Version: 1, Hash: hashOf("a"), Active: true, RateLimitPerMinute: rate, MonthlyCredits: credits}
	l.bal["k1"] = credits
	s := NewStore(rdb, l, nil)
	if err := s.Preload(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, l, rdb, cc
}

// acquire is Acquire that fails the test on an error: a failed call returns
// a zero Decision, whose outcome is OK, and would pass for a served one.
func acquire(t *testing.T, s *Store, r Request) Decision {
	t.Helper()
	d, err := s.Acquire(context.Background(), r)
	if err != nil {
		t.Fatalf("acquire %+v: %v", r, err)
	}
	return d
}

// balance is Balance that fails the test unless the key's balance is there.
func balance(t *testing.T, s *Store, keyID, period string) int64 {
	t.Helper()
	b, ok, err := s.Balance(context.Background(), keyID, period)
	if err != nil || !ok {
		t.Fatalf("balance of %s in %s: %v %v", keyID, period, ok, err)
	}
	return b
}

func req(cost int64) Request {
	return Request{KeyID: "k1", Hash: hashOf("a"), Cost: cost, Allowed: true, Member: ulid.Make().String()}
}

func TestRateLimitIsExactUnderConcurrency(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		const n = 25
		s, _, _, _ := setup(t, rdb0, n, 1000)
		ctx := context.Background()
		var ok, limited atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < 3*n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := s.Acquire(ctx, req(1))
				if err != nil {
					t.Error(err)
					return
				}
				switch d.Outcome {
				case OK:
					ok.Add(1)
				case RateLimited:
					limited.Add(1)
					if d.RetryAfter <= 0 || d.Remaining != 0 {
						t.Errorf("429 decision without retry-after: %+v", d)
					}
				default:
					t.Errorf("outcome %v", d.Outcome)
				}
			}()
		}
		wg.Wait()
		if ok.Load() != n || limited.Load() != 2*n {
			t.Fatalf("allowed %d limited %d, want %d and %d", ok.Load(), limited.Load(), n, 2*n)
		}
		bal, _, err := s.Balance(ctx, "k1", time.Now().UTC().Format("2006-01"))
		if err != nil || bal != 1000-n {
			t.Fatalf("balance %d (%v), want %d: refused calls must not consume credits", bal, err, 1000-n)
		}
	})
}

func TestWindowSlidesAndRefusedCallsDoNotConsume(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		const n = 5
		// Long enough for 15 calls on a busy machine (a burst that outlasts
		// the window may rightly be allowed more than n); the test waits it out.
		const window = 3 * time.Second
		s, _, _, _ := setup(t, rdb0, n, 1000)
		s = s.WithWindow(window)
		ctx := context.Background()
		count := func(calls int) (ok int) {
			for i := 0; i < calls; i++ {
				d, err := s.Acquire(ctx, req(1))
				if err != nil {
					t.Fatal(err)
				}
				if d.Outcome == OK {
					ok++
				}
			}
			return ok
		}
		burst := func(what string) {
			t.Helper()
			start := time.Now()
			got := count(3 * n)
			if took := time.Since(start); took >= window {
				t.Fatalf("the %s burst took %s, longer than the %s window: the test cannot tell", what, took, window)
			}
			if got != n {
				t.Fatalf("%s window allowed %d, want %d (refused calls must not hold slots)", what, got, n)
			}
		}
		burst("first")
		// Every slot of the first burst was taken before it ended: wait
		// until the window has slid past all of them.
		time.Sleep(window + 100*time.Millisecond)
		burst("second")
	})
}

func TestCreditsNeverOverdraw(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		s, _, _, _ := setup(t, rdb0, 10000, 100)
		ctx := context.Background()
		var ok atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 20; j++ {
					d, err := s.Acquire(ctx, req(3))
					if err != nil {
						t.Error(err)
						return
					}
					if d.Outcome == OK {
						ok.Add(1)
					} else if d.Outcome != Insufficient {
						t.Errorf("outcome %v", d.Outcome)
					}
				}
			}()
		}
		wg.Wait()
		if ok.Load() != 33 {
			t.Fatalf("served %d calls of cost 3 from 100 credits, want 33", ok.Load())
		}
		if bal := balance(t, s, "k1", time.Now().UTC().Format("2006-01")); bal != 1 {
			t.Fatalf("balance %d, want 1", bal)
		}
		// A refund gives the hold back.
		if err := s.Adjust(ctx, "k1", time.Now().UTC().Format("2006-01"), "refund-1", 3); err != nil {
			t.Fatal(err)
		}
		// The same adjustment retried changes nothing.
		if err := s.Adjust(ctx, "k1", time.Now().UTC().Format("2006-01"), "refund-1", 3); err != nil {
			t.Fatal(err)
		}
		if d := acquire(t, s, req(4)); d.Outcome != OK || d.Credits != 0 {
			t.Fatalf("after refund: %+v", d)
		}
	})
}

// TestFirstRefusalOncePerPeriod: of many concurrent calls refused for want
// of credits, exactly one is the period's first; a refusal for another
// reason, or a call served, never is; a new period has a first of its own,
// and a flush (Redis forgets) makes one more.
func TestFirstRefusalOncePerPeriod(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		s, l, rdb, _ := setup(t, rdb0, 10000, 10)
		ctx := context.Background()
		firsts := func(n int, cost int64) (first, refused int64) {
			var f, r atomic.Int64
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					d, err := s.Acquire(ctx, req(cost))
					if err != nil {
						t.Error(err)
						return
					}
					if d.Outcome == Insufficient {
						r.Add(1)
					}
					if d.FirstRefusal {
						if d.Outcome != Insufficient {
							t.Errorf("first refusal on outcome %v", d.Outcome)
						}
						f.Add(1)
					}
				})
			}
			wg.Wait()
			return f.Load(), r.Load()
		}
		// 4 left after two calls of 3; a hold of 5 is refused with credits left.
		if f, r := firsts(2, 3); f != 0 || r != 0 {
			t.Fatalf("served calls: %d firsts, %d refused", f, r)
		}
		if f, r := firsts(40, 5); f != 1 || r != 40 {
			t.Fatalf("40 refusals: %d firsts (want 1), %d refused", f, r)
		}
		if f, _ := firsts(20, 1); f != 0 {
			t.Fatalf("%d firsts after the first", f)
		}
		l.mu.Lock()
		l.st["k1"] = State{KeyID: "k1", Version: 2, Hash: hashOf("a"), Active: true, RateLimitPerMinute: 1, MonthlyCredits: 10}
		l.mu.Unlock()
		if err := s.Put(ctx, l.st["k1"]); err != nil {
			t.Fatal(err)
		}
		if d := acquire(t, s, req(100)); d.Outcome != RateLimited || d.FirstRefusal {
			t.Fatalf("rate limited: %+v", d)
		}
		l.mu.Lock()
		l.st["k1"] = State{KeyID: "k1", Version: 3, Hash: hashOf("a"), Active: true, RateLimitPerMinute: 10000, MonthlyCredits: 10}
		l.mu.Unlock()
		if err := s.Put(ctx, l.st["k1"]); err != nil {
			t.Fatal(err)
		}
		// The last refusal told was of another period: this one is first.
		if err := rdb.HSet(ctx, stateKey("k1"), "xper", "2000-01").Err(); err != nil {
			t.Fatal(err)
		}
		if f, r := firsts(10, 100); f != 1 || r != 10 {
			t.Fatalf("a new period: %d firsts, %d refused", f, r)
		}
		// A refusal whose news was lost is forgotten, so the next is first;
		// forgetting an older period leaves this period's mark alone.
		if err := s.ForgetRefusal(ctx, "k1", "2000-01"); err != nil {
			t.Fatal(err)
		}
		if f, _ := firsts(5, 100); f != 0 {
			t.Fatalf("forgetting another period: %d firsts", f)
		}
		if err := s.ForgetRefusal(ctx, "k1", time.Now().UTC().Format("2006-01")); err != nil {
			t.Fatal(err)
		}
		if f, _ := firsts(5, 100); f != 1 {
			t.Fatalf("after forgetting this period's: %d firsts, want 1", f)
		}
		if err := flushAll(ctx, rdb); err != nil {
			t.Fatal(err)
		}
		l.mu.Lock()
		l.bal["k1"] = 0
		l.mu.Unlock()
		if f, r := firsts(10, 1); f != 1 || r != 10 {
			t.Fatalf("after a flush: %d firsts, %d refused", f, r)
		}
	})
}

func TestRevocationStates(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		s, l, _, _ := setup(t, rdb0, 100, 100)
		ctx := context.Background()
		if d := acquire(t, s, req(1)); d.Outcome != OK {
			t.Fatalf("first call: %v", d.Outcome)
		}
		st := l.st["k1"]
		for _, tc := range []struct {
			name string
			mut  func(*State)
			hash string
			want Outcome
		}{
			{"deactivated", func(s *State) { s.Active = false }, "a", Inactive},
			{"reactivated", func(s *State) { s.Active = true }, "a", OK},
			{"expired", func(s *State) { p := time.Now().Add(-time.Second); s.ExpiresAt = &p }, "a", Expired},
			{"not yet expired", func(s *State) { p := time.Now().Add(time.Hour); s.ExpiresAt = &p }, "a", OK},
			{"regenerated, old secret", func(s *State) { s.PrevHash, s.Hash = s.Hash, hashOf("b") }, "a", Unknown},
			{"regenerated, new secret", func(*State) {}, "b", OK},
			{"grace period, old secret", func(s *State) { p := time.Now().Add(time.Hour); s.PrevHash = hashOf("a"); s.PrevExpiresAt = &p }, "a", OK},
			{"grace over", func(s *State) { p := time.Now().Add(-time.Millisecond); s.PrevExpiresAt = &p }, "a", Unknown},
			{"deleted", func(s *State) { s.Deleted = true }, "b", Deleted},
		} {
			st.Version++
			tc.mut(&st)
			if err := s.Put(ctx, st); err != nil {
				t.Fatal(err)
			}
			r := req(1)
			r.Hash = hashOf(tc.hash)
			d, err := s.Acquire(ctx, r)
			if err != nil || d.Outcome != tc.want {
				t.Errorf("%s: outcome %v (%v), want %v", tc.name, d.Outcome, err, tc.want)
			}
		}
		// A stale write (lower version) never undoes a newer one.
		old := st
		old.Version = 1
		old.Deleted = false
		if err := s.Put(ctx, old); err != nil {
			t.Fatal(err)
		}
		if d := acquire(t, s, req(1)); d.Outcome != Deleted {
			t.Errorf("stale put resurrected the key: %v", d.Outcome)
		}
	})
}

func TestTierForbidsWithoutConsuming(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		s, _, _, _ := setup(t, rdb0, 2, 10)
		for i := 0; i < 5; i++ {
			r := req(1)
			r.Allowed = false
			if d := acquire(t, s, r); d.Outcome != Forbidden {
				t.Fatalf("forbidden route: %v", d.Outcome)
			}
		}
		for i := 0; i < 2; i++ {
			if d := acquire(t, s, req(1)); d.Outcome != OK || d.Credits != int64(9-i) {
				t.Fatalf("allowed route after refusals: %+v", d)
			}
		}
	})
}

func TestFlushRebuildsFromLoaderAndSteadyStateIsOneCommand(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		s, l, rdb, cc := setup(t, rdb0, 1000, 50)
		ctx := context.Background()
		if d := acquire(t, s, req(1)); d.Outcome != OK || d.Credits != 49 {
			t.Fatalf("first: %+v", d)
		}
		before := cc.n.Load()
		const calls = 100
		for i := 0; i < calls; i++ {
			if d, err := s.Acquire(ctx, req(0)); err != nil || d.Outcome != OK {
				t.Fatalf("steady: %+v %v", d, err)
			}
		}
		if per := float64(cc.n.Load()-before) / calls; per != 1 {
			t.Fatalf("%.2f Redis commands per request in steady state, want exactly 1", per)
		}
		// Postgres says 10 were spent (ledger); Redis loses everything.
		l.mu.Lock()
		l.bal["k1"] = 40
		l.mu.Unlock()
		if err := flushAll(ctx, rdb); err != nil {
			t.Fatal(err)
		}
		loads := l.loads.Load()
		d, err := s.Acquire(ctx, req(1))
		if err != nil || d.Outcome != OK || d.Credits != 39 {
			t.Fatalf("after flush: %+v %v", d, err)
		}
		if l.loads.Load() != loads+1 {
			t.Fatalf("loader called %d times", l.loads.Load()-loads)
		}
		// After SCRIPT FLUSH the store still works (falls back to EVAL once).
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if d, err := s.Acquire(ctx, req(1)); err != nil || d.Outcome != OK {
			t.Fatalf("after script flush: %+v %v", d, err)
		}
		// Unknown key IDs are unknown, not errors.
		r := req(1)
		r.KeyID = "nope"
		if d, err := s.Acquire(ctx, r); err != nil || d.Outcome != Unknown {
			t.Fatalf("unknown key: %+v %v", d, err)
		}
	})
}

func TestMonthRolloverGrantsAFreshMonth(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rdb0 redis.UniversalClient) {
		s, _, rdb, _ := setup(t, rdb0, 100, 100)
		ctx := context.Background()
		if d := acquire(t, s, req(30)); d.Credits != 70 {
			t.Fatalf("first: %+v", d)
		}
		if err := rdb.HSet(ctx, stateKey("k1"), "per", "2000-01", "bal", 0).Err(); err != nil {
			t.Fatal(err)
		}
		d, err := s.Acquire(ctx, req(1))
		if err != nil || d.Outcome != OK || d.Credits != 99 || d.Period != time.Now().UTC().Format("2006-01") {
			t.Fatalf("new month: %+v %v", d, err)
		}
		// Adjustments for a past month are ignored.
		if err := s.Adjust(ctx, "k1", "2000-01", "old-month", 50); err != nil {
			t.Fatal(err)
		}
		bal := balance(t, s, "k1", d.Period)
		if bal != 99 {
			t.Fatalf("balance %d after stale adjust", bal)
		}
	})
}

func TestLuaPeriodMatchesGo(t *testing.T) {
	// The script's civil-date arithmetic agrees with Go's calendar across
	// month and leap-year boundaries (checked through Redis EVAL).
	r := testenv.StartRedis(t)
	rdb := r.Client()
	fn := `local function period(sec)
  local z = math.floor(sec / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d', y, m)
end
return period(tonumber(ARGV[1]))`
	for _, ts := range []time.Time{
		time.Date(2024, 2, 29, 23, 59, 59, 0, time.UTC),
		time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2100, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 30, 23, 59, 59, 0, time.UTC),
	} {
		got, err := rdb.Eval(context.Background(), fn, nil, ts.Unix()).Text()
		if err != nil || got != ts.Format("2006-01") {
			t.Errorf("%v: lua %q (%v), want %s", ts, got, err, ts.Format("2006-01"))
		}
	}
	if !containsPeriodFn(acquireSrc, fn) {
		t.Fatal("acquire.lua's period function differs from the one tested here")
	}
}

func containsPeriodFn(src, fn string) bool {
	body := strings.TrimSuffix(fn, "\nreturn period(tonumber(ARGV[1]))")
	return strings.Contains(src, body)
}
