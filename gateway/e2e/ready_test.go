package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// TestReadyFollowsEachDependency stops PostgreSQL, Redis and NATS in turn
// under a running gateway: /ready answers 503 problem+json naming the one
// that is down (and the others up) while it is away, and 200 once it is back.
func TestReadyFollowsEachDependency(t *testing.T) {
	s := newStack(t, stackOpts{ownPostgres: true, noWorkers: true})
	gw := s.gwURLs[0]
	type answer struct {
		Status any               `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	ready := func() (int, string, answer) {
		resp, b := s.do("GET", gw+"/ready", nil, nil)
		var a answer
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatalf("/ready %d: %v: %s", resp.StatusCode, err, b)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), a
	}
	deps := []struct {
		name        string
		stop, start func()
	}{
		{"postgres", s.pg.Stop, s.pg.Start},
		{"redis", s.redis.Stop, s.redis.Start},
		{"nats", s.nats.Stop, s.nats.Start},
	}
	for _, d := range deps {
		d.stop()
		start := time.Now()
		eventuallyWithin(t, 30*time.Second, "/ready 503 with "+d.name+" down", func() (bool, string) {
			code, ct, a := ready()
			if code != 503 {
				return false, fmt.Sprint(code, a)
			}
			if ct != "application/problem+json" || a.Status != float64(503) {
				t.Fatalf("/ready 503 as %q: %+v", ct, a)
			}
			for _, o := range deps {
				if want := map[bool]string{true: "down", false: "up"}[o.name == d.name]; a.Checks[o.name] != want {
					t.Fatalf("checks with %s down: %v", d.name, a.Checks)
				}
			}
			return true, ""
		})
		t.Logf("%s down: /ready 503 after %v", d.name, time.Since(start).Round(time.Millisecond))
		d.start()
		start = time.Now()
		eventuallyWithin(t, 60*time.Second, "/ready 200 with "+d.name+" back", func() (bool, string) {
			code, _, a := ready()
			return code == 200 && a.Status == "ready" && len(a.Checks) == 3 &&
				a.Checks["postgres"] == "up" && a.Checks["redis"] == "up" && a.Checks["nats"] == "up", fmt.Sprint(code, a)
		})
		t.Logf("%s back: /ready 200 after %v", d.name, time.Since(start).Round(time.Millisecond))
	}
}
