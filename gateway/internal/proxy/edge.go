// Package proxy is the public edge: the route table, and the one handler that
// authenticates the key, prices the call, holds its credits and rate slot in
// one Redis round trip, forwards it to the backend, settles the charge from
// the backend's answer and makes the usage event durable before the response
// is released.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/problem"
	"github.com/mana/apigw/gateway/internal/quota"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Quota is the Redis side of a decision. Safe for concurrent use.
type Quota interface {
	Acquire(ctx context.Context, r quota.Request) (quota.Decision, error)
	Adjust(ctx context.Context, keyID, period, op string, delta int64) error
	ForgetRefusal(ctx context.Context, keyID, period string) error
}

// Publisher makes usage events durable. Publish must be safe for concurrent
// use and return only once the event is acknowledged or spooled.
type Publisher interface {
	Publish(ctx context.Context, ev *usagev1.UsageEvent) error
	CanAccept() bool
}

// Resolver maps a secret to its key (see keys.Resolver).
type Resolver interface {
	Resolve(ctx context.Context, secret, addr string) (*keys.Key, []byte, error)
}

// Holds counts the credits held by calls in flight here (see package
// holds); the quota store registers each hold around its script, the edge
// moves it to the charge when the call is settled and releases it once the
// call's event is durable or nothing was charged. Safe
// for concurrent use.
type Holds interface {
	Settle(keyID, eventID string, credits int64)
	Release(keyID, eventID string)
}

// Config configures the edge.
type Config struct {
	Backends  map[string]*url.URL // search, stt, tts
	GatewayID string
	// PublishTimeout bounds the wait for an event to become durable.
	PublishTimeout time.Duration
	// Transport is shared by all routes of a backend; nil builds a pooled default.
	Transport http.RoundTripper
	// TimeoutCap, if positive, caps every route's backend timeout.
	TimeoutCap time.Duration
	// Metrics, if not nil, registers the backend and Redis histograms.
	Metrics prometheus.Registerer
	// Tracer, if not nil, makes child spans of the request's span for the
	// Redis decisions, the backend call and the durability wait.
	Tracer trace.Tracer
	// Clock is the gateway's own clock (latencies, event times); nil means
	// time.Now. Credit months come from Redis's clock, never from this one.
	Clock func() time.Time
	// CallsPerKey caps the calls one key has in flight on this gateway
	// (a tier's concurrentCalls overrides it); 0 means DefaultCallsPerKey.
	CallsPerKey int
}

// ErrStopping is the cause a stopping gateway cancels the calls still in
// flight with (context.WithCancelCause on the server's base context): each
// releases its hold and is answered 503 with Retry-After.
var ErrStopping = errors.New("the gateway is stopping")

// DefaultCallsPerKey is the cap on one key's calls in flight per gateway.
const DefaultCallsPerKey = 64

// MaxBodyRead bounds the reading of any request body, however fast it
// arrives (the HTTP server's ReadTimeout is the same).
const MaxBodyRead = 10 * time.Minute

// Validate reports every problem.
func (c Config) Validate() error {
	var errs []error
	for _, b := range []string{BackendSearch, BackendSTT, BackendTTS} {
		if u := c.Backends[b]; u == nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			errs = append(errs, fmt.Errorf("proxy: backend %s needs an http(s) URL", b))
		}
	}
	if c.PublishTimeout <= 0 {
		errs = append(errs, errors.New("proxy: PublishTimeout must be positive"))
	}
	if c.CallsPerKey < 0 {
		errs = append(errs, errors.New("proxy: CallsPerKey must not be negative"))
	}
	return errors.Join(errs...)
}

// Edge serves the public API.
type Edge struct {
	cfg      Config
	pricing  *pricing.Pricing
	resolver Resolver
	quota    Quota
	pub      Publisher
	lastUsed *LastUsed
	holds    Holds
	logger   *slog.Logger
	proxies  map[string]http.Handler // reverse proxies, by op
	routes   []Route
	slots    *callSlots

	// fallback limits zero-cost calls per key while Redis is unreachable.
	fallbackMu sync.Mutex
	fallback   map[string]*rate.Limiter
}

