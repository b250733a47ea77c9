package process_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/consumer/process"
)

func TestSettingsFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		env       map[string]string
		check     func(*testing.T, process.Settings)
		withError func(*testing.T, error)
	}{
		{name: "defaults", check: func(t *testing.T, s process.Settings) {
			if s.MetricsPort != 9100 || s.NATSURL != "nats://127.0.0.1:4222" || s.BatchSize != 500 || s.AckWait != 30*time.Second ||
				s.MaxAckPending != 2000 || s.FetchWait != 2*time.Second || s.NakDelay != time.Second || s.HandleDelay != 0 ||
				s.BatchEvents != 5000 || s.StaleAfter != 2*time.Minute ||
				!strings.Contains(s.DatabaseURL, "manacore") || s.LogLevel.String() != "INFO" {
				t.Errorf("defaults = %+v", s)
			}
		}},
		{name: "overrides", env: map[string]string{"METRICS_PORT": "0", "ACK_WAIT": "1s", "HANDLE_DELAY": "2s", "LOG_LEVEL": "debug", "DEV_MODE": "1"},
			check: func(t *testing.T, s process.Settings) {
				if s.MetricsPort != 0 || s.AckWait != time.Second || s.HandleDelay != 2*time.Second || s.LogLevel.String() != "DEBUG" {
					t.Errorf("settings = %+v", s)
				}
			}},
		{name: "all problems at once",
			env: map[string]string{"METRICS_PORT": "x", "ACK_WAIT": "soon", "BATCH_SIZE": "0", "LOG_LEVEL": "loud", "FETCH_WAIT": "1ms",
				"BATCH_EVENTS": "0", "HEALTH_STALE_AFTER": "never"},
			withError: func(t *testing.T, err error) {
				for _, s := range []string{"METRICS_PORT", "ACK_WAIT", "BATCH_SIZE", "LOG_LEVEL", "FETCH_WAIT", "BATCH_EVENTS", "HEALTH_STALE_AFTER"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not name %s", err, s)
					}
				}
			}},
		{name: "test knob outside development", env: map[string]string{"HANDLE_DELAY": "2s"},
			withError: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "HANDLE_DELAY") || !strings.Contains(err.Error(), "DEV_MODE") {
					t.Errorf("error %q", err)
				}
			}},
		{name: "stale after below twice the fetch wait", env: map[string]string{"FETCH_WAIT": "2s", "HEALTH_STALE_AFTER": "3s"},
			withError: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "HEALTH_STALE_AFTER") {
					t.Errorf("error %q", err)
				}
			}},
		{name: "max ack pending below batch size", env: map[string]string{"BATCH_SIZE": "600", "MAX_ACK_PENDING": "500"},
			withError: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "MAX_ACK_PENDING") {
					t.Errorf("error %q", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := process.SettingsFromEnv(func(k string) string { return tt.env[k] }, 9100)
			if tt.withError != nil {
				if err == nil {
					t.Fatal("no error")
				}
				tt.withError(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
		})
	}
}
