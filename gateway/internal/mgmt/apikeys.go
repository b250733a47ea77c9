package mgmt

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
	"github.com/lib/pq"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/keys"
)

// keyView is the key object of the contract. Secret is set only in the
// answers to create and regenerate.
type keyView struct {
	ID                 string     `json:"id"`
	Name               string     `json:"name"`
	KeyPrefix          string     `json:"keyPrefix"`
	Tier               string     `json:"tier"`
	Active             bool       `json:"active"`
	RateLimitPerMinute int        `json:"rateLimitPerMinute"`
	MonthlyCredits     int64      `json:"monthlyCredits"`
	CreditsRemaining   int64      `json:"creditsRemaining"`
	CreatedAt          time.Time  `json:"createdAt"`
	ExpiresAt          *time.Time `json:"expiresAt"`
	LastUsedAt         *time.Time `json:"lastUsedAt"`
	Secret             string     `json:"key,omitempty"`
}

func view(k *keys.Key, b spent) keyView {
	return keyView{
		ID: k.ID, Name: k.Name, KeyPrefix: k.Prefix, Tier: k.Tier, Active: k.Active,
		RateLimitPerMinute: k.RateLimitPerMinute, MonthlyCredits: k.MonthlyCredits,
		CreditsRemaining: max(0, k.MonthlyCredits+b.grants-b.used),
		CreatedAt:        k.CreatedAt.UTC(), ExpiresAt: utc(k.ExpiresAt), LastUsedAt: utc(k.LastUsedAt),
	}
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// monthStart is the first instant of t's UTC month: the credit period.
func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// spent is a key's month as the billing worker recorded it: the credits
// used, and those credit grants added.
type spent struct{ used, grants int64 }

// creditsUsed returns the credits each key used this month and those grants
// added, as the billing worker recorded them (keys without a row: none).
func (h *Handler) creditsUsed(ctx context.Context, ids ...string) (map[string]spent, error) {
	used := make(map[string]spent, len(ids))
	if len(ids) == 0 {
		return used, nil
	}
	rows, err := h.deps.DB.QueryContext(ctx, `SELECT key_id, used, grants FROM api_gateway.credit_balances
		WHERE period = $1 AND key_id = ANY($2::uuid[])`, monthStart(h.deps.Now()), pq.Array(ids))
	if err != nil {
		return nil, fmt.Errorf("read credit balances: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var b spent
		if err := rows.Scan(&id, &b.used, &b.grants); err != nil {
			return nil, fmt.Errorf("read credit balances: %w", err)
		}
		used[id] = b
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read credit balances: %w", err)
	}
	return used, nil
}

func (h *Handler) writeKey(c echo.Context, status int, k *keys.Key, secret string) error {
	used, err := h.creditsUsed(c.Request().Context(), k.ID)
	if err != nil {
		return err
	}
	v := view(k, used[k.ID])
	v.Secret = secret
	if secret != "" {
		c.Response().Header().Set("Cache-Control", "no-store")
	}
	return c.JSON(status, v)
}

func validName(name string) error {
	if strings.TrimSpace(name) == "" {
		return apierr.New(apierr.Unprocessable, "name must not be empty")
	}
	if utf8.RuneCountInString(name) > 100 {
		return apierr.New(apierr.Unprocessable, "name must be at most 100 characters")
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return apierr.New(apierr.Unprocessable, "name must not contain control characters")
		}
	}
	return nil
}

func (h *Handler) validExpiry(t time.Time) error {
	if !t.After(h.deps.Now()) {
		return apierr.New(apierr.Unprocessable, "expiresAt must be in the future")
	}
	if t.Year() > 9999 {
		return apierr.New(apierr.Unprocessable, "expiresAt is too far in the future")
	}
	return nil
}

type createRequest struct {
	Name      *string    `json:"name"`
	Tier      *string    `json:"tier"`
	ExpiresAt *time.Time `json:"expiresAt"`
}

func (h *Handler) create(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	var req createRequest
	if err := h.decodeJSON(c, &req, false); err != nil {
		return err
	}
	if req.Name == nil {
		return apierr.New(apierr.Unprocessable, "name is required")
	}
	if err := validName(*req.Name); err != nil {
		return err
	}
	if req.Tier == nil {
		return apierr.New(apierr.Unprocessable, "tier is required")
	}
	rpm, credits, ok := h.deps.Tiers.Tier(*req.Tier)
	if !ok {
		return apierr.New(apierr.Unprocessable, fmt.Sprintf("unknown tier %q", *req.Tier))
	}
	if req.ExpiresAt != nil {
		if err := h.validExpiry(*req.ExpiresAt); err != nil {
			return err
		}
	}
	secret, err := keys.Generate()
	if err != nil {
		return err
	}
	k := &keys.Key{
		OwnerID: who.Subject, Name: *req.Name, Prefix: keys.Prefix(secret), Tier: *req.Tier, Active: true,
		RateLimitPerMinute: rpm, MonthlyCredits: credits, ExpiresAt: utc(req.ExpiresAt),
		Hash: h.deps.Hasher.Hash(secret),
	}
	ctx := c.Request().Context()
	if err := h.deps.Store.CreateThen(ctx, k, h.keyChange(c, who.Subject, "created")); err != nil {
		return internal("create api key", err)
	}
	if err := h.sync(c, k, "created"); err != nil {
		// The secret is never shown, so the key must not stay usable:
		// the client retries and gets a fresh one.
		if _, derr := h.deps.Store.SoftDelete(context.WithoutCancel(ctx), k.ID); derr != nil {
			h.logger.ErrorContext(ctx, "withdraw unpropagated api key", "key_id", k.ID, "err", derr)
		}
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api-keys/"+k.ID)
	return h.writeKey(c, http.StatusCreated, k, secret)
}

type listResponse struct {
	Data       []keyView `json:"data"`
	NextCursor *string   `json:"nextCursor"`
}

func (h *Handler) list(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	limit, err := queryLimit(c, h.cfg.DefaultPageSize, h.cfg.MaxPageSize)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	ks, next, err := h.deps.Store.ListByOwner(ctx, who.Subject, limit, c.QueryParam("cursor"))
	if errors.Is(err, keys.ErrBadCursor) {
		return apierr.New(apierr.Invalid, "invalid cursor")
	}
	if err != nil {
		return internal("list api keys", err)
	}
	ids := make([]string, len(ks))
	for i, k := range ks {
		ids[i] = k.ID
	}
	used, err := h.creditsUsed(ctx, ids...)
	if err != nil {
		return err
	}
	resp := listResponse{Data: make([]keyView, 0, len(ks))}
	for _, k := range ks {
		resp.Data = append(resp.Data, view(k, used[k.ID]))
	}
	if next != "" {
		resp.NextCursor = &next
	}
	return c.JSON(http.StatusOK, resp)
}

// queryLimit reads ?limit= (1..most), def when absent.
func queryLimit(c echo.Context, def, most int) (int, error) {
	s := c.QueryParam("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > most {
		return 0, apierr.New(apierr.Invalid, fmt.Sprintf("limit must be an integer from 1 to %d", most))
	}
	return n, nil
}

// ownKey returns the caller's undeleted key with the path's id, or
// errKeyNotFound whether it is unknown, deleted or someone else's.
func (h *Handler) ownKey(c echo.Context, owner string) (*keys.Key, error) {
	k, err := h.deps.Store.ByID(c.Request().Context(), c.Param("id"))
	if errors.Is(err, keys.ErrNotFound) {
		return nil, errKeyNotFound
	}
	if err != nil {
		return nil, internal("read api key", err)
	}
	if k.OwnerID != owner || k.DeletedAt != nil {
		return nil, errKeyNotFound
	}
	return k, nil
}

func (h *Handler) get(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	k, err := h.ownKey(c, who.Subject)
	if err != nil {
		return err
	}
	return h.writeKey(c, http.StatusOK, k, "")
}

// mutate applies fn to the caller's key under its row lock, then
// propagates the committed state. A deleted key is found only if
// allowDeleted (DELETE stays idempotent).
func (h *Handler) mutate(c echo.Context, owner, action string, allowDeleted bool, fn func(*keys.Key) error) (*keys.Key, error) {
	k, err := h.deps.Store.UpdateThen(c.Request().Context(), c.Param("id"), func(k *keys.Key) error {
		if k.OwnerID != owner || (k.DeletedAt != nil && !allowDeleted) {
			return errKeyNotFound
		}
		return fn(k)
	}, h.keyChange(c, owner, action))
	var coded apierr.Coded
	switch {
	case errors.Is(err, keys.ErrNotFound):
		return nil, errKeyNotFound
	case errors.As(err, &coded):
		return nil, coded
	case err != nil:
		return nil, internal(action+" api key", err)
	}
	if err := h.sync(c, k, action); err != nil {
		return nil, err
	}
	return k, nil
}

type updateRequest struct {
	Name      optional[string]    `json:"name"`
	Active    optional[bool]      `json:"active"`
	ExpiresAt optional[time.Time] `json:"expiresAt"`
}

func (h *Handler) update(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	if _, err := h.ownKey(c, who.Subject); err != nil {
		return err // before reading the body: a foreign id learns nothing from validation
	}
	var req updateRequest
	if err := h.decodeJSON(c, &req, false); err != nil {
		return err
	}
	switch {
	case !req.Name.Set && !req.Active.Set && !req.ExpiresAt.Set:
		return apierr.New(apierr.Unprocessable, "nothing to update: give name, active or expiresAt")
	case req.Name.Null:
		return apierr.New(apierr.Unprocessable, "name must not be null")
	case req.Active.Null:
		return apierr.New(apierr.Unprocessable, "active must not be null")
	}
	if req.Name.Set {
		if err := validName(req.Name.V); err != nil {
			return err
		}
	}
	if req.ExpiresAt.Set && !req.ExpiresAt.Null {
		if err := h.validExpiry(req.ExpiresAt.V); err != nil {
			return err
		}
	}
	k, err := h.mutate(c, who.Subject, "updated", false, func(k *keys.Key) error {
		if req.Name.Set {
			k.Name = req.Name.V
		}
		if req.Active.Set {
			k.Active = req.Active.V
		}
		if req.ExpiresAt.Set {
			k.ExpiresAt = utc(&req.ExpiresAt.V)
			if req.ExpiresAt.Null {
				k.ExpiresAt = nil
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return h.writeKey(c, http.StatusOK, k, "")
}

func (h *Handler) delete(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	now := h.deps.Now().UTC()
	if _, err := h.mutate(c, who.Subject, "deleted", true, func(k *keys.Key) error {
		if k.DeletedAt == nil {
			k.DeletedAt = &now
		}
		return nil
	}); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

type regenerateRequest struct {
	GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
}

func (h *Handler) regenerate(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	if _, err := h.ownKey(c, who.Subject); err != nil {
		return err
	}
	var req regenerateRequest
	if err := h.decodeJSON(c, &req, true); err != nil {
		return err
	}
	var grace time.Duration
	if req.GracePeriodSeconds != nil {
		s := *req.GracePeriodSeconds
		maxS := int64(h.cfg.MaxGracePeriod / time.Second)
		if s < 0 || s > maxS {
			return apierr.New(apierr.Unprocessable, fmt.Sprintf("gracePeriodSeconds must be from 0 to %d", maxS))
		}
		grace = time.Duration(s) * time.Second
	}
	secret, err := keys.Generate()
	if err != nil {
		return err
	}
	prevUntil := h.deps.Now().UTC().Add(grace)
	k, err := h.mutate(c, who.Subject, "regenerated", false, func(k *keys.Key) error {
		// The old secret keeps working until prevUntil (now, without a
		// grace period); a secret from an earlier regenerate stops now.
		k.PrevHash, k.PrevExpiresAt = k.Hash, &prevUntil
		k.Hash, k.Prefix = h.deps.Hasher.Hash(secret), keys.Prefix(secret)
		return nil
	})
	if err != nil {
		return err
	}
	return h.writeKey(c, http.StatusOK, k, secret)
}
