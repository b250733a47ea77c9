package consumer

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the consumer's Prometheus series, named <namespace>_...
type Metrics struct {
	processed   prometheus.Counter
	duplicates  prometheus.Counter
	deadLetters prometheus.Counter
	redelivered prometheus.Counter
	batchErrors prometheus.Counter
	fetchErrors prometheus.Counter
	recreated   *prometheus.CounterVec
	batchSize   prometheus.Histogram
	batchEvents prometheus.Histogram
	batchTime   prometheus.Histogram
	pending     prometheus.Gauge
	ackFloorLag prometheus.Gauge
	lastFetch   prometheus.Gauge
}

// NewMetrics creates the series and registers them with reg.
func NewMetrics(namespace string, reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		processed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "events_processed_total",
			Help: "Events applied for the first time (new rows committed)."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "events_duplicate_total",
			Help: "Events already applied before (redelivered or republished); they changed nothing."}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "events_dead_lettered_total",
			Help: "Messages, or single events of a batch, that can never be processed, written to dead_letters."}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "messages_redelivered_total",
			Help: "Messages received with a delivery count above one."}),
		batchErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "batch_errors_total",
			Help: "Messages whose transaction failed; they were negatively acknowledged."}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "fetch_errors_total",
			Help: "Fetches from the durable consumer that failed."}),
		recreated: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "recreated_total",
			Help: "Durable consumers (what=consumer) or USAGE streams (what=stream) found deleted and re-created."}, []string{"what"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "batch_size",
			Help: "Messages per fetched set (one transaction).", Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000}}),
		batchEvents: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "batch_events",
			Help: "Events per fetched set (one transaction).", Buckets: []float64{1, 5, 25, 100, 250, 500, 1000, 2500, 5000, 10000}}),
		batchTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "batch_duration_seconds",
			Help: "Time to apply and commit one fetched set.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "consumer_pending_messages",
			Help: "Messages in the stream not yet delivered to the consumer (consumer lag)."}),
		ackFloorLag: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "consumer_ack_floor_lag_messages",
			Help: "Stream sequences between the consumer's ack floor and its last delivered message (delivered, not yet acknowledged)."}),
		lastFetch: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "consumer_last_success_timestamp_seconds",
			Help: "When a fetch (answered by the server) or a commit last succeeded, Unix seconds."}),
	}
	for _, c := range []prometheus.Collector{m.processed, m.duplicates, m.deadLetters, m.redelivered,
		m.batchErrors, m.fetchErrors, m.recreated, m.batchSize, m.batchEvents, m.batchTime, m.pending, m.ackFloorLag, m.lastFetch} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
