package server

import (
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/config"
	"github.com/mana/apigw/gateway/internal/proxy"
)

// TestDefaultDrainOutlastsEveryRoute: without SHUTDOWN_TIMEOUT, a stopping
// gateway waits for the calls in flight at least as long as the slowest
// route (STT) may take, plus the wait for the call's usage event; so a
// longer route timeout, or a shorter default drain, fails here rather than
// cutting calls at a deploy.
func TestDefaultDrainOutlastsEveryRoute(t *testing.T) {
	cfg, err := config.FromEnv(func(k string) string { return map[string]string{"API_KEY_PEPPER": "drain-test-pepper-0123"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	drain := drainTimeout(cfg)
	var longest, stt time.Duration
	for _, r := range proxy.Routes() {
		longest = max(longest, r.Timeout)
		if r.Path == "/v1/stt/transcribe" {
			stt = r.Timeout
		}
	}
	if stt == 0 {
		t.Fatal("no STT route in the table")
	}
	t.Logf("default drain %v; longest route timeout %v (STT %v), durability wait %v", drain, longest, stt, cfg.PublishTimeout)
	if drain < longest+cfg.PublishTimeout || drain < stt+cfg.PublishTimeout {
		t.Fatalf("the default drain %v is shorter than the longest route's timeout %v (STT %v) plus the durability wait %v",
			drain, longest, stt, cfg.PublishTimeout)
	}
	// SHUTDOWN_TIMEOUT, when set, is the operator's choice and is kept.
	cfg.ShutdownTimeout = 30 * time.Second
	if got := drainTimeout(cfg); got != 30*time.Second {
		t.Fatalf("SHUTDOWN_TIMEOUT=30s gives a drain of %v", got)
	}
}