// New builds the edge; the pricing must price every route of the table.
func New(cfg Config, p *pricing.Pricing, resolver Resolver, q Quota, pub Publisher, lastUsed *LastUsed, holds Holds, logger *slog.Logger) (*Edge, error) {
	if err := errors.Join(cfg.Validate(), p.RequireOperations(Ops())); err != nil {
		return nil, err
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	m, err := newMetrics(cfg.Metrics, cfg.Tracer)
	if err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.CallsPerKey == 0 {
		cfg.CallsPerKey = DefaultCallsPerKey
	}
	e := &Edge{cfg: cfg, pricing: p, resolver: resolver, quota: m.timedQuota(q), pub: pub, lastUsed: lastUsed, holds: holds, logger: logger,
		proxies: map[string]http.Handler{}, fallback: map[string]*rate.Limiter{}, slots: newCallSlots(cfg.CallsPerKey)}
	transports := map[string]http.RoundTripper{}
	e.routes = Routes()
	for i := range e.routes {
		if cfg.TimeoutCap > 0 && e.routes[i].Timeout > cfg.TimeoutCap {
			e.routes[i].Timeout = cfg.TimeoutCap
		}
	}
	for _, rt := range e.routes {
		if rt.Backend == backendLocal {
			continue
		}
		tr := cfg.Transport
		if tr == nil {
			if transports[rt.Backend] == nil {
				transports[rt.Backend] = NewTransport()
			}
			tr = transports[rt.Backend]
		}
		e.proxies[rt.Op] = e.newReverseProxy(rt, cfg.Backends[rt.Backend], m.timedTransport(rt.Path, tr))
	}
	return e, nil
}

// Register mounts every route of the table on e.
func (e *Edge) Register(ec *echo.Echo) {
	for _, rt := range e.routes {
		ec.Add(rt.Method, rt.Path, e.handler(rt))
	}
}

// call is the state of one request, carried in its context from the handler
// to the reverse proxy's hooks.
type call struct {
	ec        echo.Context
	route     Route
	op        pricing.Operation
	key       *keys.Key
	eventID   string
	requestID string
	start     time.Time
	units     int64 // estimated units held for
	held      int64 // credits held
	decision  quota.Decision
	body      *meteredBody // STT uploads
	noDrain   bool         // what the client still sends of body is not waited for
	settled   bool         // the hold was settled (charged or released)
	settles   int          // settlements so far; names each one's adjustment
	charged   int64        // what the settlement charged
	holding   bool         // the hold is counted in e.holds
}

type callKey struct{}

func callFrom(ctx context.Context) *call { c, _ := ctx.Value(callKey{}).(*call); return c }

// handler serves one route: the call itself (serve), inside the bounds of
// its body's reading.
func (e *Edge) handler(rt Route) echo.HandlerFunc {
	h := e.serve(rt)
	if rt.Body == BodyNone {
		return h
	}
	h = withBodyDeadline(rt, h)
	if rt.Body == BodyMultipart {
		h = answeringUnread(h)
	}
	return h
}

// withBodyDeadline starts the body's deadline before the key is looked at,
// so that the unread body of a refused call is not waited for long either
// (the server reads it after the answer to keep the connection). It is
// lifted once the body is read.
func withBodyDeadline(rt Route, next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		bodyDeadline(c, rt.BodyTimeout, MaxBodyRead)
		return next(c)
	}
}

// answeringUnread answers a refused upload itself (see answerUnread);
// server errors go to the error handler, which logs them.
func answeringUnread(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		body := &touchedBody{ReadCloser: req.Body}
		req.Body = body
		err := next(c)
		if err == nil || c.Response().Committed || problem.From(err).Status >= 500 {
			return err
		}
		return answerUnread(c, err, body.touched)
	}
}

// maxDrain bounds how much of a refused upload is read and dropped so that
// the client, still sending, can read the answer.
const maxDrain = 32 << 20

