package proxy

import (
	"testing"
	"time"
)

// TestBodyDeadline: a body gets its route's BodyTimeout, then one more
// second per MinBodyRate bytes received, never past the request's whole
// read budget.
func TestBodyDeadline(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		received int64
		want     time.Duration
	}{
		{"nothing yet", 0, 10 * time.Second},
		{"one byte", 1, 10 * time.Second},
		{"five seconds' worth", 5 * MinBodyRate, 15 * time.Second},
		{"the whole budget", 1 << 40, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &deadlineBody{start: start, initial: 10 * time.Second, until: start.Add(time.Minute), n: tc.received}
			if got := b.deadline().Sub(start); got != tc.want {
				t.Fatalf("deadline after %d bytes: %v, want %v", tc.received, got, tc.want)
			}
		})
	}
}
