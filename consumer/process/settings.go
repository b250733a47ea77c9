package process

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// Settings are the environment settings of a worker process that consumes
// the USAGE stream (billing-worker, aggregator); they are the same in every
// such worker but for the default metrics port.
type Settings struct {
	DatabaseURL   string        // DATABASE_URL
	NATSURL       string        // NATS_URL
	MetricsPort   int           // METRICS_PORT; 0 disables the metrics server
	LogLevel      slog.Level    // LOG_LEVEL
	BatchSize     int           // BATCH_SIZE: messages per transaction at most
	BatchEvents   int           // BATCH_EVENTS: events per transaction, about (a message is never split)
	AckWait       time.Duration // ACK_WAIT
	MaxAckPending int           // MAX_ACK_PENDING: messages delivered and not yet acknowledged
	FetchWait     time.Duration // FETCH_WAIT
	NakDelay      time.Duration // NAK_DELAY
	// StaleAfter (HEALTH_STALE_AFTER): /health answers 503 when the
	// consumer has not fetched successfully for this long.
	StaleAfter time.Duration
	// HandleDelay (HANDLE_DELAY) holds every batch this long before commit;
	// tests only, so it is read only with DEV_MODE=1.
	HandleDelay time.Duration
}

// SettingsFromEnv reads the settings through getenv with their defaults
// (METRICS_PORT defaults to metricsPort) and validates them, reporting every
// problem at once.
func SettingsFromEnv(getenv func(string) string, metricsPort int) (Settings, error) {
	var errs []error
	str := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	num := func(name string, def int) int {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a non-negative integer", name, v))
		}
		return n
	}
	dur := func(name string, def time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a non-negative duration", name, v))
		}
		return d
	}
	s := Settings{
		DatabaseURL:   str("DATABASE_URL", "postgres://postgres:postgres@localhost:5432/manacore?sslmode=disable"),
		NATSURL:       str("NATS_URL", nats.DefaultURL),
		MetricsPort:   num("METRICS_PORT", metricsPort),
		BatchSize:     num("BATCH_SIZE", 500),
		BatchEvents:   num("BATCH_EVENTS", 5000),
		AckWait:       dur("ACK_WAIT", 30*time.Second),
		MaxAckPending: num("MAX_ACK_PENDING", 2000),
		FetchWait:     dur("FETCH_WAIT", 2*time.Second),
		NakDelay:      dur("NAK_DELAY", time.Second),
		StaleAfter:    dur("HEALTH_STALE_AFTER", 2*time.Minute),
	}
	switch dev := getenv("DEV_MODE"); {
	case dev == "1":
		s.HandleDelay = dur("HANDLE_DELAY", 0)
	case dev != "" && dev != "0":
		errs = append(errs, fmt.Errorf("DEV_MODE: %q is neither 1 nor 0", dev))
	case getenv("HANDLE_DELAY") != "":
		errs = append(errs, errors.New("HANDLE_DELAY is a test setting, read only with DEV_MODE=1"))
	}
	if err := s.LogLevel.UnmarshalText([]byte(str("LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}
	if err := s.Validate(); err != nil {
		errs = append(errs, err)
	}
	return s, errors.Join(errs...)
}

// Validate checks the settings.
func (s Settings) Validate() error {
	var errs []error
	if s.DatabaseURL == "" {
		errs = append(errs, errors.New("DATABASE_URL is required"))
	}
	if s.NATSURL == "" {
		errs = append(errs, errors.New("NATS_URL is required"))
	}
	if s.MetricsPort < 0 || s.MetricsPort > 65535 {
		errs = append(errs, fmt.Errorf("METRICS_PORT %d is out of range", s.MetricsPort))
	}
	if s.BatchSize < 1 || s.BatchSize > 10000 {
		errs = append(errs, fmt.Errorf("BATCH_SIZE %d is not in 1..10000", s.BatchSize))
	}
	if s.BatchEvents < 1 || s.BatchEvents > 100000 {
		errs = append(errs, fmt.Errorf("BATCH_EVENTS %d is not in 1..100000", s.BatchEvents))
	}
	if s.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("ACK_WAIT %s is below 1s", s.AckWait))
	}
	if s.MaxAckPending < s.BatchSize {
		errs = append(errs, fmt.Errorf("MAX_ACK_PENDING %d is below BATCH_SIZE %d", s.MaxAckPending, s.BatchSize))
	}
	if s.FetchWait < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("FETCH_WAIT %s is below 10ms", s.FetchWait))
	}
	if s.StaleAfter < 2*s.FetchWait {
		errs = append(errs, fmt.Errorf("HEALTH_STALE_AFTER %s is below twice FETCH_WAIT %s", s.StaleAfter, s.FetchWait))
	}
	return errors.Join(errs...)
}