// answerUnread answers a refused upload whose body was not read. Most
// clients send the whole body before they read an answer and do not send
// "Expect: 100-continue"; closing under their upload would reach them as a
// connection reset, not the problem. So the answer is written and flushed,
// and a bounded rest of the body read and dropped within a deadline, as
// nginx's lingering close does.
//
// A client that sent "Expect: 100-continue" is told to continue by the
// first read of the body; until then it sends nothing, and once it is told
// it sends everything, so it is drained exactly when the body was touched.
func answerUnread(c echo.Context, cause error, touched bool) error {
	req := c.Request()
	if err := problem.Write(c, cause); err != nil {
		return err
	}
	if (req.Header.Get("Expect") != "" && !touched) || req.ContentLength > maxDrain {
		return nil // the client waits for a 100 Continue, or too much to wait for
	}
	linger(c.Response().Writer, req.ContentLength, req.Body)
	return nil
}

// linger flushes the answer already written and reads and drops a bounded
// rest of the request body within a deadline, so that a client still
// sending reads the answer instead of a connection reset.
func linger(w http.ResponseWriter, contentLength int64, body io.Reader) {
	if contentLength > maxDrain {
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	_ = rc.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDrain))
}

// touchedBody records whether the handler read the request body at all.
type touchedBody struct {
	io.ReadCloser
	touched bool
}

func (b *touchedBody) Read(p []byte) (int, error) {
	b.touched = true
	return b.ReadCloser.Read(p)
}

// serve serves one call of rt: authenticate the key, take one of its
// slots in flight, admit the call, and dispatch it.
func (e *Edge) serve(rt Route) echo.HandlerFunc {
	op := e.pricing.Operations[rt.Op]
	return func(c echo.Context) error {
		cl := &call{ec: c, route: rt, op: op, start: time.Now(), requestID: c.Response().Header().Get(echo.HeaderXRequestID)}
		k, hash, err := e.authenticate(c, cl.requestID)
		if err != nil {
			return err
		}
		cl.key = k
		tier, ok := e.pricing.Tiers[k.Tier]
		if !ok {
			return fmt.Errorf("key %s has tier %q that the pricing file lacks", k.ID, k.Tier)
		}
		if !e.slots.acquire(k.ID, tier.ConcurrentCalls) {
			return errTooManyInFlight
		}
		defer e.slots.release(k.ID)
		trace.SpanFromContext(c.Request().Context()).SetAttributes(attribute.String("mana.key_id", k.ID), attribute.String("mana.tier", k.Tier))
		if err := e.admit(c, cl, tier, hash); err != nil {
			return err
		}
		if cl.holding {
			defer e.releaseHold(cl)
		}
		return e.dispatch(c, cl, tier)
	}
}

// authenticate resolves the request's X-API-Key to its key and hash.
func (e *Edge) authenticate(c echo.Context, requestID string) (*keys.Key, []byte, error) {
	req := c.Request()
	secret := req.Header.Get("X-API-Key")
	if secret == "" {
		return nil, nil, errNoKey
	}
	k, hash, err := e.resolver.Resolve(req.Context(), secret, clientAddr(req))
	var throttled *keys.ThrottledError
	switch {
	case err == nil:
		return k, hash, nil
	case errors.Is(err, keys.ErrMalformed):
		return nil, nil, err
	case errors.Is(err, keys.ErrNotFound):
		return nil, nil, errUnknownKey
	case errors.As(err, &throttled):
		return nil, nil, err
	}
	e.logger.ErrorContext(req.Context(), "resolve api key", "request_id", requestID, "err", err)
	return nil, nil, errKeysUnavailable
}

