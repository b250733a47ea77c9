// Package server assembles the gateway: the Echo instance with its
// middleware, system endpoints (/health, /ready, /metrics), the public edge
// and the management API, and the wiring of their dependencies.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/problem"
	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/gateway/internal/tracing"
)

// Check is one readiness probe (Postgres, Redis, NATS).
type Check struct {
	Name  string
	Probe func(ctx context.Context) error
}

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// requestID keeps a well-formed client X-Request-Id and generates one (a
// ULID) otherwise, and echoes it on the response.
func requestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		id := c.Request().Header.Get(echo.HeaderXRequestID)
		if !requestIDRE.MatchString(id) {
			id = ulid.Make().String()
			c.Request().Header.Set(echo.HeaderXRequestID, id)
		}
		c.Response().Header().Set(echo.HeaderXRequestID, id)
		return next(c)
	}
}

type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gateway_http_request_duration_seconds", Help: "HTTP request latency by route and status.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "method", "status"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

func (m *httpMetrics) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		status := c.Response().Status
		if err != nil {
			status = problem.From(err).Status
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		s := strconv.Itoa(status)
		m.requests.WithLabelValues(route, c.Request().Method, s).Inc()
		m.latency.WithLabelValues(route, c.Request().Method, s).Observe(time.Since(start).Seconds())
		return err
	}
}

// accessLog logs one line per request with what identifies it — never a key,
// a token or a body.
func accessLog(logger *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			err := next(c)
			status := c.Response().Status
			if err != nil {
				status = problem.From(err).Status
			}
			logger.LogAttrs(c.Request().Context(), slog.LevelInfo, "request",
				slog.String("request_id", c.Response().Header().Get(echo.HeaderXRequestID)),
				slog.String("method", c.Request().Method),
				slog.String("route", c.Path()),
				slog.Int("status", status),
				slog.Duration("duration", time.Since(start)),
			)
			return err
		}
	}
}

// errNotReady answers /ready while a check fails. The probes run on every
// request: a second later is worth a try.
var errNotReady = apierr.New(apierr.Unavailable, "a dependency is unavailable").RetryIn(time.Second)

// NewEcho builds the Echo instance with the system endpoints; the caller
// registers the edge and the management API on it.
// With a tracer provider (Traced), every request gets a server span.
func NewEcho(logger *slog.Logger, reg *prometheus.Registry, checks []Check, accessLogs bool, opts ...EchoOption) *echo.Echo {
	var o echoOpts
	for _, opt := range opts {
		opt(&o)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = problem.ErrorHandler(logger)
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{
		DisableStackAll: true,
		LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
			logger.ErrorContext(c.Request().Context(), "panic", "err", err, "stack", string(stack))
			return fmt.Errorf("panic: %v", err) // an internal error: its text is for the log
		},
	}))
	e.Use(refuseConflictingFraming)
	e.Use(requestID)
	e.Use(newHTTPMetrics(reg).middleware)
	if o.tp != nil {
		e.Use(tracing.Middleware(o.tp.Tracer(tracing.Name)))
	}
	if accessLogs {
		e.Use(accessLog(logger))
	}
	e.GET("/health", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	e.GET("/ready", func(c echo.Context) error {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		out := map[string]string{}
		var failed []error
		for _, ch := range checks {
			if err := ch.Probe(ctx); err != nil {
				out[ch.Name] = "down"
				failed = append(failed, fmt.Errorf("%s: %w", ch.Name, err))
			} else {
				out[ch.Name] = "up"
			}
		}
		if len(failed) > 0 {
			logger.WarnContext(ctx, "not ready", "err", errors.Join(failed...))
			// A problem document with the checks as an extension member (RFC 9457 §3.2).
			return problem.Write(c, errNotReady.WithMembers(map[string]any{"checks": out}))
		}
		return c.JSON(http.StatusOK, map[string]any{"status": "ready", "checks": out})
	})
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	return e
}

// EchoOption adds to what NewEcho builds.
type EchoOption func(*echoOpts)

type echoOpts struct{ tp trace.TracerProvider }

// Traced starts a server span per request from tp (see package tracing).
func Traced(tp trace.TracerProvider) EchoOption { return func(o *echoOpts) { o.tp = tp } }

// Listen opens the gateway's listener: at most connsPerAddress open
// connections per client address (0: no cap; see conns.go), each checked
// for conflicting request framing (see framing.go).
func Listen(addr string, connsPerAddress int) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return framingListener{limitPerAddress(l, connsPerAddress)}, nil
}

// HeaderTimeout is how long a connection may take to send a request's
// headers. A slow-header connection must be gone within 5 s; the deadline
// is shorter than that by the time a loaded machine takes to notice it and
// close a thousand such connections at once (TestSlowClients in gateway/e2e
// measures it).
const HeaderTimeout = 4 * time.Second

// NewHTTPServer wraps h with the gateway's timeouts and header limit.
func NewHTTPServer(addr string, h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		ConnContext:       ConnContext,
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: HeaderTimeout,
		// Large STT uploads; each route bounds its body much more tightly
		// (proxy.JSONBodyTimeout, proxy.MinBodyRate).
		ReadTimeout:    proxy.MaxBodyRead,
		WriteTimeout:   10 * time.Minute,
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}
