package proxy_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// failFirstAdjust fails the first balance adjustment a settlement sends to
// Redis (the script call whose keys include the adjustment's op key):
// before Redis sees it, or after Redis applied it, as when the answer is
// lost on the way back.
type failFirstAdjust struct {
	applied bool // the failed try reached Redis
	failed  atomic.Bool
}

func (f *failFirstAdjust) isAdjust(cmd redis.Cmder) bool {
	for _, a := range cmd.Args() {
		if s, ok := a.(string); ok && strings.Contains(s, ":adj:") {
			return true
		}
	}
	return false
}

func (f *failFirstAdjust) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f *failFirstAdjust) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !f.isAdjust(cmd) || !f.failed.CompareAndSwap(false, true) {
			return next(ctx, cmd)
		}
		if f.applied {
			_ = next(ctx, cmd)
		}
		err := errors.New("injected: the adjustment's answer was lost")
		cmd.SetErr(err)
		return err
	}
}
func (f *failFirstAdjust) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestAFailedSettlementIsRetried: the backend refuses a bulk extract that
// held 3 credits, and the adjustment giving them back fails once — before
// Redis applied it, or after (the answer lost). The settlement is tried
// again, and the balance ends exact: not 3 short, and not 3 over either,
// since a try whose answer was lost is not applied twice.
func TestAFailedSettlementIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name    string
		applied bool
	}{{"the try never reached Redis", false}, {"the answer was lost", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ev := newEnv(t, "capture", "capture", "capture")
			secret, k := ev.key("pro")
			hook := &failFirstAdjust{applied: tc.applied}
			ev.rdb.AddHook(hook)
			ev.capture.status.Store(500)
			resp, b := ev.do("POST", "/v1/extract/bulk", secret, "application/json", `{"urls":["https://a.example","https://b.example","https://c.example"]}`)
			if resp.StatusCode != 500 {
				t.Fatalf("the refused call: %d %s", resp.StatusCode, b)
			}
			if !hook.failed.Load() {
				t.Fatal("no adjustment was sent: the test proves nothing")
			}
			if got := ev.balance(k); got != 5000 {
				t.Fatalf("balance %d after the refused call, want 5000", got)
			}
			quotaHeaders(t, "refused after a failed settlement", resp, "100", 5000)
		})
	}
}
