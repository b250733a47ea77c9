// Command aggregator rolls usage events into api_gateway.api_usage and
// api_gateway.api_usage_daily (durable consumer "aggregator"); its replay
// subcommand rebuilds and verifies those tables from the stream, and tail
// prints events as JSON.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mana/apigw/aggregator/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
