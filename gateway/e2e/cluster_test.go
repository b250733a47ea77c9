package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// TestFaultsOnACluster runs three gateways and the workers on a Redis
// Cluster (three masters, a replica each) and a JetStream cluster of three
// with the stream at R3, and breaks one server of each kind under load:
// the stream's leader, the Redis master of the key's slot, a gateway.
func TestFaultsOnACluster(t *testing.T) {
	s := newStack(t, stackOpts{gateways: 3, pricing: testPricing, cluster: true,
		extraEnv: []string{"RECONCILE_INTERVAL=1s", "RECONCILE_ACTIVE_WINDOW=1h"}})
	tok := s.login("user@example.com")
	k := s.createKey(s.gwURLs[0], tok, map[string]any{"name": "cluster", "tier": "soak"})
	const grant = 1_000_000
	served := int64(0)
	// agree waits until the ledger holds one row per served call and both
	// balances equal the grant minus what was served.
	agree := func(what string) {
		t.Helper()
		eventuallyWithin(t, 60*time.Second, what, func() (bool, string) {
			rows, credits := s.ledger(k.ID)
			pg, rd := s.balances(k.ID, grant)
			return rows == served && pg == grant-credits && rd == pg,
				fmt.Sprintf("%d ledger rows (Σ %d) for %d served calls; balance postgres %d, redis %d", rows, credits, served, pg, rd)
		})
	}

	t.Run("the stream leader dies under load from the gateways", func(t *testing.T) {
		before := s.natsCluster.StreamLeader(usagev1.StreamName)
		if before == nil {
			t.Fatal("the USAGE stream has no leader")
		}
		var once sync.Once
		start := time.Now()
		counts := s.load(k.Key, 600, 24, func(done int64) {
			if done >= 150 {
				once.Do(before.Stop)
			}
		})
		t.Logf("statuses %v in %s", counts, time.Since(start).Round(time.Millisecond))
		// Events are durable in each gateway's spool while the stream has
		// no leader: every call is served.
		if counts[200] != 600 {
			t.Fatalf("statuses %v, want 600×200", counts)
		}
		served += counts[200]
		eventually(t, "a new stream leader", func() (bool, string) {
			l := s.natsCluster.StreamLeader(usagev1.StreamName)
			return l != nil && l != before, fmt.Sprintf("leader %v", l)
		})
		// No acknowledged event lost, none charged twice, the pipeline resumed.
		agree("the ledger has every served call once")
		before.Start()
	})

	t.Run("the Redis master of the key's slot dies under load", func(t *testing.T) {
		master := s.redisCluster.MasterOf("gw:{" + k.ID + "}:s")
		var once sync.Once
		var noRetryAfter atomic.Int64
		counts := map[int]int64{}
		var mu sync.Mutex
		var next atomic.Int64
		var wg sync.WaitGroup
		for c := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= 600 {
					resp, _ := s.do("POST", s.gwURLs[c%3]+"/v1/search", `{"query":"q"}`, map[string]string{"X-API-Key": k.Key})
					if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
						noRetryAfter.Add(1)
					}
					mu.Lock()
					counts[resp.StatusCode]++
					n := counts[200] + counts[503]
					mu.Unlock()
					if n >= 150 {
						once.Do(master.Stop)
					}
				}
			}()
		}
		wg.Wait()
		t.Logf("statuses %v", counts)
		// While the slot has no master the gateways refuse (503, Retry-After)
		// rather than serve calls no hold covers.
		if counts[200]+counts[503] != 600 || noRetryAfter.Load() != 0 {
			t.Fatalf("statuses %v (%d 503s without Retry-After), want only 200 and 503", counts, noRetryAfter.Load())
		}
		if counts[200] < 150 {
			t.Fatalf("only %d calls served: the promoted replica never took over", counts[200])
		}
		served += counts[200]
		s.redisCluster.WaitOK(30 * time.Second)
		if got := s.redisCluster.MasterOf("gw:{" + k.ID + "}:s"); got == master {
			t.Fatal("the dead master still serves the key's slot")
		}
		// Every gateway serves the key again within seconds of the promotion
		// (its cluster client learns the new master on its next error; on a
		// loaded machine that may take longer than 5 s).
		for i, gw := range s.gwURLs {
			eventuallyWithin(t, 20*time.Second, fmt.Sprintf("gateway %d serves the key after the failover", i), func() (bool, string) {
				got := s.status(gw, k.Key)
				if got == 200 {
					served++
				}
				return got == 200, fmt.Sprint(got)
			})
		}
		// Writes the replica had not received are repaired by the reconciler.
		agree("balances agree after the failover")
	})

	t.Run("a gateway dies; the others serve and see revocations within a second", func(t *testing.T) {
		s.gateways[2].Kill()
		for i := range 20 {
			if got := s.status(s.gwURLs[i%2], k.Key); got != 200 {
				t.Fatalf("gateway %d after another died: %d", i%2, got)
			}
		}
		served += 20
		r := s.createKey(s.gwURLs[0], tok, map[string]any{"name": "revoke", "tier": "burst"})
		if got := s.status(s.gwURLs[1], r.Key); got != 200 {
			t.Fatalf("new key at gateway 1: %d", got)
		}
		resp, b := s.do("DELETE", s.gwURLs[0]+"/api-keys/"+r.ID, nil, bearer(tok))
		if resp.StatusCode >= 300 {
			t.Fatalf("delete: %d %s", resp.StatusCode, b)
		}
		changed := time.Now()
		for {
			sent := time.Since(changed)
			if got := s.status(s.gwURLs[1], r.Key); got == http.StatusUnauthorized {
				t.Logf("revocation seen by gateway 1 after at most %s", time.Since(changed).Round(time.Millisecond))
				break
			} else if sent >= time.Second {
				t.Fatalf("a probe sent %s after the delete still got %d", sent.Round(time.Millisecond), got)
			}
			time.Sleep(5 * time.Millisecond)
		}
		agree("balances agree with a gateway gone")
	})
}
