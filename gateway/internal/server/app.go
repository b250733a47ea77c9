package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	_ "github.com/lib/pq" // Postgres driver
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/mana/apigw/gateway/internal/backlog"
	"github.com/mana/apigw/gateway/internal/config"
	"github.com/mana/apigw/gateway/internal/dashboard"
	"github.com/mana/apigw/gateway/internal/holds"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/mgmt"
	"github.com/mana/apigw/gateway/internal/openapi"
	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/reconcile"
	"github.com/mana/apigw/gateway/internal/tracing"
	"github.com/mana/apigw/gateway/internal/usage"
	"github.com/mana/apigw/migrations"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// App is a wired gateway. Build it with NewApp, serve with Run.
type App struct {
	cfg      config.Config
	logger   *slog.Logger
	db       *sqlx.DB
	rdb      redis.UniversalClient
	nc       *nats.Conn
	js       jetstream.JetStream
	spool    *usage.Spool
	pub      *usage.Publisher
	last     *proxy.LastUsed
	store    *keys.Store
	quota    *quota.Store
	holds    *holds.Ledger
	holdsSub *nats.Subscription
	deps     *depProber
	tp       trace.TracerProvider
	stopTP   func(context.Context) error
	presence *holds.Presence
	backlog  *backlog.Tail
	truth    *quota.PGLoader
	// reconciler repairs drifted Redis balances every ReconcileInterval.
	reconciler *reconcile.Reconciler
	Echo       *echo.Echo
}

