package server

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mana/apigw/services/testenv"
)

// TestDependencyUpFollowsARealRedis: gateway_dependency_up{dependency="redis"}
// is 1 while redis-server answers, 0 once it is killed, and 1 again after a
// restart on the same address.
func TestDependencyUpFollowsARealRedis(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := testenv.StartRedis(t)
	rdb := r.Client()
	reg := prometheus.NewRegistry()
	p := newDepProber(reg, []Check{{"redis", func(ctx context.Context) error { return rdb.Ping(ctx).Err() }}})
	go p.Run(ctx, 50*time.Millisecond)
	up := p.up.WithLabelValues("redis")
	wait := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for testutil.ToFloat64(up) != want {
			if time.Now().After(deadline) {
				t.Fatalf("gateway_dependency_up{dependency=redis} = %v, want %v", testutil.ToFloat64(up), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait(1)
	r.Stop()
	wait(0)
	r.Start()
	wait(1)
	if n := testutil.CollectAndCount(reg, "gateway_dependency_up"); n != 1 {
		t.Fatalf("%d series, want 1", n)
	}
}