// admit decides whether the key may make the call: the tier, the body,
// and the key's state, rate and credits in one Redis round trip (or, with
// Redis away, the policy of withoutRedis). Admitted, cl holds the
// decision and, if the call costs credits, its hold.
func (e *Edge) admit(c echo.Context, cl *call, tier pricing.Tier, hash []byte) error {
	req, k, rt := c.Request(), cl.key, &cl.route
	if !tier.Allows(rt.Op) {
		// Refused before the body is read; the script still tells a
		// revoked key (401) from a forbidden route (403) and consumes nothing.
		cl.eventID = ulid.Make().String()
		d, err := e.quota.Acquire(req.Context(), quota.Request{KeyID: k.ID, Hash: hash, Allowed: false, Member: cl.eventID})
		if err != nil {
			return quota.ErrForbidden
		}
		return e.refusal(c, d)
	}
	cl.units = 1
	if req.Header.Get("Upgrade") != "" {
		// No h2c or WebSocket upgrades through the metered edge.
		return e.peek(c, k, hash, errUpgrade)
	}
	if err := e.prepareBody(c, rt, cl); err != nil {
		// Bad input from a known key: answered with the key's quota
		// headers (a peek that consumes nothing), unless the key itself
		// is no longer usable, which takes precedence.
		return e.peek(c, k, hash, err)
	}
	cl.held = cl.op.Cost(cl.units)
	if cl.held > 0 && !e.pub.CanAccept() {
		return errCannotRecord
	}
	cl.eventID = ulid.Make().String()
	d, err := e.quota.Acquire(req.Context(), quota.Request{KeyID: k.ID, Hash: hash, Cost: cl.held, Allowed: true, Member: cl.eventID})
	if err != nil {
		return e.withoutRedis(c, cl, err)
	}
	cl.decision = d
	trace.SpanFromContext(req.Context()).SetAttributes(attribute.String("mana.decision", decisionNames[d.Outcome]),
		attribute.Int64("mana.credits_held", cl.held))
	if err := e.refusal(c, d); err != nil {
		if d.Outcome == quota.Insufficient && d.FirstRefusal {
			e.tellExhausted(cl, d)
		}
		return err
	}
	// The quota store registered the hold around its script; it counts
	// until the event is durable or the hold is released.
	cl.holding = cl.held > 0
	e.lastUsed.Touch(k.ID, d.Now)
	if rt.Backend == backendLocal {
		c.Response().Header().Set("X-Credits-Remaining", strconv.FormatInt(d.Credits, 10))
	}
	return nil
}

// dispatch serves an admitted call: GET /v1/key here, anything else by its
// backend through the route's reverse proxy.
func (e *Edge) dispatch(c echo.Context, cl *call, tier pricing.Tier) error {
	if cl.route.Backend == backendLocal {
		return e.describeKey(c, cl.key, tier, cl.decision)
	}
	ctx, cancel := context.WithTimeout(context.WithValue(c.Request().Context(), callKey{}, cl), cl.route.Timeout)
	defer cancel()
	e.proxies[cl.route.Op].ServeHTTP(c.Response(), c.Request().WithContext(ctx))
	return nil
}

// releaseHold stops counting the call's hold as in flight (its event is
// durable, or nothing was charged). Idempotent.
func (e *Edge) releaseHold(cl *call) {
	if cl.holding {
		cl.holding = false
		e.holds.Release(cl.key.ID, cl.eventID)
	}
}

// prepareBody reads and prices the request body of the route.
func (e *Edge) prepareBody(c echo.Context, rt *Route, cl *call) error {
	req := c.Request()
	switch rt.Body {
	case BodyJSON:
		body, err := readJSONBody(c, rt.BodyLimit)
		if err != nil {
			return err
		}
		units, forward, err := rt.Parse(body)
		if err != nil {
			return err
		}
		cl.units = units
		setBody(req, forward)
	case BodyMultipart:
		mb, seconds, err := openAudioUpload(req, rt.BodyLimit)
		if err != nil {
			return err
		}
		cl.body, cl.units = mb, seconds
		req.Body = mb
	default:
		// Routes without a body forward none, whatever the client sent.
		if req.ContentLength > 0 || len(req.TransferEncoding) > 0 {
			// The server reads what is left after the answer; not for long.
			_ = http.NewResponseController(c.Response().Writer).SetReadDeadline(time.Now().Add(time.Second))
			return errNoBodyAccepted
		}
		req.Body, req.ContentLength = http.NoBody, 0
	}
	return nil
}

// peek asks Redis for the key's state without consuming anything, sets the
// quota headers, and returns cause unless the key is refused outright.
func (e *Edge) peek(c echo.Context, k *keys.Key, hash []byte, cause error) error {
	d, err := e.quota.Acquire(c.Request().Context(), quota.Request{KeyID: k.ID, Hash: hash, Allowed: false, Member: ulid.Make().String()})
	if err != nil {
		return cause
	}
	switch d.Outcome {
	case quota.Unknown, quota.Deleted, quota.Expired, quota.Inactive:
		return e.refusal(c, d)
	}
	setQuotaHeaders(c.Response().Header(), d, d.Credits)
	return cause
}

