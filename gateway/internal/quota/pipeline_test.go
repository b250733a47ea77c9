package quota

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/mana/apigw/services/testenv"
)

// pipelineCounter counts what the client sends: single commands and pipelines.
type pipelineCounter struct{ single, pipelines, piped atomic.Int64 }

func (h *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.single.Add(1); return next(ctx, cmd) }
}

func (h *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		h.piped.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// TestPipelineSharesRoundTripsAndKeepsEveryAnswer: concurrent script calls
// go to Redis in few pipelines, each caller gets its own answer, and a
// script cache lost meanwhile (SCRIPT FLUSH) is reloaded per command.
func TestPipelineSharesRoundTripsAndKeepsEveryAnswer(t *testing.T) {
	rd := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr, Protocol: 2})
	t.Cleanup(func() { _ = rdb.Close() })
	hooks := &pipelineCounter{}
	rdb.AddHook(hooks)
	p := newPipeline(rdb)
	sc := redis.NewScript(`return redis.call('INCRBY', KEYS[1], ARGV[1])`)
	ctx := t.Context()
	for round, flush := range []bool{false, true} {
		if flush {
			if err := rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		const n = 400
		var wg sync.WaitGroup
		results := make([]int64, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := p.eval(ctx, sc, []string{"counter"}, 1).Int64()
				if err != nil {
					t.Error(err)
				}
				results[i] = v
			}()
		}
		wg.Wait()
		// Every caller saw its own increment: the answers are 1..n (plus the
		// previous round's n), each exactly once.
		seen := map[int64]bool{}
		for _, v := range results {
			if v <= int64(round*n) || v > int64((round+1)*n) || seen[v] {
				t.Fatalf("round %d: answer %d twice or out of range", round, v)
			}
			seen[v] = true
		}
	}
	got, err := rdb.Get(ctx, "counter").Int64()
	if err != nil || got != 800 {
		t.Fatalf("counter %d, %v; want 800", got, err)
	}
	// 800 calls from 400 concurrent callers: batched, not one round trip each.
	trips := hooks.single.Load() + hooks.pipelines.Load()
	t.Logf("800 calls in %d round trips (%d pipelines carrying %d commands, %d single commands)",
		trips, hooks.pipelines.Load(), hooks.piped.Load(), hooks.single.Load())
	if hooks.pipelines.Load() == 0 || trips > 400 {
		t.Fatalf("%d round trips for 800 concurrent calls: not pipelined", trips)
	}
}
