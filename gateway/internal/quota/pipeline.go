package quota

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// pipeline sends the script calls of concurrent requests to Redis together,
// the way the usage publisher group-commits events: a call is written at
// once while fewer than maxInFlight pipelines are on the wire, and otherwise
// waits for one to come back and goes in the next with everything that
// queued meanwhile. Every call is still one round trip (shared), an idle
// gateway adds no delay, and a busy one pays the write and read system
// calls — its own and Redis's — once per batch instead of once per request.
// Safe for concurrent use.
type pipeline struct {
	rdb         redis.UniversalClient
	maxInFlight int
	maxBatch    int

	mu       sync.Mutex // guards pending, inflight
	pending  []*scriptCall
	inflight int
}

type scriptCall struct {
	sc   *redis.Script
	keys []string
	args []any
	cmd  *redis.Cmd
	done chan struct{}
}

func newPipeline(rdb redis.UniversalClient) *pipeline {
	return &pipeline{rdb: rdb, maxInFlight: 2, maxBatch: 128}
}

// eval runs the script like run does (EVALSHA, EVAL when Redis lost its
// script cache) as part of a shared pipeline. It waits for the answer even
// when ctx ends first: a decision Redis made (a hold taken) must reach its
// caller; the client's read and write timeouts bound the wait.
func (p *pipeline) eval(ctx context.Context, sc *redis.Script, keys []string, args ...any) *redis.Cmd {
	c := &scriptCall{sc: sc, keys: keys, args: args, done: make(chan struct{})}
	p.mu.Lock()
	p.pending = append(p.pending, c)
	batch := p.takeLocked()
	p.mu.Unlock()
	if batch != nil {
		p.exec(context.WithoutCancel(ctx), batch)
	}
	<-c.done
	return c.cmd
}

// takeLocked takes up to maxBatch pending calls when a pipeline slot is
// free. p.mu is held.
func (p *pipeline) takeLocked() []*scriptCall {
	if p.inflight >= p.maxInFlight || len(p.pending) == 0 {
		return nil
	}
	n := min(len(p.pending), p.maxBatch)
	batch := p.pending[:n:n]
	p.pending = p.pending[n:]
	if len(p.pending) == 0 {
		p.pending = nil
	}
	p.inflight++
	return batch
}

// exec sends one batch, answers its calls, and hands the slot to what
// queued meanwhile (in another goroutine, so this caller returns now).
func (p *pipeline) exec(ctx context.Context, batch []*scriptCall) {
	if len(batch) == 1 {
		c := batch[0]
		c.cmd = run(ctx, p.rdb, c.sc, c.keys, c.args...)
		close(c.done)
	} else {
		cmds := make([]*redis.Cmd, len(batch))
		// Each command carries its own error; Pipelined's is the first of them.
		_, _ = p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
			for i, c := range batch {
				cmds[i] = c.sc.EvalSha(ctx, pl, c.keys, c.args...)
			}
			return nil
		})
		for i, c := range batch {
			cmd := cmds[i]
			if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
				cmd = c.sc.Eval(ctx, p.rdb, c.keys, c.args...)
			}
			c.cmd = cmd
			close(c.done)
		}
	}
	p.mu.Lock()
	p.inflight--
	next := p.takeLocked()
	p.mu.Unlock()
	if next != nil {
		go p.exec(ctx, next)
	}
}