// refusal sets the contract's headers and returns the decision's refusal
// (nil for OK). A key that is not, or no longer, the client's gets none.
func (e *Edge) refusal(c echo.Context, d quota.Decision) error {
	switch d.Outcome {
	case quota.Unknown, quota.Deleted, quota.Expired:
		return d.Err()
	}
	credits := d.Credits
	if d.Outcome == quota.OK {
		// A served call's balance is set once settled (ModifyResponse):
		// the reverse proxy adds, never replaces, response headers.
		credits = -1
	}
	setQuotaHeaders(c.Response().Header(), d, credits)
	return d.Err()
}

// tellExhausted publishes the event of the key's first refusal for want of
// credits in the period, through the same durable publisher as the calls'
// events: billing tells the owner once per key and period (credits.exhausted).
// The refusal is answered whatever comes of it; an event that cannot be made
// durable is logged and not retried, as Redis already marked the period told.
func (e *Edge) tellExhausted(cl *call, d quota.Decision) {
	ev := &usagev1.UsageEvent{
		EventId:        cl.eventID,
		RequestId:      cl.requestID,
		KeyId:          cl.key.ID,
		OwnerId:        cl.key.OwnerID,
		Tier:           cl.key.Tier,
		Endpoint:       usagev1.ExhaustedEndpoint,
		Status:         http.StatusPaymentRequired,
		Unit:           "credit",
		OccurredAt:     timestamppb.New(d.Now), // Redis's clock, so it lies in d.Period
		LatencyUs:      time.Since(cl.start).Microseconds(),
		Period:         d.Period,
		MonthlyCredits: cl.key.MonthlyCredits,
		GatewayId:      e.cfg.GatewayID,
		TraceId:        traceID(cl.ec.Request().Context()),
	}
	ctx := cl.ec.Request().Context()
	if err := e.publish(ctx, ev); err != nil {
		// Redis has marked the period's first refusal as told: undo that,
		// so the key's next 402 tries again and the owner still hears of it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		ferr := e.quota.ForgetRefusal(fctx, cl.key.ID, d.Period)
		cancel()
		e.logger.ErrorContext(ctx, "the key's exhausted credits could not be recorded; the next refusal tries again",
			"key_id", cl.key.ID, "event_id", cl.eventID, "request_id", cl.requestID, "period", d.Period, "err", err, "forget_err", ferr)
		return
	}
	e.logger.InfoContext(ctx, "credits exhausted", "key_id", cl.key.ID, "event_id", cl.eventID, "request_id", cl.requestID,
		"period", d.Period, "credits_left", d.Credits, "credits_needed", cl.held)
}

// withoutRedis applies the policy for an unreachable Redis: a call that
// costs credits is refused (it could not be billed safely); a free call is
// admitted under a per-instance limiter at the key's rate.
func (e *Edge) withoutRedis(c echo.Context, cl *call, cause error) error {
	e.logger.WarnContext(c.Request().Context(), "quota store unavailable", "key_id", cl.key.ID, "err", cause)
	if cl.held > 0 {
		return quota.ErrUnavailable
	}
	limit := cl.key.RateLimitPerMinute // the key's own, as Redis would enforce it
	e.fallbackMu.Lock()
	lim, ok := e.fallback[cl.key.ID]
	if !ok {
		lim = rate.NewLimiter(rate.Limit(float64(limit)/60), limit)
		e.fallback[cl.key.ID] = lim
	}
	e.fallbackMu.Unlock()
	h := c.Response().Header()
	h.Set("X-RateLimit-Limit", strconv.Itoa(limit))
	if !lim.Allow() {
		h.Set("X-RateLimit-Remaining", "0")
		return quota.ErrRateLimited.WithDetail(fmt.Sprintf("rate limit of %d requests per minute exceeded", limit)).RetryIn(time.Second)
	}
	h.Set("X-RateLimit-Remaining", strconv.Itoa(int(lim.Tokens())))
	now := e.cfg.Clock().UTC()
	h.Set("X-RateLimit-Reset", strconv.FormatInt(now.Add(time.Minute).Unix(), 10))
	cl.decision = quota.Decision{Outcome: quota.OK, Limit: limit, Now: now, Period: now.Format("2006-01"), Credits: -1, Window: quota.Window}
	return nil
}

