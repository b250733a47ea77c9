package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// staleRedis makes 300 paid calls on a new key and then puts back the
// key's Redis state as it was after the first 50 (DUMP then RESTORE), as a
// restored backup or a failover to a lagging replica would: Redis grants
// 250 credits the ledger has spent.
func (s *stack) staleRedis() keyObject {
	s.t.Helper()
	k := s.createKey(s.gwURLs[0], s.login("user@example.com"), map[string]any{"name": "drift", "tier": "load"})
	rdb := s.redis.Client()
	ctx := context.Background()
	var dump string
	for i := 1; i <= 300; i++ {
		resp, b := s.do("POST", s.gwURLs[i%len(s.gwURLs)]+"/v1/search", `{"query":"quantum computing"}`, map[string]string{"X-API-Key": k.Key})
		if resp.StatusCode != 200 {
			s.t.Fatalf("call %d: %d %s", i, resp.StatusCode, b)
		}
		if i == 50 {
			var err error
			if dump, err = rdb.Dump(ctx, "gw:{"+k.ID+"}:s").Result(); err != nil {
				s.t.Fatal(err)
			}
		}
	}
	s.drained(k.ID, 300)
	if pg, rd := s.balances(k.ID, 1000); pg != 700 || rd != 700 {
		s.t.Fatalf("before the restore: postgres %d, redis %d; want 700", pg, rd)
	}
	if err := rdb.RestoreReplace(ctx, "gw:{"+k.ID+"}:s", 0, dump).Err(); err != nil {
		s.t.Fatal(err)
	}
	if _, rd := s.balances(k.ID, 1000); rd != 950 {
		s.t.Fatalf("restored balance %d, want 950", rd)
	}
	return k
}

// TestReconcilerRepairsARestoredSnapshot: an older Redis state restored after
// 300 paid calls grants 250 spent credits; one of the two gateways finds and
// corrects it within the reconcile interval, and says so in its metrics.
func TestReconcilerRepairsARestoredSnapshot(t *testing.T) {
	const interval = 2 * time.Second
	s := newStack(t, stackOpts{gateways: 2, pricing: testPricing, extraEnv: []string{"RECONCILE_INTERVAL=" + interval.String()}})
	k := s.staleRedis()
	restored := time.Now()
	// One interval, plus a pass's own time on a busy machine.
	eventuallyWithin(t, interval+3*time.Second, "the over-grant repaired", func() (bool, string) {
		pg, rd := s.balances(k.ID, 1000)
		return rd == 700 && pg == 700, fmt.Sprintf("postgres %d, redis %d", pg, rd)
	})
	took := time.Since(restored)
	var credits, keys float64
	for _, gw := range s.gwURLs {
		credits += s.metric(gw+"/metrics", `gateway_reconcile_credits_corrected_total{drift="over"}`)
		keys += s.metric(gw+"/metrics", `gateway_reconcile_keys_corrected_total{drift="over"}`)
	}
	t.Logf("repaired %v after the restore (interval %v); metrics: %.0f credits over %.0f keys", took, interval, credits, keys)
	if credits != 250 || keys != 1 {
		t.Fatalf("metrics say %.0f credits over %.0f keys corrected, want 250 over 1", credits, keys)
	}
}

// TestReconcileCommandPrintsItsTable: `gateway reconcile` (what `make
// reconcile` runs) finds the restored over-grant, corrects it, and prints
// key, redis, expected, drift and fixed for it.
func TestReconcileCommandPrintsItsTable(t *testing.T) {
	s := newStack(t, stackOpts{gateways: 2, pricing: testPricing, extraEnv: []string{"RECONCILE_INTERVAL=1h"}})
	k := s.staleRedis()
	host, port, _ := net.SplitHostPort(s.redis.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin(t, "./gateway/cmd/gateway"), "reconcile")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+s.dsn, "REDIS_HOST="+host, "REDIS_PORT="+port, "NATS_URL="+s.nats.URL, "API_KEY_PEPPER=e2e-pepper-0123456789", "LOG_LEVEL=error")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gateway reconcile: %v\n%s\n%s", err, out, stderr.String())
	}
	t.Logf("gateway reconcile printed:\n%s", out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "key redis expected drift fixed" {
		t.Fatalf("header %q", lines[0])
	}
	row := regexp.MustCompile(`(?m)^\s*` + k.ID + `\s+950\s+700\s+\+250\s+yes\s*$`)
	if !row.Match(out) {
		t.Fatalf("no row %s 950 700 +250 yes", k.ID)
	}
	if !strings.Contains(lines[len(lines)-1], "1 drifted, 1 corrected (250 credits)") {
		t.Fatalf("summary %q", lines[len(lines)-1])
	}
	if pg, rd := s.balances(k.ID, 1000); pg != 700 || rd != 700 {
		t.Fatalf("after reconcile: postgres %d, redis %d; want 700", pg, rd)
	}
}
