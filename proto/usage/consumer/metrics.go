package consumer

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the consumer's Prometheus series, named <namespace>_...
type Metrics struct {
	processed   prometheus.Counter
	duplicates  prometheus.Counter
	deadLetters prometheus.Counter
	redelivered prometheus.Counter
	batchErrors prometheus.Counter
	batchSize   prometheus.Histogram
	batchTime   prometheus.Histogram
	pending     prometheus.Gauge
}

// NewMetrics creates the series and registers them with reg.
func NewMetrics(namespace string, reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		processed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "events_processed_total",
			Help: "Events applied for the first time (new rows committed)."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "events_duplicate_total",
			Help: "Events already applied before (redelivered or republished); they changed nothing."}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "events_dead_lettered_total",
			Help: "Messages that can never be processed, written to dead_letters and terminated."}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "messages_redelivered_total",
			Help: "Messages received with a delivery count above one."}),
		batchErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "batch_errors_total",
			Help: "Batches whose transaction failed; their messages were negatively acknowledged."}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "batch_size",
			Help: "Messages per batch.", Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000}}),
		batchTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "batch_duration_seconds",
			Help: "Time to apply and commit one batch.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "consumer_pending_messages",
			Help: "Messages in the stream not yet delivered to the consumer (consumer lag)."}),
	}
	for _, c := range []prometheus.Collector{m.processed, m.duplicates, m.deadLetters, m.redelivered,
		m.batchErrors, m.batchSize, m.batchTime, m.pending} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// MetricsServer serves /metrics from reg and /health (always 200 while the
// process runs), with timeouts.
func MetricsServer(addr string, reg *prometheus.Registry) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	return &http.Server{
		Addr: addr, Handler: mux,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
	}
}
