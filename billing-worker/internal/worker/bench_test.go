package worker_test

import (
	"testing"
	"time"

	"github.com/mana/apigw/services/testenv"
)

// BenchmarkBillingDrain measures how fast one worker drains a backlog of
// b.N events into the ledger (events/s, end to end through NATS and
// Postgres), published one per message and in batches of 64.
func BenchmarkBillingDrain(b *testing.B) {
	b.Run("events", func(b *testing.B) { benchDrain(b, 1) })
	b.Run("batches64", func(b *testing.B) { benchDrain(b, 64) })
}

func benchDrain(b *testing.B, perMessage int) {
	e := newEnv(b)
	evs := testenv.UsageEvents(b.N, 50)
	if perMessage == 1 {
		e.Publish(evs, nil)
	} else {
		e.PublishBatches(evs, perMessage)
	}
	b.ResetTimer()
	start := time.Now()
	e.start(nil)
	e.waitLedger(int64(b.N), 10*time.Minute)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
