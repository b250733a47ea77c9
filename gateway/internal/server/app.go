package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
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

	"github.com/mana/apigw/gateway/internal/auth"
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

// App is a wired gateway: Connect its clients, Build it, serve with Run.
type App struct {
	cfg      config.Config
	logger   *slog.Logger
	clients  *Clients
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
	mgmt     *mgmt.Handler
	// reconciler repairs drifted Redis balances every ReconcileInterval.
	reconciler *reconcile.Reconciler
	Echo       *echo.Echo
}

// Clients are the connections a gateway is built on.
type Clients struct {
	DB    *sqlx.DB
	Redis redis.UniversalClient
	NATS  *nats.Conn
	JS    jetstream.JetStream
}

// Close closes every client that is open.
func (c *Clients) Close() {
	if c.NATS != nil {
		c.NATS.Close()
	}
	if c.Redis != nil {
		_ = c.Redis.Close()
	}
	if c.DB != nil {
		_ = c.DB.Close()
	}
}

// Connect connects to the Postgres, Redis and NATS that cfg names, within
// Tuning.StartTimeout: Postgres must answer (its migrations are applied);
// NATS may be down (the connection keeps retrying, events spool until it
// is back) and so may Redis (a call fails until it is back).
func Connect(ctx context.Context, cfg config.Config, logger *slog.Logger) (_ *Clients, err error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Tuning.StartTimeout)
	defer cancel()
	c := &Clients{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.DB, err = OpenDB(ctx, cfg, logger); err != nil {
		return nil, err
	}
	c.Redis = openRedis(cfg, cfg.Tuning.RedisPoolSize, cfg.Tuning.RedisMinIdleConns)
	c.NATS, err = nats.Connect(cfg.NATSURL, nats.Name("mana-gateway "+cfg.GatewayID),
		nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(cfg.Tuning.NATSReconnectWait),
		nats.ReconnectBufSize(-1), nats.Timeout(cfg.Tuning.NATSConnectTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { logger.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { logger.Info("nats reconnected") }))
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	if c.JS, err = jetstream.New(c.NATS, jetstream.WithPublishAsyncMaxPending(cfg.Tuning.PublishMaxPending)); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if _, err := usagev1.EnsureStreamWith(ctx, c.JS, usagev1.StreamOptions{MaxAge: cfg.StreamMaxAge, Replicas: cfg.StreamReplicas}); err != nil {
		logger.WarnContext(ctx, "usage stream not ensured yet (NATS down?); events spool until it is", "err", err)
	}
	return c, nil
}

// OpenDB opens Postgres and applies the migrations, retrying while the
// server is starting (up to ctx's deadline).
func OpenDB(ctx context.Context, cfg config.Config, logger *slog.Logger) (*sqlx.DB, error) {
	db, err := sqlx.Open("postgres", cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db.SetMaxOpenConns(cfg.Tuning.DBMaxOpenConns)
	db.SetMaxIdleConns(cfg.Tuning.DBMaxIdleConns)
	db.SetConnMaxIdleTime(cfg.Tuning.DBConnMaxIdleTime)
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

// Option changes what Build builds, for tests.
type Option func(*options)

type options struct {
	assets fs.FS
}

// WithDashboardAssets serves the dashboard from assets instead of the page
// embedded in the binary.
func WithDashboardAssets(assets fs.FS) Option { return func(o *options) { o.assets = assets } }

// Build wires the gateway on c: the edge, the management API, the system
// endpoints and the background work that Run starts. ctx bounds what
// refreshes itself from the start (the issuer's keys, the hold queries this
// gateway answers). Run closes c.
func Build(ctx context.Context, cfg config.Config, c *Clients, logger *slog.Logger, opts ...Option) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	o := options{assets: dashboard.Assets()}
	for _, f := range opts {
		f(&o)
	}
	t := cfg.Tuning
	p, err := pricing.Load(cfg.PricingFile)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, logger: logger, clients: c, store: keys.NewStore(c.DB)}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.spool, err = usage.OpenSpool(cfg.SpoolDir, cfg.SpoolMaxBytes, logger); err != nil {
		return nil, err
	}
	reg.MustRegister(a.spool.Collectors()...)
	a.holds = holds.NewLedger()
	a.holds.Spooled = a.spool.Size
	if a.holdsSub, err = a.holds.Serve(ctx, c.NATS, cfg.GatewayID, t.HoldSettle, logger); err != nil {
		return nil, err
	}
	a.truth, a.backlog, a.presence, err = balanceTruth(c, cfg, cfg.GatewayID, logger)
	if err != nil {
		return nil, err
	}
	reg.MustRegister(a.backlog.Collectors()...)
	a.quota = quota.NewStore(c.Redis, a.truth, a.holds).WithWindow(cfg.RateWindow)
	reg.MustRegister(a.quota.Collectors()...)
	pctx, cancel := context.WithTimeout(ctx, t.StartTimeout)
	defer cancel()
	if err := a.quota.Preload(pctx); err != nil {
		logger.WarnContext(ctx, "redis scripts not preloaded; they load on first use", "err", err)
	}
	if a.reconciler, err = reconcile.New(reconcile.Config{Interval: cfg.ReconcileInterval, ActiveWindow: cfg.ReconcileActiveWindow, Owner: cfg.GatewayID},
		c.Redis, a.quota, a.truth, logger, reg); err != nil {
		return nil, err
	}
	a.pub, err = usage.NewPublisher(usage.PublisherConfig{AckTimeout: t.PublishAckTimeout, DrainInterval: t.SpoolDrainInterval, GatewayID: cfg.GatewayID},
		c.NATS, c.JS, a.spool, logger, reg)
	if err != nil {
		return nil, err
	}
	hasher := keys.NewHasher([]byte(cfg.APIKeyPepper))
	resolver := keys.NewResolver(keys.ResolverConfig{Size: t.KeyCacheSize, TTL: t.KeyCacheTTL, UnknownTTL: t.UnknownKeyTTL,
		UnknownPerAddress: cfg.UnknownKeysPerAddress, UnknownTotal: cfg.UnknownKeysTotal}, a.store, hasher)
	a.last = proxy.NewLastUsed(a.store, t.LastUsedInterval, logger)
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
	}, p, resolver, a.quota, a.pub, a.last, a.holds, logger)
	if err != nil {
		return nil, err
	}
	verifier, err := auth.NewVerifier(ctx, auth.VerifierConfig{
		JWKSURL:  cfg.AuthURL.JoinPath("/.well-known/jwks.json").String(),
		Issuer:   cfg.JWTIssuer,
		Audience: cfg.JWTAudience,
	}, logger)
	if err != nil {
		return nil, err
	}
	a.mgmt, err = mgmt.New(mgmt.Config{}, mgmt.Deps{
		Store: a.store, DB: c.DB, Hasher: hasher, Tiers: p, State: a.quota, Catalog: TierCatalog(p),
		Granter: NewGranter(cfg.GatewayID, a.quota, a.holds, a.pub, logger),
	}, logger)
	if err != nil {
		return nil, err
	}
	dash, err := dashboard.New(dashboard.Config{PasswordLoginURL: cfg.DashboardPasswordLoginURL, IssuerLoginURL: cfg.DashboardLoginURL}, o.assets)
	if err != nil {
		return nil, err
	}
	checks := c.checks()
	a.deps = newDepProber(reg, checks)
	a.Echo = NewEcho(logger, reg, checks, cfg.LogLevel == "debug", Traced(a.tp))
	edge.Register(a.Echo)
	openapi.Register(a.Echo)
	dash.Register(a.Echo)
	a.mgmt.Register(a.Echo, auth.Middleware(verifier))
	return a, nil
}

