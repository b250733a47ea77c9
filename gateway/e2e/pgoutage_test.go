package e2e

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
)

// TestPostgresOutageUnderLoad is the fault matrix's PostgreSQL row: the
// stack's own PostgreSQL stops for 5 s (PG_OUTAGE_SECONDS) while 8 clients
// call the gateway on four keys. The public path needs no Postgres query, so
// every call keeps succeeding; the management API answers 503 problem+json
// with Retry-After (never 500) and /ready 503 while it is away, and both
// recover once it is back. The billing worker catches up afterwards: every
// call served is charged exactly once.
func TestPostgresOutageUnderLoad(t *testing.T) {
	const clients, nkeys = 8, 4
	outage := envSeconds(t, "PG_OUTAGE_SECONDS", 5*time.Second)
	s := newStack(t, stackOpts{pricing: testPricing, ownPostgres: true})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	auth := map[string]string{"Authorization": "Bearer " + tok}
	keyIDs := make([]string, nkeys)
	secrets := make([]string, nkeys)
	for i := range nkeys {
		k := s.createKey(gw, tok, map[string]any{"name": fmt.Sprint("pg-outage-", i), "tier": "soak"})
		keyIDs[i], secrets[i] = k.ID, k.Key
	}

	var (
		served   atomic.Int64
		statusMu sync.Mutex
		refused  = map[string]int64{} // what the public path answered other than 200, by status (or transport error)
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	for c := range clients {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				resp, _, err := s.http.Do(ctx, "POST", gw+"/v1/search", []byte(`{"query":"quantum"}`),
					map[string]string{"X-API-Key": secrets[c%nkeys], "Content-Type": "application/json"})
				cancel()
				switch {
				case err != nil:
					statusMu.Lock()
					refused["transport error"]++
					statusMu.Unlock()
				case resp.StatusCode == 200:
					served.Add(1)
				default:
					statusMu.Lock()
					refused[strconv.Itoa(resp.StatusCode)]++
					statusMu.Unlock()
				}
			}
		}(c)
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	eventuallyWithin(t, 120*time.Second, "load under way", func() (bool, string) {
		return served.Load() >= 200, fmt.Sprint(served.Load(), " served")
	})

	s.pg.Stop()
	stoppedAt := time.Now()
	servedAtStop := served.Load()
	// Probe the management API (a read and a write) and /ready for the
	// whole outage: each must answer 503 problem+json with Retry-After.
	mgmt := map[int]int{}
	var ready503, mgmt503 int
	bad := 0
	probe := func(method, path string, body any, h map[string]string) int {
		resp, b := s.do(method, gw+path, body, h)
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
			if bad++; bad <= 5 {
				t.Errorf("%s %s with Postgres stopped: %d, Retry-After %q, %s: %s", method, path, resp.StatusCode,
					resp.Header.Get("Retry-After"), resp.Header.Get("Content-Type"), b)
			}
		}
		return resp.StatusCode
	}
	deadline := stoppedAt.Add(outage + 60*time.Second)
	for time.Since(stoppedAt) < outage || mgmt503 == 0 || ready503 == 0 || served.Load() == servedAtStop {
		if time.Now().After(deadline) {
			t.Fatalf("after %v with Postgres stopped: %d management 503s, %d /ready 503s, %d calls served",
				time.Since(stoppedAt).Round(time.Millisecond), mgmt503, ready503, served.Load()-servedAtStop)
		}
		for _, code := range []int{
			probe("GET", "/api-keys", nil, auth),
			probe("POST", "/api-keys", map[string]any{"name": "during", "tier": "free"}, auth),
		} {
			mgmt[code]++
			if code == 503 {
				mgmt503++
			}
		}
		if probe("GET", "/ready", nil, nil) == 503 {
			ready503++
		}
		time.Sleep(100 * time.Millisecond)
	}
	down := time.Since(stoppedAt)
	servedDuring := served.Load() - servedAtStop
	s.pg.Start()
	restartedAt := time.Now()

	eventuallyWithin(t, 60*time.Second, "/ready 200 with Postgres back", func() (bool, string) {
		resp, b := s.do("GET", gw+"/ready", nil, nil)
		return resp.StatusCode == 200, fmt.Sprint(resp.StatusCode, " ", string(b))
	})
	readyAfter := time.Since(restartedAt)
	eventuallyWithin(t, 60*time.Second, "management API back", func() (bool, string) {
		resp, b := s.do("GET", gw+"/api-keys", nil, auth)
		return resp.StatusCode == 200, fmt.Sprint(resp.StatusCode, " ", string(b))
	})
	servedAtRestart := served.Load()
	eventuallyWithin(t, 60*time.Second, "calls served after the restart", func() (bool, string) {
		return served.Load() >= servedAtRestart+200, fmt.Sprint(served.Load()-servedAtRestart, " served")
	})
	close(stop)
	wg.Wait()

	var byStatus []string
	var failed int64
	for k, v := range refused {
		byStatus = append(byStatus, fmt.Sprintf("%s: %d", k, v))
		failed += v
	}
	sort.Strings(byStatus)
	msg := fmt.Sprintf("POSTGRES OUTAGE %v under %d clients: %d calls served (%d while Postgres was down), %d not served %v; "+
		"management API answered %v while down; /ready 503 %d times while down, 200 %v after the restart",
		down.Round(time.Millisecond), clients, served.Load(), servedDuring, failed, byStatus, mgmt, ready503, readyAfter.Round(time.Millisecond))
	t.Log(msg)
	fmt.Println(msg)
	if failed != 0 {
		t.Errorf("the public path failed %d calls around the Postgres outage: %v", failed, byStatus)
	}

	// The billing worker writes the ledger once Postgres is back; a batch
	// it could not commit is redelivered and applied then.
	total := served.Load()
	var rows, credits int64
	eventuallyWithin(t, 120*time.Second, "ledger holds every served call", func() (bool, string) {
		if err := s.db.QueryRowx(`SELECT count(*), COALESCE(sum(credits),0) FROM api_gateway.credit_ledger WHERE key_id = ANY($1::uuid[])`,
			pq.Array(keyIDs)).Scan(&rows, &credits); err != nil {
			return false, err.Error()
		}
		return rows == total && credits == total, fmt.Sprintf("rows %d credits %d of %d served", rows, credits, total)
	})
	var dups int
	if err := s.db.Get(&dups, `SELECT count(*) - count(DISTINCT event_id) FROM api_gateway.credit_ledger WHERE key_id = ANY($1::uuid[])`,
		pq.Array(keyIDs)); err != nil || dups != 0 {
		t.Fatalf("duplicates %d (%v)", dups, err)
	}
	msg = fmt.Sprintf("POSTGRES OUTAGE: served %d, ledger rows %d, credits charged %d, served − charged = %d",
		total, rows, credits, total-credits)
	t.Log(msg)
	fmt.Println(msg)
	for _, id := range keyIDs {
		eventually(t, "balances agree for "+id, func() (bool, string) {
			pg, rd := s.balances(id, 1000000)
			return pg == rd, fmt.Sprintf("postgres %d, redis %d", pg, rd)
		})
	}
}
