package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mana/apigw/gateway/internal/pricing"
)

// quotaHeaders checks the headers every /v1 answer to a known key carries.
func quotaHeaders(t *testing.T, what string, h map[string][]string, credits int64) {
	t.Helper()
	get := func(name string) string {
		if v := h[name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	for _, name := range []string{"X-Request-Id", "X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"} {
		if get(name) == "" {
			t.Errorf("%s: no %s", what, name)
		}
	}
	if got := get("X-Credits-Remaining"); got != strconv.FormatInt(credits, 10) {
		t.Errorf("%s: X-Credits-Remaining %q, want %d", what, got, credits)
	}
}

// searchURLs returns n page URLs the search stand-in can extract, found
// with a key of their own so that the key under test is untouched.
func (s *stack) searchURLs(gw, token string, n int) []string {
	s.t.Helper()
	k := s.createKey(gw, token, map[string]any{"name": "finder", "tier": "pro"})
	resp, b := s.do("POST", gw+"/v1/search", fmt.Sprintf(`{"query":"quantum computing","limit":%d}`, n), map[string]string{"X-API-Key": k.Key})
	if resp.StatusCode != 200 {
		s.t.Fatalf("search: %d %s", resp.StatusCode, b)
	}
	var sr struct {
		Results []struct{ URL string } `json:"results"`
	}
	if err := json.Unmarshal(b, &sr); err != nil || len(sr.Results) < n {
		s.t.Fatalf("search: %d results, want %d: %s (%v)", len(sr.Results), n, b, err)
	}
	urls := make([]string, n)
	for i := range urls {
		urls[i] = sr.Results[i].URL
	}
	return urls
}

// TestBackendRefusalsCostNothing: a 4xx the backend answers is passed
// through with the quota headers, reaches the ledger as a call of 0
// credits, and leaves the balance in Redis and PostgreSQL untouched.
func TestBackendRefusalsCostNothing(t *testing.T) {
	s := newStack(t, stackOpts{})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "refused", "tier": "pro"})
	key := map[string]string{"X-API-Key": k.Key}
	for _, c := range []struct {
		name, path, body, backend, upstream string
		status                              int
	}{
		// The gateway validates the body; only the backend knows its voices
		// and which pages it may fetch.
		{"unknown voice", "/v1/tts/synthesize", `{"text":"` + strings.Repeat("a", 1500) + `","voice":"xx-XX-9"}`, "tts", "/synthesize", 400},
		{"forbidden destination", "/v1/extract", `{"url":"http://10.0.0.1/"}`, "search", "/extract", 422},
	} {
		before := s.hits.of(c.backend, "POST", c.upstream)
		resp, b := s.do("POST", gw+c.path, c.body, key)
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("%s: %d %q %s, want the backend's %d problem", c.name, resp.StatusCode, resp.Header.Get("Content-Type"), b, c.status)
		}
		if got := s.hits.of(c.backend, "POST", c.upstream) - before; got != 1 {
			t.Fatalf("%s: the backend saw %d calls, want 1 (the refusal must be the backend's)", c.name, got)
		}
		quotaHeaders(t, c.name, resp.Header, 5000)
	}
	resp, b := s.do("POST", gw+"/v1/search", `{"query":"quantum"}`, key)
	if resp.StatusCode != 200 {
		t.Fatalf("search %d %s", resp.StatusCode, b)
	}
	quotaHeaders(t, "served search", resp.Header, 4999)
	s.drained(k.ID, 3)
	rows, credits := s.ledger(k.ID)
	var refused int64
	if err := s.db.Get(&refused, `SELECT COALESCE(sum(credits),0) FROM api_gateway.credit_ledger WHERE key_id = $1 AND endpoint <> '/v1/search'`, k.ID); err != nil {
		t.Fatal(err)
	}
	pg, rd := s.balances(k.ID, 5000)
	t.Logf("ledger rows %d Σ %d (refused calls Σ %d); balance postgres %d redis %d", rows, credits, refused, pg, rd)
	if credits != 1 || refused != 0 || pg != 4999 || rd != 4999 {
		t.Fatalf("ledger Σ %d (refused Σ %d), balance postgres %d redis %d; want 1, 0, 4999, 4999", credits, refused, pg, rd)
	}
}

