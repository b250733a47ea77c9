// Command stt is the local stand-in for mana-stt: it accepts WAV uploads and
// reports their duration with a placeholder transcript. See package stt.
//
// Settings: PORT (3020), MAX_UPLOAD_BYTES (209715200), LOG_LEVEL (info).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/mana/apigw/services/cmd/internal/serve"
	"github.com/mana/apigw/services/stt"
)

type config struct {
	serve.Common
	stt.Config
}

func loadConfig(getenv func(string) string) (config, error) {
	common, err := serve.LoadCommon(getenv, 3020)
	errs := []error{err}
	cfg := config{Common: common}
	if v := getenv("MAX_UPLOAD_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("MAX_UPLOAD_BYTES=%q: want a positive number of bytes", v))
		}
		cfg.MaxUploadBytes = n
	}
	return cfg, errors.Join(errs...)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stt:", err)
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
	logger := serve.NewLogger(os.Stdout, cfg.LogLevel).With("service", "stt")
	h, err := stt.New(cfg.Config, logger)
	if err != nil {
		return err
	}
	// Uploads of up to 200 MB need longer than the default read timeout.
	return serve.Run(ctx, logger, ":"+strconv.Itoa(cfg.Port), h, serve.Options{ReadTimeout: 10 * time.Minute, WriteTimeout: 11 * time.Minute})
}
