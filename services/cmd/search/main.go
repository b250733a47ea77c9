// Command search is the local stand-in for mana-search: BM25 over a shipped
// corpus and SSRF-guarded page extraction. See package search.
//
// Settings: PORT (3021), PUBLIC_URL (http://localhost:$PORT; the base of
// result links), EXTRACT_ALLOW_HOSTS (comma-separated host:port that
// extraction may reach although they are not public, e.g. localhost:3021 for
// the stand-in's own pages), EXTRACT_TIMEOUT (10s), LOG_LEVEL (info).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mana/apigw/services/cmd/internal/serve"
	"github.com/mana/apigw/services/search"
)

type config struct {
	serve.Common
	search.Config
}

func loadConfig(getenv func(string) string) (config, error) {
	common, err := serve.LoadCommon(getenv, 3021)
	errs := []error{err}
	cfg := config{Common: common, Config: search.Config{PublicURL: getenv("PUBLIC_URL")}}
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://localhost:" + strconv.Itoa(cfg.Port)
	}
	for _, hp := range strings.Split(getenv("EXTRACT_ALLOW_HOSTS"), ",") {
		if hp = strings.TrimSpace(hp); hp != "" {
			cfg.ExtractAllowHosts = append(cfg.ExtractAllowHosts, hp)
		}
	}
	if v := getenv("EXTRACT_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("EXTRACT_TIMEOUT=%q: want a positive duration like 10s", v))
		}
		cfg.ExtractTimeout = d
	}
	return cfg, errors.Join(errs...)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "search:", err)
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
	logger := serve.NewLogger(os.Stdout, cfg.LogLevel).With("service", "search")
	h, err := search.New(cfg.Config, logger)
	if err != nil {
		return err
	}
	return serve.Run(ctx, logger, ":"+strconv.Itoa(cfg.Port), h, serve.Options{})
}