// checks are what /ready and the dependency_up metric probe.
func (c *Clients) checks() []Check {
	return []Check{
		{"postgres", func(ctx context.Context) error { return c.DB.PingContext(ctx) }},
		{"redis", func(ctx context.Context) error { return c.Redis.Ping(ctx).Err() }},
		{"nats", func(ctx context.Context) error {
			if !c.NATS.IsConnected() {
				return errors.New("not connected")
			}
			_, err := c.JS.AccountInfo(ctx)
			return err
		}},
	}
}

// balanceTruth wires what a balance is computed from besides Redis: the
// ledger in Postgres, the stream's unapplied backlog and the holds of every
// live gateway (gatewayID announces this one; empty only listens).
func balanceTruth(c *Clients, cfg config.Config, gatewayID string, logger *slog.Logger) (*quota.PGLoader, *backlog.Tail, *holds.Presence, error) {
	presence, err := holds.NewPresence(c.NATS, gatewayID, cfg.Tuning.PresenceInterval, logger)
	if err != nil {
		return nil, nil, nil, err
	}
	tail, err := backlog.New(backlog.Config{JS: c.JS, Logger: logger, MaxEvents: cfg.BacklogMaxEvents})
	if err != nil {
		return nil, nil, nil, err
	}
	return quota.NewPGLoader(c.DB, tail, holds.NewQuery(c.NATS, presence, cfg.Tuning.HoldDeadline), logger), tail, presence, nil
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
	wg.Add(8)
	go func() { defer wg.Done(); a.pub.Run(bg) }()
	go func() { defer wg.Done(); a.deps.Run(bg, a.cfg.Tuning.ProbeInterval) }()
	go func() { defer wg.Done(); a.presence.Run(bg) }()
	go func() { defer wg.Done(); a.backlog.Run(bg) }()
	go func() { defer wg.Done(); a.reconciler.Run(bg) }()
	go func() { defer wg.Done(); a.last.Run(bg) }()
	go func() {
		defer wg.Done()
		resync(bg, a.store, a.quota.Sync, a.cfg.Tuning.ResyncInterval, a.cfg.Tuning.ResyncPage, a.logger)
	}()
	go func() { defer wg.Done(); republishGrants(bg, a.mgmt, a.cfg.ReconcileInterval, a.logger) }()
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
	fctx, cancelF := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.Tuning.ShutdownFlush)
	defer cancelF()
	if a.clients.NATS.IsConnected() && a.spool.Size() > 0 {
		if err := a.pub.Drain(fctx); err != nil {
			a.logger.Warn("spool drain at shutdown", "err", err)
		}
	}
	_ = a.spool.Close()
	if err := a.stopTP(fctx); err != nil {
		a.logger.Warn("trace export at shutdown", "err", err)
	}
	a.clients.Close()
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
