// Command gateway is the Mana API gateway: the metered public edge and the
// key management API in one binary. `gateway migrate` only applies the
// database migrations; `gateway reconcile` corrects drifted Redis balances
// once and prints what it found; `gateway audit-verify` checks the audit
// trail's hash chain.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mana/apigw/gateway/internal/config"
	"github.com/mana/apigw/gateway/internal/server"
	"github.com/mana/apigw/gateway/internal/tracing"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := config.FromEnv(os.Getenv)
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return err
	}
	logger := slog.New(tracing.LogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))).With("service", "gateway")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if len(os.Args) > 1 && os.Args[1] == "migrate" {
		mctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		db, err := server.OpenDB(mctx, cfg, logger)
		if err != nil {
			return err
		}
		logger.Info("migrations applied")
		return db.Close()
	}
	if len(os.Args) > 1 && os.Args[1] == "audit-verify" {
		return server.AuditVerify(ctx, cfg, logger, os.Stdout)
	}
	if len(os.Args) > 1 && os.Args[1] == "reconcile" {
		return server.Reconcile(ctx, cfg, logger, os.Stdout)
	}
	if cfg.DevPepperWarning {
		logger.Warn("API_KEY_PEPPER is unset: using the development pepper; set a secret in production")
	}
	clients, err := server.Connect(ctx, cfg, logger)
	if err != nil {
		return err
	}
	app, err := server.Build(ctx, cfg, clients, logger)
	if err != nil {
		clients.Close()
		return err
	}
	return app.Run(ctx)
}
