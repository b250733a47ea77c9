// Package delivery owns the way of a webhook event from the outbox to its
// endpoints. Producers write the event to api_gateway.webhook_events in
// the transaction of the change it reports (package webhook). The Relay
// publishes it to the JetStream stream WEBHOOKS and marks it relayed; the
// FanOut consumes the stream and makes one row of
// api_gateway.webhook_deliveries per subscribed endpoint; the Worker claims
// the due rows, posts each event to its endpoint signed as the Standard
// Webhooks specification says, and records the outcome, retrying with
// exponential backoff and disabling an endpoint that has failed for days;
// the Pruner deletes what is settled once it is older than the retention.
//
// Delivery is at least once: a row is leased while it is sent, and a worker
// that dies mid-send leaves it to be sent again when the lease ends, under
// the same webhook-id, so receivers dedupe on it.
package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/proto/webhook"
)

// DefaultBackoff is the wait after each failed attempt: eight attempts over
// about a day (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the first).
var DefaultBackoff = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
	5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

// Config tunes the worker. Zero values take the defaults.
type Config struct {
	// AllowHosts may be dialled although they are not public (development).
	AllowHosts AllowList
	// Timeout bounds one attempt, connect to last byte (default 10s).
	Timeout time.Duration
	// Backoff is the wait after the n-th failed attempt; a delivery gets
	// len(Backoff)+1 attempts (default DefaultBackoff).
	Backoff []time.Duration
	// DisableAfter disables an endpoint whose every attempt failed for this
	// long (default 5 days).
	DisableAfter time.Duration
	// Poll is how often due deliveries are looked for (default 1s).
	Poll time.Duration
	// Batch caps the deliveries claimed at once and Concurrency those sent
	// at once (defaults 32 and 8).
	Batch, Concurrency int
	// Lease is how long a claimed delivery is not claimed again (default
	// Timeout × ⌈Batch/Concurrency⌉ + 20s, so the last of a batch is sent
	// within it): after a crash it is sent again once the lease ends.
	Lease time.Duration
	// Retention is how long settled events and deliveries are kept, and
	// the WEBHOOKS stream's messages (default 30 days); PruneEvery is how
	// often the older ones are deleted (default 1h).
	Retention, PruneEvery time.Duration
	// Replicas of the WEBHOOKS stream on a JetStream cluster (default 1).
	Replicas int
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Timeout < 0 || c.DisableAfter < 0 || c.Poll < 0 || c.Lease < 0 || c.Retention < 0 || c.PruneEvery < 0 {
		errs = append(errs, errors.New("delivery: durations must not be negative"))
	}
	if c.Batch < 0 || c.Concurrency < 0 || c.Replicas < 0 {
		errs = append(errs, errors.New("delivery: Batch, Concurrency and Replicas must not be negative"))
	}
	for _, b := range c.Backoff {
		if b <= 0 {
			errs = append(errs, errors.New("delivery: every Backoff step must be positive"))
			break
		}
	}
	if c.Lease > 0 && c.Timeout > 0 && c.Lease <= c.Timeout {
		errs = append(errs, errors.New("delivery: Lease must be longer than Timeout"))
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Backoff == nil {
		c.Backoff = DefaultBackoff
	}
	if c.DisableAfter == 0 {
		c.DisableAfter = 5 * 24 * time.Hour
	}
	if c.Poll == 0 {
		c.Poll = time.Second
	}
	if c.Batch == 0 {
		c.Batch = 32
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Retention == 0 {
		c.Retention = 30 * 24 * time.Hour
	}
	if c.PruneEvery == 0 {
		c.PruneEvery = time.Hour
	}
	if c.Lease == 0 {
		// Long enough for the last of a batch: it may start only after
		// Batch/Concurrency rounds of sends before it.
		rounds := (c.Batch + c.Concurrency - 1) / c.Concurrency
		c.Lease = time.Duration(rounds)*c.Timeout + 20*time.Second
	}
}

// Metrics are the series of the relay, the fan-out, the sender and the
// pruner.
type Metrics struct {
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	lag        prometheus.Gauge
	outboxLag  prometheus.Gauge
	relayed    prometheus.Counter
	created    prometheus.Counter
	pruned     prometheus.Counter
	disabled   prometheus.Counter
}

// NewMetrics registers the series on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "webhook_deliveries_total",
			Help: "Webhook delivery attempts by outcome: succeeded, retry (failed, tried again later), failed (gave up)."}, []string{"outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "webhook_delivery_duration_seconds",
			Help:    "Time of one delivery attempt, from connect to the end of the answer, by outcome.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"outcome"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "webhook_delivery_lag_seconds",
			Help: "How long the oldest due webhook delivery has waited (0 when none is due)."}),
		outboxLag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "webhook_outbox_lag_seconds",
			Help: "Age of the oldest webhook event not yet relayed from the outbox to the WEBHOOKS stream (0 when none waits)."}),
		relayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "webhook_events_relayed_total",
			Help: "Webhook events published from the outbox to the WEBHOOKS stream and marked relayed."}),
		created: prometheus.NewCounter(prometheus.CounterOpts{Name: "webhook_deliveries_created_total",
			Help: "Webhook deliveries made by the fan-out (one per event and subscribed endpoint)."}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{Name: "webhook_events_pruned_total",
			Help: "Settled webhook events deleted, with their deliveries, after the retention."}),
		disabled: prometheus.NewCounter(prometheus.CounterOpts{Name: "webhook_endpoints_disabled_total",
			Help: "Webhook endpoints disabled because every delivery failed for days."}),
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.latency, m.lag, m.outboxLag, m.relayed, m.created, m.pruned, m.disabled} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("delivery metrics: %w", err)
		}
	}
	for _, o := range []string{"succeeded", "retry", "failed"} {
		m.deliveries.WithLabelValues(o)
		m.latency.WithLabelValues(o)
	}
	return m, nil
}

