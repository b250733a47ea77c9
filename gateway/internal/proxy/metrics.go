package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/tracing"
)

// Outcomes of a backend call, the backend histogram's outcome label.
const (
	outcome2xx = iota
	outcome3xx
	outcome4xx
	outcome5xx
	outcomeTimeout  // the route's deadline passed before the answer's headers
	outcomeCanceled // the client went away
	outcomeError    // no answer: refused, reset, unreachable
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"2xx", "3xx", "4xx", "5xx", "timeout", "canceled", "error"}

// metrics are the edge's histograms of the hot path's two waits besides the
// durability of the usage event (which the publisher measures): the backend
// and the Redis decision.
type metrics struct {
	backend *prometheus.HistogramVec
	quota   *prometheus.HistogramVec
	tracer  trace.Tracer // spans of the same waits
}

// newMetrics builds the histograms and registers them with reg (none when
// reg is nil).
func newMetrics(reg prometheus.Registerer, tracer trace.Tracer) (*metrics, error) {
	m := &metrics{tracer: tracer,
		backend: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gateway_backend_request_duration_seconds",
			Help:    "Time from sending a call to the backend until its response headers arrive (or the call fails), by public route and outcome.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"route", "outcome"}),
		quota: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gateway_quota_decision_duration_seconds",
			Help:    "Time of a quota decision in Redis as a request waits for it (acquire: validity, rate limit and credit hold, including a rebuild of missing key state; adjust: settlement), by operation and result.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"op", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.backend, m.quota} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("proxy: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// timedTransport measures every backend call of one route. Its observers are
// resolved once, so a call costs no label lookup.
type timedTransport struct {
	next   http.RoundTripper
	obs    [numOutcomes]prometheus.Observer
	tracer trace.Tracer
	name   string
}

func (m *metrics) timedTransport(route string, next http.RoundTripper) *timedTransport {
	t := &timedTransport{next: next, tracer: m.tracer, name: "backend " + route}
	for i, name := range outcomeNames {
		t.obs[i] = m.backend.WithLabelValues(route, name)
	}
	return t
}

// RoundTrip implements http.RoundTripper.
// The backend call is a client span whose context goes to the backend as
// the W3C traceparent header (the reverse proxy's own copy of the request).
func (t *timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	ctx, span := t.tracer.Start(r.Context(), t.name, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	if span.SpanContext().IsValid() {
		tracing.Propagator.Inject(ctx, propagation.HeaderCarrier(r.Header))
	}
	resp, err := t.next.RoundTrip(r)
	o := outcomeOf(r, resp, err)
	t.obs[o].Observe(time.Since(start).Seconds())
	span.SetAttributes(attribute.String("mana.outcome", outcomeNames[o]))
	if err == nil {
		span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	}
	if o >= outcome5xx {
		span.SetStatus(codes.Error, outcomeNames[o])
	}
	return resp, err
}

func outcomeOf(r *http.Request, resp *http.Response, err error) int {
	switch {
	case err == nil:
		return min(max(resp.StatusCode/100-2, outcome2xx), outcome5xx)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return outcomeTimeout
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return outcomeCanceled
	}
	return outcomeError
}

// timedQuota measures the Redis decisions the edge waits for.
type timedQuota struct {
	q                                    Quota
	acquireOK, acquireErr, adjOK, adjErr prometheus.Observer
	tracer                               trace.Tracer
}

func (m *metrics) timedQuota(q Quota) *timedQuota {
	return &timedQuota{q: q, tracer: m.tracer,
		acquireOK: m.quota.WithLabelValues("acquire", "ok"), acquireErr: m.quota.WithLabelValues("acquire", "error"),
		adjOK: m.quota.WithLabelValues("adjust", "ok"), adjErr: m.quota.WithLabelValues("adjust", "error"),
	}
}

// Acquire implements Quota.
func (t *timedQuota) Acquire(ctx context.Context, r quota.Request) (quota.Decision, error) {
	start := time.Now()
	ctx, span := t.tracer.Start(ctx, "redis.acquire")
	d, err := t.q.Acquire(ctx, r)
	observe(t.acquireOK, t.acquireErr, err, start)
	endSpan(span, err)
	return d, err
}

// ForgetRefusal implements Quota.
func (t *timedQuota) ForgetRefusal(ctx context.Context, keyID, period string) error {
	return t.q.ForgetRefusal(ctx, keyID, period)
}

// Adjust implements Quota.
func (t *timedQuota) Adjust(ctx context.Context, keyID, period, op string, delta int64) error {
	start := time.Now()
	ctx, span := t.tracer.Start(ctx, "redis.adjust")
	err := t.q.Adjust(ctx, keyID, period, op, delta)
	observe(t.adjOK, t.adjErr, err, start)
	endSpan(span, err)
	return err
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func observe(ok, failed prometheus.Observer, err error, start time.Time) {
	if err != nil {
		failed.Observe(time.Since(start).Seconds())
		return
	}
	ok.Observe(time.Since(start).Seconds())
}
