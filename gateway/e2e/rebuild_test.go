package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/redis/go-redis/v9"
)

// createKeys creates n keys of a tier through the management API, with a
// few clients at once.
func (s *stack) createKeys(n int, tier string) []keyObject {
	s.t.Helper()
	tok := s.login("user@example.com")
	out := make([]keyObject, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				body := []byte(`{"name":"k` + strconv.Itoa(i) + `","tier":"` + tier + `"}`)
				resp, b, err := s.http.Do(ctx, "POST", s.gwURLs[i%len(s.gwURLs)]+"/api-keys", body,
					map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
				cancel()
				if err != nil || resp.StatusCode != 201 {
					s.t.Errorf("create key %d: %v %v %s", i, resp, err, b)
					return
				}
				if err := json.Unmarshal(b, &out[i]); err != nil {
					s.t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s.t.Failed() {
		s.t.FailNow()
	}
	return out
}

// consumers is the number of consumers on the USAGE stream.
func (s *stack) consumers() int {
	s.t.Helper()
	st, err := s.js.Stream(context.Background(), "USAGE")
	if err != nil {
		s.t.Fatal(err)
	}
	return st.CachedInfo().State.Consumers
}

// metric sums the samples of a series (name and label prefix, as in the
// exposition format) on a /metrics page.
func (s *stack) metric(url, series string) float64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, body, err := s.http.Do(ctx, "GET", url, nil, nil)
	if err != nil || resp.StatusCode != 200 {
		s.t.Fatalf("GET %s: %v %v", url, resp, err)
	}
	var sum float64
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, series) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			s.t.Fatalf("metric line %q", line)
		}
		sum += v
	}
	return sum
}

type timedCall struct {
	start  time.Time
	took   time.Duration
	status int
}