// Worker sends the due deliveries.
type Worker struct {
	cfg     Config
	db      *sqlx.DB
	client  *http.Client
	metrics *Metrics
	logger  *slog.Logger
	now     func() time.Time
	wake    chan struct{}
}

// New validates cfg and returns a worker on db.
func New(cfg Config, db *sqlx.DB, metrics *Metrics, logger *slog.Logger) (*Worker, error) {
	errs := []error{cfg.Validate()}
	if db == nil {
		errs = append(errs, errors.New("delivery: db is required"))
	}
	if metrics == nil {
		errs = append(errs, errors.New("delivery: metrics are required"))
	}
	if logger == nil {
		errs = append(errs, errors.New("delivery: logger is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.defaults()
	d := newDialer(cfg.AllowHosts, cfg.Timeout)
	tr := &http.Transport{
		Proxy:                  nil, // a proxy would connect where the dialer cannot look
		DialContext:            d.DialContext,
		TLSHandshakeTimeout:    cfg.Timeout,
		ResponseHeaderTimeout:  cfg.Timeout,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	client := &http.Client{Transport: tr, Timeout: cfg.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			// Only 307 and 308 keep the method and the signed body; after
			// a 301, 302 or 303 the client would send a bodiless GET, and a
			// 2xx to that would be taken for a delivery. Those answers are
			// failures, recorded with their status.
			if c := req.Response.StatusCode; c != http.StatusTemporaryRedirect && c != http.StatusPermanentRedirect {
				return http.ErrUseLastResponse
			}
			if len(via) >= 3 {
				return errors.New("stopped after 3 redirects")
			}
			return nil // the next hop is dialled through the same checks
		}}
	return &Worker{cfg: cfg, db: db, client: client, metrics: metrics, logger: logger, now: time.Now,
		wake: make(chan struct{}, 1)}, nil
}

// Wake makes Run look for due deliveries now rather than at its next poll.
// It never blocks; safe for concurrent use.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run sends due deliveries until ctx is done, then lets the attempts in
// flight finish (each is bounded by Timeout) and returns.
func (w *Worker) Run(ctx context.Context) error {
	w.logger.InfoContext(ctx, "webhook delivery started", "poll", w.cfg.Poll, "timeout", w.cfg.Timeout, "attempts", len(w.cfg.Backoff)+1)
	t := time.NewTicker(w.cfg.Poll)
	defer t.Stop()
	for {
		for {
			n, err := w.RunOnce(ctx)
			if err != nil && ctx.Err() == nil {
				w.logger.WarnContext(ctx, "webhook delivery round failed", "err", err)
			}
			if n < w.cfg.Batch || err != nil || ctx.Err() != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-w.wake:
		}
	}
}

// due is a claimed delivery with what sending it needs.
type due struct {
	EndpointID string    `db:"endpoint_id"`
	EventID    string    `db:"event_id"`
	Attempts   int       `db:"attempts"`
	URL        string    `db:"url"`
	Secret     string    `db:"secret"`
	Payload    []byte    `db:"payload"`
	OwnerID    string    `db:"owner_id"`
	Created    time.Time `db:"created_at"`
}

const claimDue = `
WITH picked AS (
    SELECT d.endpoint_id, d.event_id FROM api_gateway.webhook_deliveries d
    JOIN api_gateway.webhook_endpoints e ON e.id = d.endpoint_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND e.deleted_at IS NULL AND e.disabled_at IS NULL
    ORDER BY d.next_attempt_at
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE api_gateway.webhook_deliveries d SET attempts = d.attempts + 1, last_attempt_at = $1, next_attempt_at = $3, leased_until = $3
    FROM picked WHERE d.endpoint_id = picked.endpoint_id AND d.event_id = picked.event_id
    RETURNING d.endpoint_id, d.event_id, d.attempts, d.created_at
)
SELECT c.endpoint_id, c.event_id, c.attempts, c.created_at, e.url, e.secret, e.owner_id, ev.payload
FROM claimed c
JOIN api_gateway.webhook_endpoints e ON e.id = c.endpoint_id
JOIN api_gateway.webhook_events ev ON ev.id = c.event_id`

// RunOnce claims the due deliveries (at most Batch), sends them and records
// the outcomes; it returns how many it claimed.
func (w *Worker) RunOnce(ctx context.Context) (int, error) {
	now := w.now().UTC()
	var lagged *time.Time
	if err := w.db.GetContext(ctx, &lagged, `SELECT min(next_attempt_at) FROM api_gateway.webhook_deliveries
		WHERE status = 'pending' AND next_attempt_at <= $1`, now); err != nil {
		return 0, fmt.Errorf("webhook outbox lag: %w", err)
	}
	if lagged == nil {
		w.metrics.lag.Set(0)
	} else {
		w.metrics.lag.Set(now.Sub(*lagged).Seconds())
	}
	var batch []due
	if err := w.db.SelectContext(ctx, &batch, claimDue, now, w.cfg.Batch, now.Add(w.cfg.Lease)); err != nil {
		return 0, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	sem := make(chan struct{}, w.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, d := range batch {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			w.deliver(ctx, d)
		}()
	}
	wg.Wait()
	return len(batch), nil
}

// attempt is what one POST got.
type attempt struct {
	status int // 0: no answer
	err    string
}

func (a attempt) ok() bool { return a.status >= 200 && a.status < 300 }

// deliver sends d once and records the outcome. It records even when ctx
// ended meanwhile: the attempt happened.
func (w *Worker) deliver(ctx context.Context, d due) {
	start := time.Now()
	a := w.post(ctx, d)
	rec := context.WithoutCancel(ctx)
	outcome := "succeeded"
	switch {
	case a.ok():
	case d.Attempts > len(w.cfg.Backoff):
		outcome = "failed"
	default:
		outcome = "retry"
	}
	w.metrics.latency.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	w.metrics.deliveries.WithLabelValues(outcome).Inc()
	log := w.logger.With("event_id", d.EventID, "endpoint_id", d.EndpointID, "owner_id", d.OwnerID, "attempt", d.Attempts,
		"status", a.status, "outcome", outcome)
	if err := w.record(rec, d, a, outcome); err != nil {
		log.ErrorContext(rec, "record webhook delivery", "err", err)
		return
	}
	if a.ok() {
		log.InfoContext(rec, "webhook delivered")
	} else {
		log.WarnContext(rec, "webhook delivery failed", "err", a.err)
	}
}

func (w *Worker) post(ctx context.Context, d due) attempt {
	ts := w.now()
	sig, err := webhook.Sign(d.Secret, d.EventID, ts, d.Payload)
	if err != nil {
		return attempt{err: err.Error()}
	}
	// Not cancelled with ctx: an attempt under way when the worker stops
	// finishes (the client's Timeout bounds it) rather than being recorded
	// as the receiver's failure.
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodPost, d.URL, bytes.NewReader(d.Payload))
	if err != nil {
		return attempt{err: "invalid URL"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "mana-api-gateway-webhooks/1")
	req.Header.Set("webhook-id", d.EventID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := w.client.Do(req)
	if err != nil {
		// Without the URL: its query may carry the owner's token, and
		// the error is shown in the deliveries and logged.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		msg := err.Error()
		if errors.Is(err, ErrBlockedAddress) {
			msg = "the URL resolves to an address that is not public"
		}
		return attempt{err: truncate(msg, 300)}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	a := attempt{status: resp.StatusCode}
	if !a.ok() {
		// The status text is ours, not the receiver's reason phrase,
		// which may be any bytes (and PostgreSQL refuses invalid UTF-8).
		a.err = truncate(fmt.Sprintf("answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode)), 300)
		if loc := resp.Header.Get("Location"); resp.StatusCode >= 300 && resp.StatusCode < 400 && loc != "" {
			a.err = "answered " + strconv.Itoa(resp.StatusCode) + " (a redirect other than 307 or 308 is not followed)"
		}
	}
	return a
}

// truncate makes s storable text of at most n bytes: valid UTF-8 cut on
// a character boundary, without NUL bytes.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// record settles d after attempt a, and keeps the endpoint's failure
// record: a success clears it; a failure starts it, and when it is older
// than DisableAfter the endpoint is disabled and its pending deliveries
// given up.
func (w *Worker) record(ctx context.Context, d due, a attempt, outcome string) error {
	now := w.now().UTC()
	tx, err := w.db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var code *int
	if a.status != 0 {
		code = &a.status
	}
	var errText *string
	if a.err != "" {
		errText = &a.err
	}
	var next *time.Time
	status := "pending"
	switch outcome {
	case "succeeded":
		status = "succeeded"
	case "failed":
		status = "failed"
	default:
		t := now.Add(w.cfg.Backoff[d.Attempts-1])
		next = &t
	}
	// Only the claim this attempt was made under settles it: if the lease
	// ran out and another round claimed the delivery again (attempts moved
	// on), this late outcome is dropped.
	res, err := tx.ExecContext(ctx, `UPDATE api_gateway.webhook_deliveries
		SET status = $3, last_status_code = $4, last_error = $5, next_attempt_at = $6, leased_until = NULL
		WHERE endpoint_id = $1 AND event_id = $2 AND attempts = $7 AND status = 'pending'`,
		d.EndpointID, d.EventID, status, code, errText, next, d.Attempts)
	if err != nil {
		return fmt.Errorf("update delivery: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("update delivery: %w", err)
	} else if n == 0 {
		w.logger.WarnContext(ctx, "webhook attempt outlived its claim; its outcome is dropped", "event_id", d.EventID,
			"endpoint_id", d.EndpointID, "attempt", d.Attempts)
		return nil
	}
	if a.ok() {
		if _, err := tx.ExecContext(ctx, `UPDATE api_gateway.webhook_endpoints SET failing_since = NULL
			WHERE id = $1 AND failing_since IS NOT NULL`, d.EndpointID); err != nil {
			return fmt.Errorf("clear endpoint failures: %w", err)
		}
		return tx.Commit()
	}
	var disabled bool
	if err := tx.GetContext(ctx, &disabled, `UPDATE api_gateway.webhook_endpoints SET
		failing_since   = coalesce(failing_since, $2),
		disabled_at     = CASE WHEN disabled_at IS NULL AND coalesce(failing_since, $2) <= $3 THEN $2 ELSE disabled_at END,
		disabled_reason = CASE WHEN disabled_at IS NULL AND coalesce(failing_since, $2) <= $3
		                       THEN 'every delivery failed since ' || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
		                       ELSE disabled_reason END,
		updated_at      = CASE WHEN disabled_at IS NULL AND coalesce(failing_since, $2) <= $3 THEN $2 ELSE updated_at END
		WHERE id = $1
		RETURNING coalesce(disabled_at = $2, false)`, d.EndpointID, now, now.Add(-w.cfg.DisableAfter)); err != nil {
		return fmt.Errorf("record endpoint failure: %w", err)
	}
	if disabled {
		if _, err := tx.ExecContext(ctx, `UPDATE api_gateway.webhook_deliveries SET status = 'failed', next_attempt_at = NULL, leased_until = NULL,
			last_error = coalesce(last_error, 'the endpoint was disabled') WHERE endpoint_id = $1 AND status = 'pending'`, d.EndpointID); err != nil {
			return fmt.Errorf("give up deliveries of a disabled endpoint: %w", err)
		}
		w.metrics.disabled.Inc()
		w.logger.WarnContext(ctx, "webhook endpoint disabled: every delivery failed for days", "endpoint_id", d.EndpointID,
			"owner_id", d.OwnerID, "after", w.cfg.DisableAfter)
	}
	return tx.Commit()
}
