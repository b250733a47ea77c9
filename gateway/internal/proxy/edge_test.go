package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/mana/apigw/gateway/internal/backlog"
	"github.com/mana/apigw/gateway/internal/holds"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/server"
	"github.com/mana/apigw/gateway/internal/usage"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/proto/wav"
	"github.com/mana/apigw/services/search"
	"github.com/mana/apigw/services/testenv"
)

// env is one gateway edge in process, against real Postgres, Redis and
// NATS, with the search stand-in and a capturing backend.
type env struct {
	t        *testing.T
	url      string
	db       *sqlx.DB
	pgCount  *atomic.Int64
	redisCmd *atomic.Int64
	rdb      *redis.Client
	redis    *testenv.Redis
	nats     *testenv.NATS
	stream   jetstream.Stream
	store    *keys.Store
	hasher   keys.Hasher
	resolver *keys.Resolver
	q        *quota.Store
	capture  *capture
	echo     *echo.Echo
}

type envOpt func(*envOpts)

type envOpts struct {
	spoolBytes int64
	metrics    prometheus.Registerer
	clock      func() time.Time
	timeoutCap time.Duration
	// unknownPerAddr caps unknown keys per address and minute (0: none).
	unknownPerAddr int
	tracer         trace.TracerProvider
}

func withSpoolBytes(n int64) envOpt { return func(o *envOpts) { o.spoolBytes = n } }

func withMetrics(reg prometheus.Registerer) envOpt { return func(o *envOpts) { o.metrics = reg } }

// withTimeoutCap caps every route's backend timeout (1 s unless told).
func withTimeoutCap(d time.Duration) envOpt { return func(o *envOpts) { o.timeoutCap = d } }

// withTracer traces the edge's calls with tp.
func withTracer(tp trace.TracerProvider) envOpt { return func(o *envOpts) { o.tracer = tp } }

// withClock gives the gateway a clock of its own (Redis keeps the real one).
func withClock(now func() time.Time) envOpt { return func(o *envOpts) { o.clock = now } }

// withUnknownKeysPerAddress caps the unknown keys per client address and minute.
func withUnknownKeysPerAddress(n int) envOpt { return func(o *envOpts) { o.unknownPerAddr = n } }

// capture is a backend that records what it received and answers as told.
type capture struct {
	mu      sync.Mutex
	headers []http.Header
	calls   atomic.Int64
	status  atomic.Int64
	delay   atomic.Int64 // ms
}

