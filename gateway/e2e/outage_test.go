package e2e

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestNATSOutage is invariant 2: NATS stops for a while (30 s, or
// NATS_OUTAGE_SECONDS) while the gateway serves traffic. Every 2xx has
// exactly one ledger entry after recovery, and the spool is empty.
func TestNATSOutage(t *testing.T) {
	outage := envSeconds(t, "NATS_OUTAGE_SECONDS", 30*time.Second)
	s := newStack(t, stackOpts{pricing: testPricing})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "soak", "tier": "soak"})

	var served, failed atomic.Int64
	var statuses sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, _ := s.do("POST", gw+"/v1/search", `{"query":"quantum"}`, map[string]string{"X-API-Key": k.Key})
				if resp.StatusCode == 200 {
					served.Add(1)
				} else {
					failed.Add(1)
					v, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
					v.(*atomic.Int64).Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	time.Sleep(2 * time.Second)
	s.nats.Stop()
	downAt := served.Load()
	time.Sleep(outage)
	duringOutage := served.Load() - downAt
	// What was served meanwhile waits in the spool: the calls were made
	// durable there, not lost nor refused.
	spooled := s.spoolBytes(0)
	s.nats.Start()
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	statuses.Range(func(k, v any) bool { t.Logf("status %v: %d", k, v.(*atomic.Int64).Load()); return true })
	msg := fmt.Sprintf("NATS OUTAGE %v: %d calls served (%d while NATS was down), %d not served", outage, served.Load(), duringOutage, failed.Load())
	t.Log(msg)
	fmt.Println(msg)
	if duringOutage == 0 {
		t.Fatal("nothing was served while NATS was down")
	}
	if failed.Load() != 0 {
		t.Fatalf("%d calls were refused during the outage", failed.Load())
	}
	if spooled == 0 {
		t.Fatalf("the spool was empty after %d calls served with NATS down", duringOutage)
	}
	t.Logf("%d bytes spooled at the end of the outage", spooled)
	// A batch whose acknowledgement was lost with NATS is redelivered after
	// the billing consumer's AckWait (30 s); the ledger absorbs the repeat.
	eventuallyWithin(t, 90*time.Second, "ledger holds every served call", func() (bool, string) {
		rows, credits := s.ledger(k.ID)
		if rows == served.Load() && credits == served.Load() {
			return true, ""
		}
		var dead []string
		if err := s.db.Select(&dead, `SELECT reason FROM api_gateway.dead_letters`); err != nil {
			return false, fmt.Sprintf("rows %d credits %d of %d; dead letters: %v", rows, credits, served.Load(), err)
		}
		return false, fmt.Sprintf("rows %d credits %d of %d; stream holds %d; dead letters %v", rows, credits, served.Load(), s.eventsOf(k.ID), dead)
	})
	var dups int
	if err := s.db.Get(&dups, `SELECT count(*) - count(DISTINCT event_id) FROM api_gateway.credit_ledger`); err != nil || dups != 0 {
		t.Fatalf("duplicates %d (%v)", dups, err)
	}
	eventually(t, "spool empty", func() (bool, string) {
		n := s.spoolBytes(0)
		return n == 0, fmt.Sprint(n, " bytes")
	})
	pg, rd := s.balances(k.ID, 1000000)
	if pg != rd {
		t.Fatalf("balances disagree: postgres %d, redis %d", pg, rd)
	}
}

// spoolBytes is the size of gateway i's spool files.
func (s *stack) spoolBytes(i int) int64 {
	s.t.Helper()
	entries, err := os.ReadDir(s.spools[i])
	if err != nil {
		s.t.Fatalf("read the spool: %v", err)
	}
	var total int64
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue // rotated away meanwhile
		}
		total += info.Size()
	}
	return total
}

// envSeconds is the duration the environment variable name gives in whole
// seconds, or def when it is unset; a value that is not a number fails t.
func envSeconds(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return time.Duration(n) * time.Second
}
