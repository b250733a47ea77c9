package app_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mana/apigw/aggregator/internal/rollup"
	"github.com/mana/apigw/services/testenv"
)

// BenchmarkAggregatorDrain measures how fast one aggregator drains a backlog
// of b.N events into api_usage and api_usage_daily (events/s), published one
// per message and in batches of 64.
func BenchmarkAggregatorDrain(b *testing.B) {
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
	e.waitUsage(int64(b.N), 10*time.Minute)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkReplay measures a full replay of b.N events into a scratch schema
// and its comparison with the live tables (events/s).
func BenchmarkReplay(b *testing.B) {
	e := newEnv(b)
	evs := testenv.UsageEvents(b.N, 50)
	e.Publish(evs, nil)
	e.start(nil)
	e.waitUsage(int64(b.N), 10*time.Minute)
	b.ResetTimer()
	start := time.Now()
	rep, err := rollup.Replay(context.Background(), rollup.ReplayConfig{DB: e.db, JS: e.JS, Logger: testenv.Logger(b),
		Start: rollup.Start{Policy: jetstream.DeliverAllPolicy}, Out: &bytes.Buffer{}})
	b.StopTimer()
	if err != nil || rep.Differs() || rep.Events != b.N {
		b.Fatalf("replay: %+v, %v", rep, err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