func (c *capture) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.calls.Add(1)
	c.mu.Lock()
	c.headers = append(c.headers, r.Header.Clone())
	c.mu.Unlock()
	_, _ = io.Copy(io.Discard, r.Body)
	if d := c.delay.Load(); d > 0 {
		select {
		case <-time.After(time.Duration(d) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	}
	st := int(c.status.Load())
	if st == 0 {
		st = 200
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(st)
	_, _ = w.Write([]byte(`{"ok":true,"durationSeconds":61.2}`))
}

type cmdCounter struct{ n *atomic.Int64 }

func (c cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(int64(len(cmds))); return next(ctx, cmds) }
}

func newEnv(t *testing.T, searchBackend, sttBackend, ttsBackend string, opts ...envOpt) *env {
	t.Helper()
	o := envOpts{spoolBytes: 1 << 20, timeoutCap: time.Second, tracer: noop.NewTracerProvider()}
	for _, f := range opts {
		f(&o)
	}
	ctx := context.Background()
	logger := testenv.Logger(t)
	ev := &env{t: t, capture: &capture{}}
	sqlDB, n := testenv.CountingDB(t, testenv.PostgresURL(t))
	ev.db, ev.pgCount = sqlx.NewDb(sqlDB, "postgres"), n
	ev.redis = testenv.StartRedis(t)
	ev.rdb = ev.redis.Client()
	ev.redisCmd = &atomic.Int64{}
	ev.rdb.AddHook(cmdCounter{ev.redisCmd})
	ev.nats = testenv.StartNATS(t)
	nc, err := nats.Connect(ev.nats.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if ev.stream, err = usagev1.EnsureStream(ctx, js, 0); err != nil {
		t.Fatal(err)
	}
	spool, err := usage.OpenSpool(t.TempDir(), o.spoolBytes, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = spool.Close() })
	pub, err := usage.NewPublisher(usage.PublisherConfig{AckTimeout: time.Second, DrainInterval: 100 * time.Millisecond}, nc, js, spool, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pricing.Default()
	if err != nil {
		t.Fatal(err)
	}
	ev.store = keys.NewStore(ev.db)
	ev.hasher = keys.NewHasher([]byte("test-pepper-0123456789"))
	ev.resolver = keys.NewResolver(keys.ResolverConfig{Size: 1000, TTL: time.Minute, UnknownTTL: time.Second,
		UnknownPerAddress: o.unknownPerAddr}, ev.store, ev.hasher)
	hl := holds.NewLedger()
	if _, err := hl.Serve(ctx, nc, "test", 100*time.Millisecond, logger); err != nil {
		t.Fatal(err)
	}
	presence, err := holds.NewPresence(nc, "test", time.Second, logger)
	if err != nil {
		t.Fatal(err)
	}
	tail, err := backlog.New(backlog.Config{JS: js, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	tctx, stopTail := context.WithCancel(ctx)
	t.Cleanup(stopTail)
	go tail.Run(tctx)
	ev.q = quota.NewStore(ev.rdb, quota.NewPGLoader(ev.db, tail, holds.NewQuery(nc, presence, 300*time.Millisecond), logger), hl)
	if err := ev.q.Preload(ctx); err != nil {
		t.Fatal(err)
	}
	capSrv := httptest.NewServer(ev.capture)
	t.Cleanup(capSrv.Close)
	pick := func(s string) *url.URL {
		if s == "capture" {
			s = capSrv.URL
		}
		u, _ := url.Parse(s)
		return u
	}
	edge, err := proxy.New(proxy.Config{
		Backends:       map[string]*url.URL{proxy.BackendSearch: pick(searchBackend), proxy.BackendSTT: pick(sttBackend), proxy.BackendTTS: pick(ttsBackend)},
		GatewayID:      "test",
		PublishTimeout: 5 * time.Second,
		TimeoutCap:     o.timeoutCap,
		Metrics:        o.metrics,
		Clock:          o.clock,
		Tracer:         o.tracer.Tracer("test"),
	}, p, ev.resolver, ev.q, pub, proxy.NewLastUsed(ev.store, time.Hour, logger), hl, logger)
	if err != nil {
		t.Fatal(err)
	}
	e := server.NewEcho(logger, prometheus.NewRegistry(), nil, false, server.Traced(o.tracer))
	edge.Register(e)
	ev.echo = e
	srv := httptest.NewUnstartedServer(e)
	l, err := server.Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = l
	srv.Config.ConnContext = server.ConnContext
	srv.Start()
	t.Cleanup(srv.Close)
	ev.url = srv.URL
	return ev
}

func searchStandIn(t *testing.T) string {
	t.Helper()
	h, err := search.New(search.Config{}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

// key creates a key of the tier directly in the store.
func (ev *env) key(tier string) (string, *keys.Key) {
	ev.t.Helper()
	p, _ := pricing.Default()
	tr := p.Tiers[tier]
	secret, err := keys.Generate()
	if err != nil {
		ev.t.Fatal(err)
	}
	k := &keys.Key{OwnerID: "owner-1", Name: "test", Prefix: keys.Prefix(secret), Tier: tier, Active: true,
		RateLimitPerMinute: tr.RateLimitPerMinute, MonthlyCredits: tr.MonthlyCredits, Hash: ev.hasher.Hash(secret)}
	if err := ev.store.Create(context.Background(), k); err != nil {
		ev.t.Fatal(err)
	}
	return secret, k
}

func (ev *env) do(method, path, secret, contentType, body string, hdr ...string) (*http.Response, []byte) {
	ev.t.Helper()
	req, err := http.NewRequest(method, ev.url+path, strings.NewReader(body))
	if err != nil {
		ev.t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("X-API-Key", secret)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ev.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ev.t.Fatalf("%s %s: reading the answer (%d): %v", method, path, resp.StatusCode, err)
	}
	return resp, b
}

func (ev *env) events() []*usagev1.UsageEvent {
	ev.t.Helper()
	ctx := context.Background()
	info, err := ev.stream.Info(ctx)
	if err != nil {
		ev.t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := ev.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		ev.t.Fatal(err)
	}
	batch, err := cons.Fetch(int(info.State.Msgs), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		ev.t.Fatal(err)
	}
	var out []*usagev1.UsageEvent
	for m := range batch.Messages() {
		dm, err := usagev1.DecodeMessage(m.Subject(), m.Data())
		if err != nil || len(dm.Invalid) > 0 {
			ev.t.Fatalf("stream message %s: %v %v", m.Subject(), err, dm.Invalid)
		}
		if !usagev1.IsBatchSubject(m.Subject()) || m.Headers().Get(jetstream.MsgIDHeader) != dm.BatchID {
			ev.t.Fatalf("message on %s with Nats-Msg-Id %q, batch ID %q", m.Subject(), m.Headers().Get(jetstream.MsgIDHeader), dm.BatchID)
		}
		out = append(out, dm.Events...)
	}
	return out
}

func (ev *env) balance(k *keys.Key) int64 {
	ev.t.Helper()
	b, ok, err := ev.q.Balance(context.Background(), k.ID, time.Now().UTC().Format("2006-01"))
	if err != nil || !ok {
		ev.t.Fatalf("balance: %v %v", ok, err)
	}
	return b
}

func isProblem(t *testing.T, resp *http.Response, body []byte, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q for %d: %s", ct, status, body)
	}
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	if err := json.Unmarshal(body, &p); err != nil || p.Status != status || p.Title == "" || p.Detail == "" || p.Type == "" {
		t.Fatalf("problem body %s (%v)", body, err)
	}
}

func TestSearchIsServedMeteredAndPublished(t *testing.T) {
	ev := newEnv(t, searchStandIn(t), "capture", "capture")
	secret, k := ev.key("free")
	resp, body := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"quantum computing"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var res struct {
		Results []struct{ Title string } `json:"results"`
	}
	if err := json.Unmarshal(body, &res); err != nil || len(res.Results) == 0 {
		t.Fatalf("search body %s (%v)", body, err)
	}
	for h, want := range map[string]string{"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9", "X-Credits-Remaining": "99"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	reset := resp.Header.Get("X-RateLimit-Reset")
	var resetUnix int64
	if _, err := fmt.Sscan(reset, &resetUnix); err != nil || resetUnix < time.Now().Unix() || resetUnix > time.Now().Add(61*time.Second).Unix() {
		t.Errorf("X-RateLimit-Reset %q", reset)
	}
	if resp.Header.Get("X-Request-Id") == "" || resp.Header.Get("RateLimit-Policy") != `"default";q=10;w=60` || !strings.HasPrefix(resp.Header.Get("RateLimit"), `"default";r=9;t=`) {
		t.Errorf("headers %v", resp.Header)
	}
	evs := ev.events()
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	e := evs[0]
	if e.KeyId != k.ID || e.Credits != 1 || e.Units != 1 || e.Status != 200 || e.Endpoint != "/v1/search" || e.RequestId != resp.Header.Get("X-Request-Id") || e.OwnerId != "owner-1" || e.Tier != "free" {
		t.Fatalf("event %+v", e)
	}
	if ev.balance(k) != 99 {
		t.Fatalf("balance %d", ev.balance(k))
	}
}

func TestHotPathBudget(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, _ := ev.key("enterprise")
	if resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"warm up"}`); resp.StatusCode != 200 {
		t.Fatalf("warm-up %d %s", resp.StatusCode, b)
	}
	redisBefore, pgBefore := ev.redisCmd.Load(), ev.pgCount.Load()
	const calls = 50
	for i := 0; i < calls; i++ {
		if resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"q"}`); resp.StatusCode != 200 {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, b)
		}
	}
	redisPer := float64(ev.redisCmd.Load()-redisBefore) / calls
	pgPer := float64(ev.pgCount.Load()-pgBefore) / calls
	t.Logf("per request: %.2f Redis commands, %.2f Postgres statements", redisPer, pgPer)
	if redisPer != 1 || pgPer != 0 {
		t.Fatalf("per request: %.2f Redis commands (want 1), %.2f Postgres statements (want 0)", redisPer, pgPer)
	}
}

func TestCredentialsNeverReachTheBackend(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, _ := ev.key("pro")
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"x"}`,
		"Authorization", "Bearer abc", "Cookie", "session=1", "Proxy-Authorization", "Basic x", "X-Request-Id", "client-req-1",
		"Connection", "X-Hop", "X-Hop", "secret")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	ev.capture.mu.Lock()
	h := ev.capture.headers[0]
	ev.capture.mu.Unlock()
	for _, name := range []string{"X-Api-Key", "Authorization", "Cookie", "Proxy-Authorization", "X-Hop"} {
		if v := h.Get(name); v != "" {
			t.Errorf("backend received %s: %q", name, v)
		}
	}
	if h.Get("X-Request-Id") != "client-req-1" || h.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Errorf("forwarded headers %v", h)
	}
	if resp.Header.Get("X-Request-Id") != "client-req-1" {
		t.Errorf("response X-Request-Id %q", resp.Header.Get("X-Request-Id"))
	}
}

func TestBadInputIsAClear4xxAndCostsNothing(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("free")
	other, _ := keys.Generate()
	tampered := secret[:len(secret)-1] + string("ab"[0]^secret[len(secret)-1]&1)
	for _, tc := range []struct {
		name, method, path, secret, ct, body string
		status                               int
	}{
		{"missing key", "POST", "/v1/search", "", "application/json", `{"query":"a"}`, 401},
		{"malformed key", "POST", "/v1/search", "sk_live_nope", "application/json", `{"query":"a"}`, 401},
		{"bad checksum", "POST", "/v1/search", tampered, "application/json", `{"query":"a"}`, 401},
		{"unknown key", "POST", "/v1/search", other, "application/json", `{"query":"a"}`, 401},
		{"malformed JSON", "POST", "/v1/search", secret, "application/json", `{"query":`, 400},
		{"not an object", "POST", "/v1/search", secret, "application/json", `[1,2]`, 400},
		{"missing field", "POST", "/v1/search", secret, "application/json", `{}`, 400},
		{"unknown field", "POST", "/v1/search", secret, "application/json", `{"query":"a","x":1}`, 400},
		{"empty body", "POST", "/v1/search", secret, "application/json", ``, 400},
		{"wrong content type", "POST", "/v1/search", secret, "text/plain", `{"query":"a"}`, 415},
		{"huge body", "POST", "/v1/search", secret, "application/json", `{"query":"` + strings.Repeat("a", 70<<10) + `"}`, 413},
		{"bad extract url", "POST", "/v1/extract", secret, "application/json", `{"url":"file:///etc/passwd"}`, 400},
		{"empty bulk", "POST", "/v1/extract/bulk", secret, "application/json", `{"urls":[]}`, 400},
		{"free tier on tts", "POST", "/v1/tts/synthesize", secret, "application/json", `{"text":"hi","voice":"en-US-1"}`, 403},
		{"free tier on stt models", "GET", "/v1/stt/models", secret, "", ``, 403},
		{"h2c upgrade", "POST", "/v1/search", secret, "application/json", `{"query":"a"}`, 400},
		{"body on a GET route", "GET", "/v1/search/engines", secret, "", strings.Repeat("x", 1<<20), 413},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var extra []string
			if tc.name == "h2c upgrade" {
				extra = []string{"Upgrade", "h2c", "Connection", "Upgrade, HTTP2-Settings"}
			}
			resp, b := ev.do(tc.method, tc.path, tc.secret, tc.ct, tc.body, extra...)
			isProblem(t, resp, b, tc.status)
			if resp.Header.Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id")
			}
			// Every answer to a known key carries its quota headers.
			if tc.secret == secret {
				for _, h := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Credits-Remaining"} {
					if resp.Header.Get(h) == "" {
						t.Errorf("no %s", h)
					}
				}
			}
		})
	}
	if n := ev.capture.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times for refused requests", n)
	}
	if evs := ev.events(); len(evs) != 0 {
		t.Fatalf("%d events for refused requests", len(evs))
	}
	// The key is untouched: a good call still sees the full balance.
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-Credits-Remaining") != "99" {
		t.Fatalf("after bad input: %d %s credits %q", resp.StatusCode, b, resp.Header.Get("X-Credits-Remaining"))
	}
	_ = k
}

// quotaHeaders fails the test unless resp carries every header the contract
// promises on a /v1 answer to a known key, with the given credit balance.
func quotaHeaders(t *testing.T, what string, resp *http.Response, limit string, credits int64) {
	t.Helper()
	h := resp.Header
	if h.Get("X-Request-Id") == "" {
		t.Errorf("%s: no X-Request-Id", what)
	}
	if h.Get("X-RateLimit-Limit") != limit {
		t.Errorf("%s: X-RateLimit-Limit %q, want %s", what, h.Get("X-RateLimit-Limit"), limit)
	}
	if _, err := strconv.Atoi(h.Get("X-RateLimit-Remaining")); err != nil {
		t.Errorf("%s: X-RateLimit-Remaining %q", what, h.Get("X-RateLimit-Remaining"))
	}
	if reset, err := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64); err != nil || reset < time.Now().Add(-time.Minute).Unix() || reset > time.Now().Add(2*time.Minute).Unix() {
		t.Errorf("%s: X-RateLimit-Reset %q is not Unix seconds within the window", what, h.Get("X-RateLimit-Reset"))
	}
	if got := h.Get("X-Credits-Remaining"); got != strconv.FormatInt(credits, 10) {
		t.Errorf("%s: X-Credits-Remaining %q, want %d", what, got, credits)
	}
	if vs := h.Values("X-Credits-Remaining"); len(vs) > 1 {
		t.Errorf("%s: X-Credits-Remaining sent %d times: %q", what, len(vs), vs)
	}
}

// TestFailedBackendCallsCostNothing: a backend's 4xx and 5xx are passed
// through, a backend that is down is 502, one too slow 504; each answer
// carries the rate-limit, credit and request-ID headers, and none costs a
// credit (in the events and in Redis).
func TestFailedBackendCallsCostNothing(t *testing.T) {
	ev := newEnv(t, "capture", "http://127.0.0.1:1", "capture")
	secret, k := ev.key("pro")
	for _, st := range []int{400, 404, 409, 422, 429, 500, 503} {
		ev.capture.status.Store(int64(st))
		resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
		if resp.StatusCode != st {
			t.Fatalf("backend %d passed through as %d: %s", st, resp.StatusCode, b)
		}
		quotaHeaders(t, fmt.Sprintf("backend %d", st), resp, "100", 5000)
		// A held bulk extract (3 credits) that the backend refuses is released.
		resp, b = ev.do("POST", "/v1/extract/bulk", secret, "application/json", `{"urls":["https://a.example","https://b.example","https://c.example"]}`)
		if resp.StatusCode != st {
			t.Fatalf("bulk: backend %d passed through as %d: %s", st, resp.StatusCode, b)
		}
		quotaHeaders(t, fmt.Sprintf("bulk, backend %d", st), resp, "100", 5000)
	}
	// A backend that is down: 502.
	resp, b := ev.do("GET", "/v1/stt/models", secret, "", "")
	isProblem(t, resp, b, 502)
	quotaHeaders(t, "502", resp, "100", 5000)
	// A held call to a backend that is down: 502, and the hold is released.
	ct, body := wavUpload(t, 61*8000, 61*8000)
	resp, b = ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body))
	isProblem(t, resp, b, 502)
	quotaHeaders(t, "502 upload", resp, "100", 5000)
	ev.capture.status.Store(200)
	// A backend slower than the route's timeout (capped at 1 s here): 504.
	ev.capture.delay.Store(1500)
	resp, b = ev.do("POST", "/v1/search", secret, "application/json", `{"query":"slow"}`)
	isProblem(t, resp, b, 504)
	quotaHeaders(t, "504", resp, "100", 5000)
	ev.capture.delay.Store(0)
	evs := ev.events()
	if want := 7*2 + 3; len(evs) != want {
		t.Fatalf("%d events, want %d (one per backend call)", len(evs), want)
	}
	for _, e := range evs {
		if e.Credits != 0 {
			t.Fatalf("failed call charged: %+v", e)
		}
	}
	if ev.balance(k) != 5000 {
		t.Fatalf("balance %d", ev.balance(k))
	}
}

func TestInsufficientCreditsAndRateLimit(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("free")
	// Spend down to 2 credits, then ask for a bulk extract of 3 URLs.
	if err := ev.rdb.HSet(context.Background(), "gw:{"+k.ID+"}:s", "bal", 2).Err(); err != nil {
		t.Fatal(err)
	}
	ev.do("GET", "/v1/key", secret, "", "") // loads state
	if err := ev.rdb.HSet(context.Background(), "gw:{"+k.ID+"}:s", "bal", 2).Err(); err != nil {
		t.Fatal(err)
	}
	resp, b := ev.do("POST", "/v1/extract/bulk", secret, "application/json", `{"urls":["https://a.example","https://b.example","https://c.example"]}`)
	isProblem(t, resp, b, 402)
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("402 without Retry-After")
	}
	if ev.capture.calls.Load() != 0 {
		t.Fatal("backend called for a 402")
	}
	// The first 402 of the period is told on the stream, once: a second
	// one is not.
	resp, b = ev.do("POST", "/v1/extract/bulk", secret, "application/json", `{"urls":["https://a.example","https://b.example","https://c.example"]}`)
	isProblem(t, resp, b, 402)
	evs := ev.events()
	if len(evs) != 1 {
		t.Fatalf("%d events after two 402s, want the one of the first: %v", len(evs), evs)
	}
	x := evs[0]
	period := time.Now().UTC().Format("2006-01")
	if !x.IsExhausted() || x.GetStatus() != 402 || x.GetCredits() != 0 || x.GetUnits() != 0 || x.GetKeyId() != k.ID ||
		x.GetOwnerId() != k.OwnerID || x.GetPeriod() != period || x.GetMonthlyCredits() != k.MonthlyCredits || x.GetRequestId() == "" {
		t.Fatalf("exhausted event %v", x)
	}
	if err := x.Validate(); err != nil {
		t.Fatal(err)
	}
	// Free tier: 10 per minute; /v1/key used one slot.
	ok, limited := 0, 0
	for i := 0; i < 12; i++ {
		resp, b := ev.do("GET", "/v1/search/engines", secret, "", "")
		switch resp.StatusCode {
		case 200:
			ok++
		case 429:
			limited++
			isProblem(t, resp, b, 429)
			if resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-RateLimit-Remaining") != "0" {
				t.Fatalf("429 headers %v", resp.Header)
			}
		default:
			t.Fatalf("status %d %s", resp.StatusCode, b)
		}
	}
	if ok != 9 || limited != 3 {
		t.Fatalf("ok %d limited %d, want 9 and 3", ok, limited)
	}
}

func TestKeyIntrospection(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("pro")
	resp, b := ev.do("GET", "/v1/key", secret, "", "")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	var got struct {
		ID               string   `json:"id"`
		KeyPrefix        string   `json:"keyPrefix"`
		Tier             string   `json:"tier"`
		RateLimit        int      `json:"rateLimitPerMinute"`
		CreditsRemaining int64    `json:"creditsRemaining"`
		Allowed          []string `json:"allowedEndpoints"`
		PeriodEnd        time.Time
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != k.ID || got.Tier != "pro" || got.RateLimit != 100 || got.CreditsRemaining != 5000 || len(got.Allowed) < 10 || got.KeyPrefix != k.Prefix {
		t.Fatalf("introspection %s", b)
	}
	if strings.Contains(string(b), secret) {
		t.Fatal("introspection echoes the secret")
	}
	// The period: the calendar month (UTC) of the call, as RFC 3339 strings
	// in UTC with no fraction, so any client's date-time parser reads them.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	period := map[string]time.Time{}
	for _, name := range []string{"periodStart", "periodEnd"} {
		var s string
		if err := json.Unmarshal(raw[name], &s); err != nil {
			t.Fatalf("%s is %s, not a string", name, raw[name])
		}
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil || !strings.HasSuffix(s, "-01T00:00:00Z") {
			t.Fatalf("%s %q: want the first of a month at 00:00:00Z (%v)", name, s, err)
		}
		period[name] = ts
	}
	start, end := period["periodStart"], period["periodEnd"]
	if !end.Equal(start.AddDate(0, 1, 0)) {
		t.Fatalf("period %s – %s is not one calendar month", start, end)
	}
	if now := time.Now().UTC(); now.Before(start.Add(-time.Minute)) || !now.Before(end.Add(time.Minute)) {
		t.Fatalf("period %s – %s does not hold now (%s)", start, end, now)
	}
	// A 402 is told to come back at the period end.
	if err := ev.rdb.HSet(context.Background(), "gw:{"+k.ID+"}:s", "bal", 0).Err(); err != nil {
		t.Fatal(err)
	}
	resp, b = ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	isProblem(t, resp, b, 402)
	ra, err := strconv.ParseInt(resp.Header.Get("Retry-After"), 10, 64)
	if err != nil {
		t.Fatalf("402 Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if back := time.Now().Add(time.Duration(ra) * time.Second); back.Before(end.Add(-time.Minute)) || back.After(end.Add(time.Minute)) {
		t.Fatalf("402 Retry-After %ds points at %s, not the period end %s", ra, back.UTC(), end)
	}
}

func TestRedisDownPolicy(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, _ := ev.key("pro")
	if resp, _ := ev.do("GET", "/v1/search/engines", secret, "", ""); resp.StatusCode != 200 {
		t.Fatal("warm-up")
	}
	ev.redis.Stop()
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	isProblem(t, resp, b, 503)
	resp, b = ev.do("GET", "/v1/search/engines", secret, "", "")
	if resp.StatusCode != 200 {
		t.Fatalf("free call with Redis down: %d %s", resp.StatusCode, b)
	}
	if n := ev.events(); len(n) != 2 {
		t.Fatalf("%d events", len(n))
	}
}

// TestRedisFlushNeverRegrantsSpentCredits: events on the stream that the
// billing worker has not processed yet (none runs here) still count when
// Redis loses a key's state and it is rebuilt.
func TestRedisFlushNeverRegrantsSpentCredits(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("free")
	for i := 0; i < 5; i++ {
		if resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	}
	if err := ev.rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-Credits-Remaining") != "94" {
		t.Fatalf("after flush: %d %s, credits %q (want 94)", resp.StatusCode, b, resp.Header.Get("X-Credits-Remaining"))
	}
	if ev.balance(k) != 94 {
		t.Fatalf("balance %d", ev.balance(k))
	}
}

// TestInventedKeysCostNoLookups: strings with a wrong checksum are refused
// before any Redis or Postgres lookup — 10^6 through the resolver, and
// 10^4 through the whole HTTP edge.
func TestInventedKeysCostNoLookups(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	ctx := context.Background()
	pg0, rd0 := ev.pgCount.Load(), ev.redisCmd.Load()
	rnd := rand.New(rand.NewPCG(1, 2))
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	invent := func() string {
		b := make([]byte, 38)
		for i := range b {
			b[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		return "sk_live_" + string(b)
	}
	for i := 0; i < 1_000_000; i++ {
		if _, _, err := ev.resolver.Resolve(ctx, invent(), "192.0.2.1"); !errors.Is(err, keys.ErrMalformed) {
			// A random string passes a 6-character checksum with odds of 62^-6.
			if err == nil || !errors.Is(err, keys.ErrNotFound) {
				t.Fatalf("invented key: %v", err)
			}
		}
	}
	for i := 0; i < 10_000; i++ {
		req := httptest.NewRequest("GET", "/v1/search/engines", nil)
		req.Header.Set("X-API-Key", invent())
		rec := httptest.NewRecorder()
		ev.echo.ServeHTTP(rec, req)
		if rec.Code != 401 {
			t.Fatalf("status %d", rec.Code)
		}
	}
	pg, rd := ev.pgCount.Load()-pg0, ev.redisCmd.Load()-rd0
	t.Logf("1,010,000 invented keys: %d Postgres statements, %d Redis commands", pg, rd)
	if pg != 0 || rd != 0 || ev.resolver.Lookups() != 0 {
		t.Fatalf("%d Postgres statements, %d Redis commands, %d lookups", pg, rd, ev.resolver.Lookups())
	}
}

// TestUnknownKeysFromOneAddressGet429: once an address has used up its
// unknown keys, its next invented key (one that passes the checksum) is
// refused with 429 problem+json and Retry-After, without a Postgres
// statement; another address and a key in use still get through.
func TestUnknownKeysFromOneAddressGet429(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture", withUnknownKeysPerAddress(60)) // burst 6
	secret, _ := ev.key("free")
	send := func(key, addr string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/v1/search/engines", nil)
		req.RemoteAddr = addr
		req.Header.Set("X-API-Key", key)
		rec := httptest.NewRecorder()
		ev.echo.ServeHTTP(rec, req)
		return rec
	}
	if rec := send(secret, "192.0.2.7:1000"); rec.Code != 200 {
		t.Fatalf("key in use: %d %s", rec.Code, rec.Body)
	}
	var codes []int
	for i := 0; i < 6; i++ {
		invented, _ := keys.Generate()
		codes = append(codes, send(invented, "192.0.2.7:1000").Code)
	}
	pg0 := ev.pgCount.Load()
	invented, _ := keys.Generate()
	rec := send(invented, "192.0.2.7:1001")
	t.Logf("6 unknown keys: %v; the 7th: %d, Retry-After %q, %d Postgres statements", codes, rec.Code, rec.Header().Get("Retry-After"), ev.pgCount.Load()-pg0)
	if rec.Code != 429 || rec.Header().Get("Retry-After") == "" || rec.Header().Get("Content-Type") != "application/problem+json" || ev.pgCount.Load() != pg0 {
		t.Fatalf("7th unknown key: %d %q %s, %d statements", rec.Code, rec.Header().Get("Retry-After"), rec.Body, ev.pgCount.Load()-pg0)
	}
	for _, c := range codes {
		if c != 401 {
			t.Fatalf("the first unknown keys: %v, want 401s", codes)
		}
	}
	if rec := send(secret, "192.0.2.7:1002"); rec.Code != 200 {
		t.Fatalf("key in use from the throttled address: %d %s", rec.Code, rec.Body)
	}
	if rec := send(invented, "[2001:db8::1]:1000"); rec.Code != 401 {
		t.Fatalf("unknown key from another address: %d %s", rec.Code, rec.Body)
	}
}

// TestSmugglingIsRefused: a request with both Transfer-Encoding and
// Content-Length never reaches the backend.
func TestSmugglingIsRefused(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, _ := ev.key("pro")
	conn, err := net.Dial("tcp", strings.TrimPrefix(ev.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"query":"a"}`
	fmt.Fprintf(conn, "POST /v1/search HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", secret, len(body), len(body), body)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	if ev.capture.calls.Load() != 0 {
		t.Fatal("the backend was called")
	}
}

// TestFullSpoolRefusesBillableCalls: with NATS away and the spool full, a
// call that costs credits gets 503 before the backend; free calls still work.
func TestFullSpoolRefusesBillableCalls(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture", withSpoolBytes(2000))
	secret, k := ev.key("pro")
	if resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	ev.nats.Stop()
	statuses := map[int]int{}
	for i := 0; i < 20; i++ {
		resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
		statuses[resp.StatusCode]++
		if resp.StatusCode == 503 {
			isProblem(t, resp, b, 503)
		}
	}
	if statuses[200] == 0 || statuses[503] == 0 {
		t.Fatalf("statuses %v: want some spooled (200) and then 503", statuses)
	}
	// A free call is still served: there is nothing to bill.
	if resp, b := ev.do("GET", "/v1/search/engines", secret, "", ""); resp.StatusCode != 200 {
		t.Fatalf("free call with a full spool: %d %s", resp.StatusCode, b)
	}
	calls := ev.capture.calls.Load() - 1
	if int(calls) != 1+statuses[200] {
		t.Fatalf("backend saw %d calls for %d served", calls, 1+statuses[200])
	}
	if got := ev.balance(k); got != int64(5000-1-statuses[200]) {
		t.Fatalf("balance %d: refused calls must not be charged", got)
	}
}

func wavUpload(t *testing.T, declaredBytes uint32, actualBytes int) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	fw, err := mw.CreateFormFile("file", "a.wav")
	if err != nil {
		t.Fatal(err)
	}
	var hdr bytes.Buffer
	if err := wav.Encode(&hdr, 1, 8000, 8, min(declaredBytes, 1<<30)); err != nil {
		t.Fatal(err)
	}
	h := hdr.Bytes()
	if declaredBytes == 0xFFFFFFFF {
		// What a streaming encoder writes: sizes left at their maximum.
		copy(h[4:8], []byte{0xFF, 0xFF, 0xFF, 0xFF})
		copy(h[len(h)-4:], []byte{0xFF, 0xFF, 0xFF, 0xFF})
	}
	_, _ = fw.Write(h)
	_, _ = fw.Write(bytes.Repeat([]byte{128}, actualBytes))
	_ = mw.Close()
	return mw.FormDataContentType(), b.Bytes()
}

// TestUploadWithExpectContinue: curl sends "Expect: 100-continue" with any
// upload over 1 MB; the final answer must still carry its own status and
// the contract's headers.
func TestUploadWithExpectContinue(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, _ := ev.key("pro")
	// 61 s at 8 kHz 8-bit mono = 488,000 bytes; the backend reports 61.2 s.
	ct, body := wavUpload(t, 61*8000, 61*8000)
	resp, b := ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body), "Expect", "100-continue")
	if resp.StatusCode != 200 || resp.Header.Get("X-Request-Id") == "" || resp.Header.Get("X-RateLimit-Limit") != "100" || resp.Header.Get("X-Credits-Remaining") != "4989" {
		t.Fatalf("status %d, headers %v: %s", resp.StatusCode, resp.Header, b)
	}
	ev.capture.mu.Lock()
	expect := ev.capture.headers[len(ev.capture.headers)-1].Get("Expect")
	ev.capture.mu.Unlock()
	if expect != "" {
		t.Fatalf("backend received Expect: %q", expect)
	}
	// More audio than the header declares: refused with its own status.
	ct, body = wavUpload(t, 8000, 8<<20) // well past what the server discards by itself
	resp, b = ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body), "Expect", "100-continue")
	isProblem(t, resp, b, 400)
	if resp.Header.Get("X-RateLimit-Limit") == "" || resp.Header.Get("X-Credits-Remaining") != "4989" {
		t.Fatalf("headers of the refused upload: %v", resp.Header)
	}
}

// TestStreamedWAVIsPricedByItsLength: a WAV written to a pipe has no data
// size; the request's Content-Length bounds (and prices) it instead.
func TestStreamedWAVIsPricedByItsLength(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, _ := ev.key("pro")
	for _, declared := range []uint32{0, 0xFFFFFFFF} {
		ct, body := wavUpload(t, declared, 16000) // 2 s of audio
		resp, b := ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body))
		if resp.StatusCode != 200 {
			t.Fatalf("declared %#x: %d %s", declared, resp.StatusCode, b)
		}
	}
	evs := ev.events()
	if len(evs) != 2 {
		t.Fatalf("%d events for 2 calls", len(evs))
	}
	for _, e := range evs {
		// Held for the length (≈2 s + framing ⇒ 3 s ⇒ 1 credit); the backend
		// reports 61.2 s, but a charge never exceeds its hold.
		if e.Credits != 1 || e.Units > 3 {
			t.Fatalf("event %+v", e)
		}
	}
}
