package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// load sends n search calls from `clients` goroutines spread over the
// gateways and counts the statuses.
func (s *stack) load(secret string, n, clients int, during func(done int64)) map[int]int64 {
	s.t.Helper()
	var next, done atomic.Int64
	var mu sync.Mutex
	counts := map[int]int64{}
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			gw := s.gwURLs[c%len(s.gwURLs)]
			for next.Add(1) <= int64(n) {
				resp, _ := s.do("POST", gw+"/v1/search", `{"query":"quantum computing"}`, map[string]string{"X-API-Key": secret})
				mu.Lock()
				counts[resp.StatusCode]++
				mu.Unlock()
				d := done.Add(1)
				if during != nil {
					during(d)
				}
			}
		}(c)
	}
	wg.Wait()
	return counts
}

// drained waits until the billing worker has written every event of the key.
func (s *stack) drained(keyID string, events int64) {
	s.t.Helper()
	eventually(s.t, "ledger catches up", func() (bool, string) {
		rows, _ := s.ledger(keyID)
		return rows == events, fmt.Sprintf("%d of %d rows", rows, events)
	})
}

// TestNoOverdraftAcrossGateways is invariant 1 and 5: 1,000 credits, 64
// concurrent clients over two gateways, 5,000 calls of cost 1.
func TestNoOverdraftAcrossGateways(t *testing.T) {
	s := newStack(t, stackOpts{gateways: 2, pricing: testPricing})
	tok := s.login("user@example.com")
	k := s.createKey(s.gwURLs[0], tok, map[string]any{"name": "load", "tier": "load"})
	counts := s.load(k.Key, 5000, 64, nil)
	if counts[200] != 1000 || counts[402] != 4000 || len(counts) != 2 {
		t.Fatalf("statuses %v, want 1000×200 and 4000×402", counts)
	}
	s.drained(k.ID, 1000)
	rows, credits := s.ledger(k.ID)
	pg, rd := s.balances(k.ID, 1000)
	t.Logf("ledger rows %d Σ %d; balance postgres %d redis %d", rows, credits, pg, rd)
	if credits != 1000 || pg != 0 || rd != 0 {
		t.Fatalf("ledger Σ %d, balance postgres %d, redis %d; want 1000, 0, 0", credits, pg, rd)
	}
}

// TestRateLimitAcrossGateways: limit N, 3N calls in a burst over two
// gateways: exactly N served; the refused ones consumed nothing.
func TestRateLimitAcrossGateways(t *testing.T) {
	// The window is short so that the test can wait for it to pass, and long
	// enough that a burst of 60 calls fits in it on a busy machine (a burst
	// that outlasts the window may rightly be served more than N times).
	const window = 12 * time.Second
	s := newStack(t, stackOpts{gateways: 2, pricing: testPricing, noWorkers: true, extraEnv: []string{"DEV_MODE=1", "RATE_LIMIT_WINDOW=" + window.String()}})
	tok := s.login("user@example.com")
	k := s.createKey(s.gwURLs[0], tok, map[string]any{"name": "burst", "tier": "burst"})
	var retryAfterMissing atomic.Int64
	burst := func() map[int]int64 {
		counts := map[int]int64{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < 60; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				resp, _ := s.do("POST", s.gwURLs[i%2]+"/v1/search", `{"query":"q"}`, map[string]string{"X-API-Key": k.Key})
				if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
					retryAfterMissing.Add(1)
				}
				mu.Lock()
				counts[resp.StatusCode]++
				mu.Unlock()
			}(i)
		}
		wg.Wait()
		return counts
	}
	start := time.Now()
	first := burst()
	took := time.Since(start)
	if took >= window {
		t.Fatalf("the burst took %s, longer than the %s window: the test cannot tell", took, window)
	}
	if first[200] != 20 || first[429] != 40 {
		t.Fatalf("first burst %v (in %s), want 20×200, 40×429", first, took)
	}
	if retryAfterMissing.Load() != 0 {
		t.Fatalf("%d 429s without Retry-After", retryAfterMissing.Load())
	}
	// Every slot of the first burst was taken before it ended: wait until
	// the window has slid past all of them.
	time.Sleep(time.Until(start.Add(took + window + 200*time.Millisecond)))
	start = time.Now()
	second := burst()
	if took := time.Since(start); took >= window {
		t.Fatalf("the second burst took %s, longer than the %s window: the test cannot tell", took, window)
	}
	if second[200] != 20 || second[429] != 40 {
		t.Fatalf("second burst %v, want 20×200 again (refused calls must not hold slots)", second)
	}
	// Credits: only the served calls were charged.
	_, rd := s.balances(k.ID, 100000) // no workers: Postgres sees nothing
	if rd != 100000-40 {
		t.Fatalf("redis balance %d, want %d", rd, 100000-40)
	}
}
