// Command bench is the harness behind `make bench`: on servers that
// .ci/bench.sh started (`.ci/servers.sh start bench`: PostgreSQL, Redis,
// NATS) it starts the search stand-in, nginx, a bare Go reverse proxy and
// the gateway (as children run by services/testenv/proc), measures them
// side by side with vegeta (closed-loop max throughput, open-loop latency at
// fixed rates, CPU per request, peak RSS), measures the usage pipeline
// (billing worker, aggregator, a bare JetStream consumer, replay) and writes
// the report (docs/benchmarks.md).
//
// usage: bench run     the harness (settings: BENCH_* in the environment, see config.go)
//
//	bench proxy   a bare httputil.ReverseProxy: PORT, TARGET_URL (the "features off" baseline)
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("service", "bench")
	cmd := "run"
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "run":
		cfg, err := configFromEnv(os.Getenv)
		if err != nil {
			return fmt.Errorf("configuration:\n%w", err)
		}
		return runHarness(ctx, cfg, logger)
	case "proxy":
		cfg, err := proxyConfigFromEnv(os.Getenv)
		if err != nil {
			return fmt.Errorf("configuration:\n%w", err)
		}
		return runProxy(ctx, cfg, logger)
	}
	return fmt.Errorf("unknown command %q (want run or proxy)", cmd)
}