// OpenDB opens Postgres and applies the migrations, retrying while the
// server is starting (up to ctx's deadline).
func OpenDB(ctx context.Context, dsn string, logger *slog.Logger) (*sqlx.DB, error) {
	db, err := sqlx.Open("postgres", dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	for {
		err = migrations.Apply(ctx, db.DB, logger)
		if err == nil {
			return db, nil
		}
		logger.WarnContext(ctx, "postgres not ready", "err", err)
		select {
		case <-ctx.Done():
			_ = db.Close()
			return nil, fmt.Errorf("postgres: %w", errors.Join(err, ctx.Err()))
		case <-time.After(time.Second):
		}
	}
}

// NewApp connects to Postgres, Redis and NATS and wires the gateway.
// mgmt, if not nil, registers the management API.
func NewApp(ctx context.Context, cfg config.Config, logger *slog.Logger, mgmt func(e *echo.Echo, deps MgmtDeps) error) (*App, error) {
	p, err := pricing.Load(cfg.PricingFile)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	db, err := OpenDB(sctx, cfg.DatabaseURL, logger)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, logger: logger, db: db}
	a.rdb = openRedis(cfg, 256, 8)
	store := keys.NewStore(db)
	a.store = store
	a.nc, err = nats.Connect(cfg.NATSURL, nats.Name("mana-gateway "+cfg.GatewayID),
		nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectBufSize(-1), nats.Timeout(2*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { logger.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { logger.Info("nats reconnected") }))
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	a.js, err = jetstream.New(a.nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if _, err := usagev1.EnsureStreamWith(sctx, a.js, usagev1.StreamOptions{MaxAge: cfg.StreamMaxAge, Replicas: cfg.StreamReplicas}); err != nil {
		logger.WarnContext(ctx, "usage stream not ensured yet (NATS down?); events spool until it is", "err", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.spool, err = usage.OpenSpool(cfg.SpoolDir, cfg.SpoolMaxBytes, logger)
	if err != nil {
		return nil, err
	}
	reg.MustRegister(a.spool.Collectors()...)
	a.holds = holds.NewLedger()
	a.holds.Spooled = a.spool.Size
	if a.holdsSub, err = a.holds.Serve(ctx, a.nc, cfg.GatewayID, holdSettle, logger); err != nil {
		return nil, err
	}
	a.truth, a.backlog, a.presence, err = balanceTruth(db, a.nc, a.js, cfg.GatewayID, cfg.BacklogMaxEvents, logger)
	if err != nil {
		return nil, err
	}
	reg.MustRegister(a.backlog.Collectors()...)
	q := quota.NewStore(a.rdb, a.truth, a.holds).WithWindow(cfg.RateWindow)
	a.quota = q
	reg.MustRegister(q.Collectors()...)
	if err := q.Preload(sctx); err != nil {
		logger.WarnContext(ctx, "redis scripts not preloaded; they load on first use", "err", err)
	}
	if a.reconciler, err = reconcile.New(reconcile.Config{Interval: cfg.ReconcileInterval, ActiveWindow: cfg.ReconcileActiveWindow, Owner: cfg.GatewayID},
		a.rdb, q, a.truth, logger, reg); err != nil {
		return nil, err
	}
	a.pub, err = usage.NewPublisher(usage.PublisherConfig{AckTimeout: 2 * time.Second, DrainInterval: time.Second, GatewayID: cfg.GatewayID}, a.nc, a.js, a.spool, logger, reg)
	if err != nil {
		return nil, err
	}
	hasher := keys.NewHasher([]byte(cfg.APIKeyPepper))
	resolver := keys.NewResolver(keys.ResolverConfig{Size: 100_000, TTL: 10 * time.Minute, UnknownTTL: 10 * time.Second,
		UnknownPerAddress: cfg.UnknownKeysPerAddress, UnknownTotal: cfg.UnknownKeysTotal}, store, hasher)
	a.last = proxy.NewLastUsed(store, 5*time.Second, logger)
	if a.tp, a.stopTP, err = tracing.Setup(ctx, cfg.OTLPEndpoint, "mana-gateway"); err != nil {
		return nil, err
	}
	edge, err := proxy.New(proxy.Config{
		Backends:       map[string]*url.URL{proxy.BackendSearch: cfg.SearchURL, proxy.BackendSTT: cfg.STTURL, proxy.BackendTTS: cfg.TTSURL},
		GatewayID:      cfg.GatewayID,
		PublishTimeout: cfg.PublishTimeout,
		Metrics:        reg,
		Tracer:         a.tp.Tracer(tracing.Name),
		CallsPerKey:    cfg.CallsPerKey,
	}, p, resolver, q, a.pub, a.last, a.holds, logger)
	if err != nil {
		return nil, err
	}
	checks := []Check{
		{"postgres", func(ctx context.Context) error { return db.PingContext(ctx) }},
		{"redis", func(ctx context.Context) error { return a.rdb.Ping(ctx).Err() }},
		{"nats", func(ctx context.Context) error {
			if !a.nc.IsConnected() {
				return errors.New("not connected")
			}
			_, err := a.js.AccountInfo(ctx)
			return err
		}},
	}
	a.deps = newDepProber(reg, checks)
	a.Echo = NewEcho(logger, reg, checks, cfg.LogLevel == "debug", Traced(a.tp))
	edge.Register(a.Echo)
	openapi.Register(a.Echo)
	dash, err := dashboard.New(dashboard.Config{PasswordLoginURL: cfg.DashboardPasswordLoginURL, IssuerLoginURL: cfg.DashboardLoginURL}, dashboard.Assets())
	if err != nil {
		return nil, err
	}
	dash.Register(a.Echo)
	if mgmt != nil {
		if err := mgmt(a.Echo, MgmtDeps{DB: db, Store: store, Hasher: hasher, Pricing: p, Quota: q,
			Granter: NewGranter(cfg.GatewayID, q, a.holds, a.pub, logger)}); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// How long a hold query waits: each gateway for its tentative holds to
// settle (one Redis round trip), the asker for every live gateway's answer.
const (
	holdSettle   = 200 * time.Millisecond
	holdDeadline = 400 * time.Millisecond
)

// balanceTruth wires what a balance is computed from besides Redis: the
// ledger in Postgres, the stream's unapplied backlog and the holds of every
// live gateway (gatewayID announces this one; empty only listens).
func balanceTruth(db *sqlx.DB, nc *nats.Conn, js jetstream.JetStream, gatewayID string, maxBacklog int, logger *slog.Logger) (*quota.PGLoader, *backlog.Tail, *holds.Presence, error) {
	presence, err := holds.NewPresence(nc, gatewayID, time.Second, logger)
	if err != nil {
		return nil, nil, nil, err
	}
	tail, err := backlog.New(backlog.Config{JS: js, Logger: logger, MaxEvents: maxBacklog})
	if err != nil {
		return nil, nil, nil, err
	}
	return quota.NewPGLoader(db, tail, holds.NewQuery(nc, presence, holdDeadline), logger), tail, presence, nil
}

// MgmtDeps is what the management API is built from.
type MgmtDeps struct {
	DB      *sqlx.DB
	Store   *keys.Store
	Hasher  keys.Hasher
	Pricing *pricing.Pricing
	Quota   *quota.Store
	Granter mgmt.Granter
}

// Run serves until ctx ends, then shuts down gracefully: the listener
// closes, the calls in flight finish (up to the longest route's timeout, so
// that their holds are settled and their events durable), background work
// stops, the spool drains what it can; only then are Redis, NATS, the spool
// and Postgres closed. Calls still running after ShutdownTimeout are
// cancelled: each releases its hold before it returns.
func (a *App) Run(ctx context.Context) error {
	addr := net.JoinHostPort("", strconv.Itoa(a.cfg.Port))
	calls, cancelCalls := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelCalls(nil)
	var running inFlight
	srv := NewHTTPServer(addr, running.wrap(a.Echo), a.logger)
	srv.BaseContext = func(net.Listener) context.Context { return calls }
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(7)
	go func() { defer wg.Done(); a.pub.Run(bg) }()
	go func() { defer wg.Done(); a.deps.Run(bg, 5*time.Second) }()
	go func() { defer wg.Done(); a.presence.Run(bg) }()
	go func() { defer wg.Done(); a.backlog.Run(bg) }()
	go func() { defer wg.Done(); a.reconciler.Run(bg) }()
	go func() { defer wg.Done(); a.last.Run(bg) }()
	go func() { defer wg.Done(); resync(bg, a.store, a.quota.Sync, 2*time.Second, 1000, a.logger) }()
	l, err := Listen(addr, a.cfg.ConnectionsPerAddress)
	if err != nil {
		stopBG()
		wg.Wait()
		return fmt.Errorf("listen: %w", err)
	}
	errc := make(chan error, 1)
	go func() {
		a.logger.Info("gateway listening", "addr", addr)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
		close(errc)
	}()
	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = fmt.Errorf("http server: %w", err)
	}
	drain := drainTimeout(a.cfg)
	a.logger.Info("shutting down: no new connections; calls in flight may finish", "in_flight", running.n.Load(), "drain", drain.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Cancelled, a call's backend request ends and its hold is
		// released (settled to nothing) before its handler returns.
		a.logger.Warn("calls still in flight after the drain; cancelling them", "in_flight", running.n.Load(), "err", err)
		cancelCalls(proxy.ErrStopping)
		running.wait(2*a.cfg.PublishTimeout + 15*time.Second)
		_ = srv.Close()
	}
	stopBG()
	wg.Wait()
	a.pub.Wait()
	fctx, cancelF := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancelF()
	if a.nc.IsConnected() && a.spool.Size() > 0 {
		if err := a.pub.Drain(fctx); err != nil {
			a.logger.Warn("spool drain at shutdown", "err", err)
		}
	}
	_ = a.spool.Close()
	if err := a.stopTP(fctx); err != nil {
		a.logger.Warn("trace export at shutdown", "err", err)
	}
	a.nc.Close()
	_ = a.rdb.Close()
	_ = a.db.Close()
	a.logger.Info("stopped")
	return runErr
}

// drainTimeout is how long a stopping gateway lets the calls in flight
// finish before it cancels them: SHUTDOWN_TIMEOUT, or by default the
// longest route's timeout (a call that has just started may take that
// long) plus the wait for its usage event to become durable and a margin
// for settling its hold.
func drainTimeout(cfg config.Config) time.Duration {
	if cfg.ShutdownTimeout > 0 {
		return cfg.ShutdownTimeout
	}
	return proxy.LongestTimeout() + cfg.PublishTimeout + 15*time.Second
}

// inFlight counts the requests being handled.
type inFlight struct{ n atomic.Int64 }

func (f *inFlight) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.n.Add(1)
		defer f.n.Add(-1)
		h.ServeHTTP(w, r)
	})
}

// wait polls until no request is being handled, or d has passed.
func (f *inFlight) wait(d time.Duration) {
	deadline := time.Now().Add(d)
	for f.n.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}
