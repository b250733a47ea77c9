package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

// StandIn is one stand-in binary, for Main.
type StandIn[C any] struct {
	Name        string // the service: the logs' "service" attribute and the error prefix
	DefaultPort int    // PORT's default
	// Config reads the stand-in's own settings through getenv, reporting
	// every problem at once; port is PORT as read. Nil: the zero C.
	Config func(getenv func(string) string, port int) (C, error)
	// Handler builds what is served from the settings.
	Handler func(C, *slog.Logger) (http.Handler, error)
	Options Options
}

// Main runs s the way every stand-in binary runs: its settings (PORT and
// LOG_LEVEL, then its own) from the environment, a JSON logger on stdout, its
// handler served on PORT until SIGINT or SIGTERM, then a graceful shutdown.
// It returns the exit code: 0 after a clean shutdown, 1 with the error on
// stderr otherwise.
func Main[C any](s StandIn[C]) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := s.run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", s.Name, err)
		return 1
	}
	return 0
}

func (s StandIn[C]) run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	common, err := LoadCommon(getenv, s.DefaultPort)
	var cfg C
	if s.Config != nil {
		var cerr error
		cfg, cerr = s.Config(getenv, common.Port)
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	logger := NewLogger(stdout, common.LogLevel).With("service", s.Name)
	h, err := s.Handler(cfg, logger)
	if err != nil {
		return err
	}
	return Run(ctx, logger, ":"+strconv.Itoa(common.Port), h, s.Options)
}