// TestRedisFlushUnderLoad: two gateways serve 2,000 keys; Redis loses every
// key state in the middle of the run. Each key is rebuilt from the ledger,
// the stream's unapplied backlog and the holds in flight, once: afterwards
// every key's balances agree (Postgres = Redis = grant − ledger), the stream
// has as many consumers as before (none per key), and no call waited a
// second for its rebuild.
func TestRedisFlushUnderLoad(t *testing.T) {
	const (
		nKeys   = 2000
		calls   = 8000
		flushAt = 3000
		grant   = 1000
	)
	// The reconciler would repair what the rebuild got wrong: keep it out.
	s := newStack(t, stackOpts{gateways: 2, pricing: testPricing, extraEnv: []string{"RECONCILE_INTERVAL=1h"}})
	ks := s.createKeys(nKeys, "load")
	before := s.consumers()

	var next atomic.Int64
	var flushed atomic.Int64 // unix ns of the flush
	var mu sync.Mutex
	var timed []timedCall
	refused := map[string]int{} // what the calls not served were answered
	var wg sync.WaitGroup
	for c := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			gw := s.gwURLs[c%2]
			for n := next.Add(1); n <= calls; n = next.Add(1) {
				// Random keys, and after the flush every key in turn, so
				// that each is rebuilt.
				k := ks[rng.IntN(nKeys)]
				if n > flushAt {
					k = ks[int(n)%nKeys]
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				start := time.Now()
				resp, body, err := s.http.Do(ctx, "POST", gw+"/v1/search", []byte(`{"query":"quantum computing"}`),
					map[string]string{"X-API-Key": k.Key, "Content-Type": "application/json"})
				took := time.Since(start)
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				timed = append(timed, timedCall{start, took, resp.StatusCode})
				if resp.StatusCode != 200 {
					refused[fmt.Sprintf("%d %s", resp.StatusCode, body)]++
				}
				mu.Unlock()
				if n == flushAt {
					if err := s.redis.Client().FlushAll(context.Background()).Err(); err != nil {
						t.Error(err)
					}
					flushed.Store(time.Now().UnixNano())
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	flush := time.Unix(0, flushed.Load())
	statuses := map[int]int{}
	var around []time.Duration // calls that started from 1 s before the flush to 5 s after it
	for _, c := range timed {
		statuses[c.status]++
		if c.start.After(flush.Add(-time.Second)) && c.start.Before(flush.Add(5*time.Second)) {
			around = append(around, c.took)
		}
	}
	if statuses[200] != calls {
		t.Fatalf("statuses %v, want %d×200; the others were answered %v", statuses, calls, refused)
	}
	slices.Sort(around)
	pct := func(p float64) time.Duration { return around[int(p*float64(len(around)-1))] }
	t.Logf("%d calls around the flush: p50 %v, p99 %v, max %v", len(around), pct(.5), pct(.99), around[len(around)-1])
	// A second is the bound; binaries built with the race detector run
	// several times slower, and there it is 5 s (a bucket of the histogram).
	bound, bucket := time.Second, "1"
	if os.Getenv("TEST_BUILD_RACE") != "" {
		bound, bucket = 5*time.Second, "5"
	}
	if worst := around[len(around)-1]; worst > bound {
		t.Errorf("a call around the flush took %v; a rebuild must not hold a call %v", worst, bound)
	}
	// The gateways' own measure of each rebuild (first uses and the flush).
	for _, gw := range s.gwURLs {
		total := s.metric(gw+"/metrics", "gateway_quota_rebuild_seconds_count")
		within1 := s.metric(gw+"/metrics", `gateway_quota_rebuild_seconds_bucket{le="1"}`)
		within := s.metric(gw+"/metrics", `gateway_quota_rebuild_seconds_bucket{le="`+bucket+`"}`)
		t.Logf("%s: %.0f rebuilds, %.0f within 1 s, %.0f within %v", gw, total, within1, within, bound)
		if total == 0 || within != total {
			t.Errorf("%s: %.0f of %.0f rebuilds within %v", gw, within, total, bound)
		}
	}

	ids := make([]string, nKeys)
	for i, k := range ks {
		ids[i] = k.ID
	}
	var rows int64
	eventually(t, "the ledger holds every served call", func() (bool, string) {
		if err := s.db.QueryRowx(`SELECT count(*) FROM api_gateway.credit_ledger WHERE key_id = ANY($1::uuid[])`, pq.Array(ids)).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		return rows == calls, fmt.Sprintf("%d of %d rows", rows, calls)
	})
	type sums struct{ ledger, used int64 }
	pg := map[string]*sums{}
	for _, id := range ids {
		pg[id] = &sums{}
	}
	r, err := s.db.Queryx(`
		SELECT l.key_id::text, sum(l.credits), COALESCE(max(b.used), 0)
		FROM api_gateway.credit_ledger l
		LEFT JOIN api_gateway.credit_balances b ON b.key_id = l.key_id AND b.period = l.period
		WHERE l.key_id = ANY($1::uuid[]) GROUP BY l.key_id`, pq.Array(ids))
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var id string
		var sm sums
		if err := r.Scan(&id, &sm.ledger, &sm.used); err != nil {
			t.Fatal(err)
		}
		pg[id] = &sm
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	pipe := s.redis.Client().Pipeline()
	redisBal := make([]*redis.StringCmd, nKeys)
	for i, id := range ids {
		redisBal[i] = pipe.HGet(context.Background(), "gw:{"+id+"}:s", "bal")
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatalf("redis balances: %v", err)
	}
	bad := 0
	for i, id := range ids {
		rd, err := redisBal[i].Int64()
		sm := pg[id]
		if err != nil || rd != grant-sm.ledger || sm.used != sm.ledger {
			if bad < 10 {
				t.Errorf("key %s: redis %d (%v), postgres %d, grant − ledger %d", id, rd, err, grant-sm.used, grant-sm.ledger)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d keys disagree", bad, nKeys)
	}
	// An ordered consumer that a reader re-creates is replaced, not added:
	// allow a moment for the replacement, never a consumer per key.
	eventuallyWithin(t, 10*time.Second, "as many consumers on USAGE as before the run", func() (bool, string) {
		after := s.consumers()
		return after == before, fmt.Sprintf("%d before, %d after", before, after)
	})
	t.Logf("%d keys agree after the drain; %d consumers on USAGE before and after", nKeys, before)
}