// TestNoCallReachesTheBackendOnceCreditsAreHeldOut is invariant 1 with the
// calls whose cost is known up front: bulk extracts (3 credits), TTS (2)
// and STT uploads (11, held from the WAV header) race for 300 credits
// through two gateways. Every call the backends receive is one that was
// served; the rest are 402 before the backend, and the ledger holds exactly
// what Redis took.
func TestNoCallReachesTheBackendOnceCreditsAreHeldOut(t *testing.T) {
	const grant = 300
	prices := string(pricing.WithTiers(fmt.Sprintf(`mixed: {rateLimitPerMinute: 1000000, monthlyCredits: %d, endpoints: ["*"]}`, grant)))
	s := newStack(t, stackOpts{gateways: 2, pricing: prices})
	tok := s.login("user@example.com")
	urls := s.searchURLs(s.gwURLs[0], tok, 3)
	k := s.createKey(s.gwURLs[0], tok, map[string]any{"name": "mixed", "tier": "mixed"})
	if k.MonthlyCredits != grant {
		t.Fatalf("key of tier mixed has %d credits, want %d: the test pricing was not loaded", k.MonthlyCredits, grant)
	}
	audioCT, audio := multipartBody(t, "file", "a.wav", wavFile(t, 61))
	bulk := fmt.Sprintf(`{"urls":[%q,%q,%q]}`, urls[0], urls[1], urls[2])
	kinds := []struct {
		name, path, ct, backend, upstream string
		body                              []byte
		cost                              int64
	}{
		{"bulk", "/v1/extract/bulk", "application/json", "search", "/extract/bulk", []byte(bulk), 3},
		{"tts", "/v1/tts/synthesize", "application/json", "tts", "/synthesize", []byte(`{"text":"` + strings.Repeat("b", 1500) + `","voice":"en-US-1"}`), 2},
		{"stt", "/v1/stt/transcribe", audioCT, "stt", "/transcribe", audio, 11},
	}
	const calls, clients = 150, 12 // demand 50 × (3+2+11) = 800 credits
	var next atomic.Int64
	var mu sync.Mutex
	statuses := make([]map[int]int64, len(kinds))
	for i := range statuses {
		statuses[i] = map[int]int64{}
	}
	others := map[string]int{} // the answers that were neither 200 nor 402
	var badRefusal atomic.Value
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > calls {
					return
				}
				kd := kinds[int(n)%len(kinds)]
				gw := s.gwURLs[(c+int(n))%len(s.gwURLs)]
				resp, b := s.do("POST", gw+kd.path, kd.body, map[string]string{"X-API-Key": k.Key, "Content-Type": kd.ct})
				if resp.StatusCode == 402 && (resp.Header.Get("Retry-After") == "" || resp.Header.Get("Content-Type") != "application/problem+json") {
					badRefusal.Store(fmt.Sprintf("%s: 402 %v %s", kd.name, resp.Header, b))
				}
				mu.Lock()
				statuses[int(n)%len(kinds)][resp.StatusCode]++
				if resp.StatusCode != 200 && resp.StatusCode != 402 {
					others[fmt.Sprintf("%s: %d %s", kd.name, resp.StatusCode, b)]++
				}
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	if v := badRefusal.Load(); v != nil {
		t.Fatalf("a 402 without Retry-After or problem+json: %s", v)
	}
	var served, charged int64
	for i, kd := range kinds {
		st := statuses[i]
		hits := s.hits.of(kd.backend, "POST", kd.upstream)
		t.Logf("%s (%d credits): statuses %v, backend calls %d", kd.name, kd.cost, st, hits)
		if len(st) > 2 || st[200]+st[402] != calls/int64(len(kinds)) {
			t.Errorf("%s: statuses %v, want only 200 and 402; the others: %v", kd.name, st, others)
		}
		if st[402] == 0 || st[200] == 0 {
			t.Errorf("%s: statuses %v, want both served and refused calls", kd.name, st)
		}
		if hits != st[200] {
			t.Errorf("%s: the backend received %d calls for %d served: a refused call reached it", kd.name, hits, st[200])
		}
		served += st[200]
		charged += st[200] * kd.cost
	}
	if t.Failed() {
		t.FailNow()
	}
	s.drained(k.ID, served)
	_, ledger := s.ledger(k.ID)
	pg, rd := s.balances(k.ID, grant)
	t.Logf("%d served for %d credits; ledger Σ %d; balance postgres %d redis %d", served, charged, ledger, pg, rd)
	if charged > grant || ledger != charged || rd != grant-charged || pg != rd {
		t.Fatalf("served %d credits of %d, ledger Σ %d, balance postgres %d redis %d", charged, grant, ledger, pg, rd)
	}
	// Demand was well past the grant: what is left fits none of the calls.
	if rd >= 2 {
		t.Fatalf("%d credits left unspent while calls of 2 were refused", rd)
	}
}
