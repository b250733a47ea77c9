package consumer

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

type coded string

func (c coded) Error() string    { return "db: " + string(c) }
func (c coded) SQLState() string { return string(c) }

func TestIsPermanent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want bool
	}{
		{errors.New("connection reset"), false},
		{coded("23505"), true},
		{fmt.Errorf("record: %w", coded("22P02")), true},
		{coded("40001"), false}, // serialization failure: retry
		{coded("08006"), false},
		{fmt.Errorf("ensure partition: %w: %w", ErrTransient, coded("23505")), false}, // a DDL race, not bad data
	}
	for _, tt := range tests {
		if got := Permanent(tt.err); got != tt.want {
			t.Errorf("Permanent(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	c := &Consumer{cfg: Config{NakDelay: time.Second, MaxNakDelay: 5 * time.Second}}
	for delivered, want := range map[uint64]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 5 * time.Second, 50: 5 * time.Second} {
		if got := c.backoff(delivered); got != want {
			t.Errorf("backoff(%d) = %s, want %s", delivered, got, want)
		}
	}
}
