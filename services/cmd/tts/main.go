// Command tts is the local stand-in for mana-tts: it speaks with espeak-ng
// when installed, otherwise with a generated waveform. See package tts.
//
// Settings: PORT (3022), TTS_ENGINE (auto | espeak | tone), LOG_LEVEL (info).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/mana/apigw/services/cmd/internal/serve"
	"github.com/mana/apigw/services/tts"
)

type config struct {
	serve.Common
	tts.Config
}

func loadConfig(getenv func(string) string) (config, error) {
	common, err := serve.LoadCommon(getenv, 3022)
	cfg := config{Common: common, Config: tts.Config{Engine: getenv("TTS_ENGINE")}}
	if verr := cfg.Validate(); verr != nil {
		err = errors.Join(err, fmt.Errorf("TTS_ENGINE: %w", verr))
	}
	return cfg, err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tts:", err)
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
	logger := serve.NewLogger(os.Stdout, cfg.LogLevel).With("service", "tts")
	h, err := tts.New(cfg.Config, logger)
	if err != nil {
		return err
	}
	return serve.Run(ctx, logger, ":"+strconv.Itoa(cfg.Port), h, serve.Options{})
}
