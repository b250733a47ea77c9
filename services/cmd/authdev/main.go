// Command authdev is the development auth issuer (stand-in for mana-core-auth):
// it logs in the dev users and serves its JWKS for the gateway to verify
// management tokens. See package authdev.
//
// Settings: PORT (3001), JWT_ISSUER (mana-core-auth), JWT_AUDIENCE
// (mana-api-gateway), AUTH_KEY_FILE (optional; keeps the signing key across
// restarts), LOG_LEVEL (info).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/mana/apigw/services/authdev"
	"github.com/mana/apigw/services/cmd/internal/serve"
)

type config struct {
	serve.Common
	authdev.Config
}

func loadConfig(getenv func(string) string) (config, error) {
	common, err := serve.LoadCommon(getenv, 3001)
	cfg := config{Common: common, Config: authdev.Config{
		Issuer:   authdev.DefaultIssuer,
		Audience: authdev.DefaultAudience,
		KeyFile:  getenv("AUTH_KEY_FILE"),
	}}
	if v := getenv("JWT_ISSUER"); v != "" {
		cfg.Issuer = v
	}
	if v := getenv("JWT_AUDIENCE"); v != "" {
		cfg.Audience = v
	}
	return cfg, err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "authdev:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := loadConfig(os.Getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	logger := serve.NewLogger(os.Stdout, cfg.LogLevel).With("service", "authdev")
	h, err := authdev.New(cfg.Config, logger)
	if err != nil {
		return err
	}
	return serve.Run(ctx, logger, ":"+strconv.Itoa(cfg.Port), h, serve.Options{})
}
