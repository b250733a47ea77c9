package worker_test

import (
	"testing"
	"time"

	"github.com/mana/apigw/services/testenv"
)

// BenchmarkBillingDrain measures how fast one worker drains a backlog of
// b.N events into the ledger (events/s, end to end through NATS and Postgres).
func BenchmarkBillingDrain(b *testing.B) {
	e := newEnv(b)
	evs := testenv.UsageEvents(b.N, 50)
	e.Publish(evs, nil)
	b.ResetTimer()
	start := time.Now()
	e.start(nil)
	e.waitLedger(int64(b.N), 10*time.Minute)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
