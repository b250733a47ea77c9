// Package serve runs a stand-in's http.Handler the same way in every
// stand-in binary: a JSON slog logger, an http.Server with read, write and
// idle timeouts, and a graceful shutdown when the context ends. It also reads
// the settings every stand-in shares (PORT, LOG_LEVEL).
package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Options are the server's timeouts; zero values take the defaults noted.
type Options struct {
	ReadHeaderTimeout time.Duration // default 5s
	ReadTimeout       time.Duration // whole request, body included; default 30s
	WriteTimeout      time.Duration // default 60s
	IdleTimeout       time.Duration // default 120s
	ShutdownTimeout   time.Duration // how long in-flight requests may drain; default 15s
}

func (o *Options) withDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, 5*time.Second)
	def(&o.ReadTimeout, 30*time.Second)
	def(&o.WriteTimeout, 60*time.Second)
	def(&o.IdleTimeout, 120*time.Second)
	def(&o.ShutdownTimeout, 15*time.Second)
}

// Common are the settings shared by every stand-in.
type Common struct {
	Port     int
	LogLevel slog.Level
}

// LoadCommon reads PORT (default defaultPort) and LOG_LEVEL (default info)
// through getenv, reporting every problem at once.
func LoadCommon(getenv func(string) string, defaultPort int) (Common, error) {
	c := Common{Port: defaultPort, LogLevel: slog.LevelInfo}
	var errs []error
	if v := getenv("PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("PORT=%q: want a port number 1-65535", v))
		} else {
			c.Port = p
		}
	}
	if v := getenv("LOG_LEVEL"); v != "" {
		if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
			errs = append(errs, fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", v))
		}
	}
	return c, errors.Join(errs...)
}

// NewLogger returns a JSON logger writing to w at level.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

// Run serves h on addr until ctx ends, then shuts down gracefully. It returns
// nil after a clean shutdown.
func Run(ctx context.Context, logger *slog.Logger, addr string, h http.Handler, opt Options) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return Serve(ctx, logger, ln, h, opt)
}

// Serve is Run on an existing listener; it closes ln.
func Serve(ctx context.Context, logger *slog.Logger, ln net.Listener, h http.Handler, opt Options) error {
	opt.withDefaults()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: opt.ReadHeaderTimeout,
		ReadTimeout:       opt.ReadTimeout,
		WriteTimeout:      opt.WriteTimeout,
		IdleTimeout:       opt.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down", "drain", opt.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opt.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	logger.Info("stopped")
	return nil
}