func setQuotaHeaders(h http.Header, d quota.Decision, credits int64) {
	reset := d.Reset
	if reset.Before(d.Now) {
		reset = d.Now
	}
	h.Set("X-RateLimit-Limit", strconv.Itoa(d.Limit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(d.Remaining))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(int64(math.Ceil(float64(reset.UnixMilli())/1000)), 10))
	h.Set("RateLimit-Policy", fmt.Sprintf(`"default";q=%d;w=%d`, d.Limit, int(d.Window.Seconds())))
	h.Set("RateLimit", fmt.Sprintf(`"default";r=%d;t=%d`, d.Remaining, ceilSeconds(reset.Sub(d.Now))))
	if credits >= 0 {
		h.Set("X-Credits-Remaining", strconv.FormatInt(credits, 10))
	}
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(math.Ceil(d.Seconds()))
}

// describeKey answers GET /v1/key.
func (e *Edge) describeKey(c echo.Context, k *keys.Key, tier pricing.Tier, d quota.Decision) error {
	allowed := []string{}
	for _, rt := range Routes() {
		if tier.Allows(rt.Op) {
			allowed = append(allowed, rt.Method+" "+rt.Path)
		}
	}
	var credits *int64
	if d.Credits >= 0 {
		credits = &d.Credits
	}
	// The key's own limits, as Redis enforces them; the pricing file only
	// seeds them when a key is created.
	limit := k.RateLimitPerMinute
	if d.Limit > 0 {
		limit = d.Limit
	}
	return c.JSON(http.StatusOK, map[string]any{
		"id":                 k.ID,
		"keyPrefix":          k.Prefix,
		"tier":               k.Tier,
		"rateLimitPerMinute": limit,
		"monthlyCredits":     k.MonthlyCredits,
		"creditsRemaining":   credits,
		"allowedEndpoints":   allowed,
		"periodStart":        time.Date(d.Now.Year(), d.Now.Month(), 1, 0, 0, 0, 0, time.UTC),
		"periodEnd":          quota.PeriodEnd(d.Now),
		"expiresAt":          k.ExpiresAt,
	})
}

// event builds the usage event of a finished call. Its period is the credit
// month its hold was taken in, by Redis's clock; the event time, from the
// gateway's clock, is clamped into that month so period and time agree
// whatever the two clocks say.
func (e *Edge) event(cl *call, status int, units, credits int64) *usagev1.UsageEvent {
	now := e.cfg.Clock().UTC()
	period := cl.decision.Period
	if start, err := time.Parse("2006-01", period); err != nil {
		period = now.Format("2006-01")
	} else if end := quota.PeriodEnd(start); now.Before(start) {
		now = start
	} else if !now.Before(end) {
		now = end.Add(-time.Microsecond)
	}
	return &usagev1.UsageEvent{
		EventId:        cl.eventID,
		RequestId:      cl.requestID,
		KeyId:          cl.key.ID,
		OwnerId:        cl.key.OwnerID,
		Tier:           cl.key.Tier,
		Endpoint:       cl.route.Path,
		Status:         int32(status),
		Credits:        credits,
		Units:          units,
		Unit:           cl.op.Unit,
		OccurredAt:     timestamppb.New(now),
		LatencyUs:      time.Since(cl.start).Microseconds(),
		Period:         period,
		MonthlyCredits: cl.key.MonthlyCredits,
		GatewayId:      e.cfg.GatewayID,
		TraceId:        traceID(cl.ec.Request().Context()),
	}
}

// decisionNames name the quota outcomes on the request's span.
var decisionNames = map[quota.Outcome]string{quota.OK: "ok", quota.Unknown: "unknown_key", quota.Deleted: "deleted",
	quota.Expired: "expired", quota.Inactive: "inactive", quota.RateLimited: "rate_limited",
	quota.Insufficient: "insufficient_credits", quota.Forbidden: "forbidden"}

// traceID is the trace of ctx's span, empty when tracing is off.
func traceID(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		return sc.TraceID().String()
	}
	return ""
}
