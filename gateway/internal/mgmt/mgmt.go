// Package mgmt owns the management API: owners create, list, change,
// regenerate and delete their API keys and read their usage; finance reads
// every key's daily usage and the keys that used the most; every caller may
// read who the token says they are and the tiers; finance and admin grant
// credits to a key for the period; owners register webhook
// endpoints and see and retry their deliveries. Callers are identified by the auth middleware;
// a key of another owner is indistinguishable from one that does not exist.
package mgmt

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	"github.com/lib/pq"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/auth"
	"github.com/mana/apigw/gateway/internal/keys"
)

// TierLookup resolves a tier name to its limits. Safe for concurrent use.
type TierLookup interface {
	Tier(name string) (rateLimitPerMinute int, monthlyCredits int64, ok bool)
}

// KeyState propagates a key's committed state (active, deleted, expiry,
// hashes, limits) to where every gateway checks it on each request, so that
// revocation is immediate. Sync is called after every committed mutation.
// It must be safe for concurrent use, idempotent, and must not let a state
// with an older UpdatedAt overwrite a newer one (two mutations of one key
// may call Sync in either order).
type KeyState interface {
	Sync(ctx context.Context, k *keys.Key) error
}

// Config tunes the handlers. Zero values take the defaults.
type Config struct {
	// BodyLimit caps a request body (default 64 KiB).
	BodyLimit int64
	// MaxGracePeriod caps regenerate's gracePeriodSeconds (default 24h).
	MaxGracePeriod time.Duration
	// MaxRangeDays caps from..to of usage queries (default 366).
	MaxRangeDays int
	// DefaultPageSize and MaxPageSize bound GET /api-keys (default 20, 100).
	DefaultPageSize, MaxPageSize int
	// SyncTimeout bounds one KeyState.Sync (default 5s).
	SyncTimeout time.Duration
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.BodyLimit < 0 {
		errs = append(errs, errors.New("mgmt: BodyLimit must not be negative"))
	}
	if c.MaxGracePeriod < 0 {
		errs = append(errs, errors.New("mgmt: MaxGracePeriod must not be negative"))
	}
	if c.MaxRangeDays < 0 {
		errs = append(errs, errors.New("mgmt: MaxRangeDays must not be negative"))
	}
	if c.DefaultPageSize < 0 || c.MaxPageSize < 0 || (c.MaxPageSize > 0 && c.DefaultPageSize > c.MaxPageSize) {
		errs = append(errs, errors.New("mgmt: page sizes must be positive and DefaultPageSize <= MaxPageSize"))
	}
	if c.SyncTimeout < 0 {
		errs = append(errs, errors.New("mgmt: SyncTimeout must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	if c.BodyLimit == 0 {
		c.BodyLimit = 64 << 10
	}
	if c.MaxGracePeriod == 0 {
		c.MaxGracePeriod = 24 * time.Hour
	}
	if c.MaxRangeDays == 0 {
		c.MaxRangeDays = 366
	}
	if c.MaxPageSize == 0 {
		c.MaxPageSize = 100
	}
	if c.DefaultPageSize == 0 {
		c.DefaultPageSize = min(20, c.MaxPageSize)
	}
	if c.SyncTimeout == 0 {
		c.SyncTimeout = 5 * time.Second
	}
}

// Deps are the handlers' collaborators.
type Deps struct {
	Store  *keys.Store
	DB     *sqlx.DB // usage and balances (read), webhook endpoints and deliveries
	Hasher keys.Hasher
	Tiers  TierLookup
	State  KeyState
	Now    func() time.Time // nil means time.Now
	// Catalog is what GET /tiers lists (the tiers, their limits and
	// endpoints); nil lists none.
	Catalog []TierInfo
	// Granter makes credit grants take effect; nil answers them 503.
	Granter Granter
}

// Handler serves the management API.
type Handler struct {
	cfg    Config
	deps   Deps
	logger *slog.Logger
}

// New validates cfg and deps and returns the handlers.
func New(cfg Config, deps Deps, logger *slog.Logger) (*Handler, error) {
	errs := []error{cfg.Validate()}
	if deps.Store == nil {
		errs = append(errs, errors.New("mgmt: Deps.Store is required"))
	}
	if deps.DB == nil {
		errs = append(errs, errors.New("mgmt: Deps.DB is required"))
	}
	if deps.Tiers == nil {
		errs = append(errs, errors.New("mgmt: Deps.Tiers is required"))
	}
	if deps.State == nil {
		errs = append(errs, errors.New("mgmt: Deps.State is required"))
	}
	if len(deps.Hasher.Hash("")) == 0 {
		errs = append(errs, errors.New("mgmt: Deps.Hasher is required"))
	}
	if logger == nil {
		errs = append(errs, errors.New("mgmt: logger is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.defaults()
	if deps.Now == nil {
		deps.Now = time.Now
	}
	return &Handler{cfg: cfg, deps: deps, logger: logger}, nil
}

// Register mounts the routes on e, each behind authMW (which must store
// auth.Claims, as auth.Middleware does). Errors are returned as
// errors that carry their apierr code, for the server's error handler.
func (h *Handler) Register(e *echo.Echo, authMW echo.MiddlewareFunc) {
	routes := []struct {
		method, path string
		handle       echo.HandlerFunc
	}{
		{http.MethodPost, "/api-keys", h.create},
		{http.MethodGet, "/api-keys", h.list},
		{http.MethodGet, "/api-keys/:id", h.get},
		{http.MethodPatch, "/api-keys/:id", h.update},
		{http.MethodDelete, "/api-keys/:id", h.delete},
		{http.MethodPost, "/api-keys/:id/regenerate", h.regenerate},
		{http.MethodPost, "/api-keys/:id/credits", h.grant},
		{http.MethodGet, "/api-keys/:id/usage", h.usage},
		{http.MethodGet, "/api-keys/:id/usage/summary", h.summary},
		{http.MethodGet, "/billing/daily", h.billingDaily},
		{http.MethodGet, "/billing/keys", h.billingKeys},
		{http.MethodGet, "/me", h.me},
		{http.MethodGet, "/tiers", h.tiers},
		{http.MethodPost, "/webhooks", h.createEndpoint},
		{http.MethodGet, "/webhooks", h.listEndpoints},
		{http.MethodGet, "/webhooks/:id", h.getEndpoint},
		{http.MethodPatch, "/webhooks/:id", h.updateEndpoint},
		{http.MethodDelete, "/webhooks/:id", h.deleteEndpoint},
		{http.MethodGet, "/webhooks/:id/deliveries", h.listDeliveries},
		{http.MethodPost, "/webhooks/:id/deliveries/:deliveryId/retry", h.retryDelivery},
		{http.MethodGet, "/audit", h.auditTrail},
	}
	for _, r := range routes {
		e.Add(r.method, r.path, h.unavailable(r.handle), authMW)
	}
}

// unavailable answers 503 with Retry-After, instead of 500, when a handler
// failed because Postgres cannot be reached: the client's request was fine
// and will succeed once the database is back.
func (h *Handler) unavailable(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		var coded apierr.Coded
		if err == nil || errors.As(err, &coded) || !databaseDown(err) {
			return err
		}
		h.logger.WarnContext(c.Request().Context(), "management request: database unavailable",
			"path", c.Path(), "err", err)
		return errDatabaseDown
	}
}

// databaseDown tells whether err means Postgres could not be reached or
// is not accepting work (stopped, restarting, out of connections), as
// opposed to a statement that failed.
func databaseDown(err error) bool {
	var pe *pq.Error
	if errors.As(err, &pe) {
		switch pe.Code.Class() {
		case "08", "53", "57", "58": // connection exception, insufficient resources, operator intervention, system error
			return true
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// The management API's failures, as the client is told of them; what each
// is written as is looked up in package apierr's table.
var (
	// errKeyNotFound is the one answer for an unknown, deleted or foreign key.
	errKeyNotFound = apierr.New(apierr.NotFound, "API key not found")
	// errNoCaller: a route reached without the authentication middleware's claims.
	errNoCaller = apierr.New(apierr.Unauthenticated, "authentication required")
	// errDatabaseDown: the handler failed because Postgres cannot be reached.
	errDatabaseDown = apierr.New(apierr.Unavailable, "the key database is unavailable; retry the request shortly").
			RetryIn(5 * time.Second)
	// errNotPropagated: the change is committed, but not yet on every gateway.
	errNotPropagated = apierr.New(apierr.Unavailable,
		"the change is saved but could not be propagated to the gateways yet; retry the request").RetryIn(2 * time.Second)
	// errGrantNotInEffect: the grant is committed, its event not yet published.
	errGrantNotInEffect = apierr.New(apierr.Unavailable,
		"the grant is recorded but not in effect yet; retry the request with the same Idempotency-Key").RetryIn(2 * time.Second)
	// errNoGrants: this gateway was built without a publisher for grants.
	errNoGrants = apierr.New(apierr.Unavailable, "credit grants are not available on this gateway")
)

func caller(c echo.Context) (auth.Claims, error) {
	claims, ok := auth.ClaimsFrom(c)
	if !ok || claims.Subject == "" {
		return auth.Claims{}, errNoCaller
	}
	return claims, nil
}

// sync propagates k after a committed change. It runs even if the client
// has gone: the change is committed and must reach every gateway.
func (h *Handler) sync(c echo.Context, k *keys.Key, action string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), h.cfg.SyncTimeout)
	defer cancel()
	if err := h.deps.State.Sync(ctx, k); err != nil {
		h.logger.ErrorContext(ctx, "propagate api key state", "action", action, "key_id", k.ID,
			"key_prefix", k.Prefix, "err", err)
		return errNotPropagated
	}
	h.logger.InfoContext(ctx, "api key "+action, "key_id", k.ID, "key_prefix", k.Prefix, "owner_id", k.OwnerID)
	return nil
}

func internal(what string, err error) error {
	return fmt.Errorf("%s: %w", what, err)
}
