package mgmt

import (
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	"github.com/lib/pq"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/audit"
	"github.com/mana/apigw/proto/webhook"
)

// errEndpointNotFound is the one answer for an unknown, deleted or foreign
// webhook endpoint (and for a delivery that is not one of it).
var errEndpointNotFound = apierr.New(apierr.NotFound, "webhook endpoint not found")

// maxEndpoints caps the endpoints of one owner, so that one event never fans
// out into more than this many deliveries.
const maxEndpoints = 10

// defaultThresholds are the percents of a key's grant credits.threshold
// reports when an endpoint names none.
var defaultThresholds = []int{50, 80, 100}

// endpointView is the webhook endpoint object of the contract. Secret is
// set only in the answer to create.
type endpointView struct {
	ID             string     `json:"id"`
	URL            string     `json:"url"`
	Description    string     `json:"description"`
	Events         []string   `json:"events"`
	Thresholds     []int      `json:"thresholds"`
	Enabled        bool       `json:"enabled"`
	FailingSince   *time.Time `json:"failingSince"`
	DisabledAt     *time.Time `json:"disabledAt"`
	DisabledReason *string    `json:"disabledReason"`
	CreatedAt      time.Time  `json:"createdAt"`
	UpdatedAt      time.Time  `json:"updatedAt"`
	Secret         string     `json:"secret,omitempty"`
}

// endpointRow is a row of api_gateway.webhook_endpoints without its secret.
type endpointRow struct {
	ID             string         `db:"id"`
	OwnerID        string         `db:"owner_id"`
	URL            string         `db:"url"`
	Description    string         `db:"description"`
	Events         pq.StringArray `db:"events"`
	Thresholds     pq.Int64Array  `db:"thresholds"`
	FailingSince   *time.Time     `db:"failing_since"`
	DisabledAt     *time.Time     `db:"disabled_at"`
	DisabledReason *string        `db:"disabled_reason"`
	CreatedAt      time.Time      `db:"created_at"`
	UpdatedAt      time.Time      `db:"updated_at"`
	Deleted        bool           `db:"deleted"`
}

// auditEndpoint appends an endpoint's change to the audit trail in tx;
// the endpoint object never holds its secret.
func (h *Handler) auditEndpoint(c echo.Context, tx *sqlx.Tx, actor, action string, before, after *endpointRow) error {
	target := after
	if target == nil {
		target = before
	}
	var b, a any
	if before != nil {
		b = before.view()
	}
	if after != nil {
		a = after.view()
	}
	return audit.Record(c.Request().Context(), tx, audit.Entry{At: h.deps.Now(), Actor: actor, OwnerID: target.OwnerID,
		RequestID: requestID(c), Action: "webhook_endpoint." + action, TargetType: "webhook_endpoint", TargetID: target.ID,
		Before: b, After: a})
}

const endpointColumns = `id, owner_id, url, description, events, thresholds, failing_since, disabled_at, disabled_reason, created_at, updated_at`

func (r endpointRow) view() endpointView {
	v := endpointView{ID: r.ID, URL: r.URL, Description: r.Description, Events: []string(r.Events),
		Thresholds: make([]int, len(r.Thresholds)), Enabled: r.DisabledAt == nil,
		FailingSince: utc(r.FailingSince), DisabledAt: utc(r.DisabledAt), DisabledReason: r.DisabledReason,
		CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC()}
	if v.Events == nil {
		v.Events = []string{}
	}
	for i, t := range r.Thresholds {
		v.Thresholds[i] = int(t)
	}
	return v
}

// validURL accepts an absolute http or https URL without credentials. Where
// it may be dialled is decided by the delivery worker's dialer, on the
// address it connects to, not here on the name.
func validURL(s string) error {
	if len(s) > 2048 {
		return apierr.New(apierr.Unprocessable, "url must be at most 2048 bytes")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Hostname() == "" {
		return apierr.New(apierr.Unprocessable, "url must be an absolute http or https URL")
	}
	if u.User != nil {
		return apierr.New(apierr.Unprocessable, "url must not contain credentials")
	}
	if u.Fragment != "" {
		return apierr.New(apierr.Unprocessable, "url must not contain a fragment")
	}
	return nil
}

func validDescription(s string) error {
	if utf8.RuneCountInString(s) > 200 {
		return apierr.New(apierr.Unprocessable, "description must be at most 200 characters")
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || r == utf8.RuneError }) {
		return apierr.New(apierr.Unprocessable, "description must not contain control characters")
	}
	return nil
}

// validEvents returns the event types sorted and without duplicates; empty
// means every type.
func validEvents(events []string) ([]string, error) {
	out := make([]string, 0, len(events))
	for _, e := range events {
		if !webhook.KnownType(e) {
			return nil, apierr.New(apierr.Unprocessable,
				fmt.Sprintf("unknown event type %q; known: %s", e, strings.Join(webhook.Types, ", ")))
		}
		out = append(out, e)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// validThresholds returns whole percents 1..100, sorted, without duplicates.
func validThresholds(ts []int) ([]int64, error) {
	if len(ts) == 0 || len(ts) > 10 {
		return nil, apierr.New(apierr.Unprocessable, "thresholds must hold 1 to 10 whole percents")
	}
	out := make([]int64, 0, len(ts))
	for _, t := range ts {
		if t < 1 || t > 100 {
			return nil, apierr.New(apierr.Unprocessable, "each threshold must be a whole percent from 1 to 100")
		}
		out = append(out, int64(t))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

type createEndpointRequest struct {
	URL         *string  `json:"url"`
	Events      []string `json:"events"`
	Thresholds  []int    `json:"thresholds"`
	Description *string  `json:"description"`
}

func (h *Handler) createEndpoint(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	var req createEndpointRequest
	if err := h.decodeJSON(c, &req, false); err != nil {
		return err
	}
	if req.URL == nil {
		return apierr.New(apierr.Unprocessable, "url is required")
	}
	if err := validURL(*req.URL); err != nil {
		return err
	}
	desc := ""
	if req.Description != nil {
		desc = *req.Description
	}
	if err := validDescription(desc); err != nil {
		return err
	}
	events, err := validEvents(req.Events)
	if err != nil {
		return err
	}
	if req.Thresholds == nil {
		req.Thresholds = defaultThresholds
	}
	thresholds, err := validThresholds(req.Thresholds)
	if err != nil {
		return err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return internal("webhook endpoint id", err)
	}
	secret := webhook.NewSecret()
	now := h.deps.Now().UTC()
	ctx := c.Request().Context()
	tx, err := h.deps.DB.BeginTxx(ctx, nil)
	if err != nil {
		return internal("create webhook endpoint", err)
	}
	defer func() { _ = tx.Rollback() }()
	// The owner's count is read under a per-owner advisory lock, so two
	// concurrent creates cannot both pass the cap.
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('webhook_endpoints:' || $1, 0))`, who.Subject); err != nil {
		return internal("create webhook endpoint", err)
	}
	var n int
	if err := tx.GetContext(ctx, &n, `SELECT count(*) FROM api_gateway.webhook_endpoints WHERE owner_id = $1 AND deleted_at IS NULL`, who.Subject); err != nil {
		return internal("create webhook endpoint", err)
	}
	if n >= maxEndpoints {
		return apierr.New(apierr.Conflict, fmt.Sprintf("an owner may have at most %d webhook endpoints", maxEndpoints))
	}
	var row endpointRow
	if err := tx.GetContext(ctx, &row, `INSERT INTO api_gateway.webhook_endpoints
		(id, owner_id, url, description, events, thresholds, secret, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING `+endpointColumns,
		id.String(), who.Subject, *req.URL, desc, pq.StringArray(events), pq.Int64Array(thresholds), secret, now); err != nil {
		return internal("create webhook endpoint", err)
	}
	if err := h.auditEndpoint(c, tx, who.Subject, "created", nil, &row); err != nil {
		return internal("create webhook endpoint", err)
	}
	if err := tx.Commit(); err != nil {
		return internal("create webhook endpoint", err)
	}
	h.logger.InfoContext(ctx, "webhook endpoint created", "endpoint_id", row.ID, "owner_id", who.Subject)
	v := row.view()
	v.Secret = secret
	c.Response().Header().Set("Cache-Control", "no-store")
	c.Response().Header().Set(echo.HeaderLocation, "/webhooks/"+row.ID)
	return c.JSON(http.StatusCreated, v)
}

func (h *Handler) listEndpoints(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	rows := []endpointRow{}
	if err := h.deps.DB.SelectContext(c.Request().Context(), &rows, `SELECT `+endpointColumns+`
		FROM api_gateway.webhook_endpoints WHERE owner_id = $1 AND deleted_at IS NULL ORDER BY created_at, id`, who.Subject); err != nil {
		return internal("list webhook endpoints", err)
	}
	out := struct {
		Data []endpointView `json:"data"`
	}{Data: make([]endpointView, 0, len(rows))}
	for _, r := range rows {
		out.Data = append(out.Data, r.view())
	}
	return c.JSON(http.StatusOK, out)
}

// ownEndpoint returns the caller's undeleted endpoint with the path's id, or
// errEndpointNotFound whether it is unknown, deleted or someone else's.
func (h *Handler) ownEndpoint(c echo.Context, owner string) (endpointRow, error) {
	var row endpointRow
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return row, errEndpointNotFound
	}
	err = h.deps.DB.GetContext(c.Request().Context(), &row, `SELECT `+endpointColumns+`
		FROM api_gateway.webhook_endpoints WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL`, id.String(), owner)
	if errors.Is(err, sql.ErrNoRows) {
		return row, errEndpointNotFound
	}
	if err != nil {
		return row, internal("read webhook endpoint", err)
	}
	return row, nil
}

func (h *Handler) getEndpoint(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	row, err := h.ownEndpoint(c, who.Subject)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, row.view())
}

type updateEndpointRequest struct {
	URL         optional[string]   `json:"url"`
	Events      optional[[]string] `json:"events"`
	Thresholds  optional[[]int]    `json:"thresholds"`
	Description optional[string]   `json:"description"`
	Enabled     optional[bool]     `json:"enabled"`
}

func (h *Handler) updateEndpoint(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	row, err := h.ownEndpoint(c, who.Subject)
	if err != nil {
		return err // before reading the body: a foreign id learns nothing from validation
	}
	var req updateEndpointRequest
	if err := h.decodeJSON(c, &req, false); err != nil {
		return err
	}
	if !req.URL.Set && !req.Events.Set && !req.Thresholds.Set && !req.Description.Set && !req.Enabled.Set {
		return apierr.New(apierr.Unprocessable, "nothing to update: give url, events, thresholds, description or enabled")
	}
	for name, null := range map[string]bool{"url": req.URL.Null, "events": req.Events.Null, "thresholds": req.Thresholds.Null,
		"description": req.Description.Null, "enabled": req.Enabled.Null} {
		if null {
			return apierr.New(apierr.Unprocessable, name+" must not be null")
		}
	}
	url, desc, events, thresholds := row.URL, row.Description, []string(row.Events), []int64(row.Thresholds)
	if req.URL.Set {
		if err := validURL(req.URL.V); err != nil {
			return err
		}
		url = req.URL.V
	}
	if req.Description.Set {
		if err := validDescription(req.Description.V); err != nil {
			return err
		}
		desc = req.Description.V
	}
	if req.Events.Set {
		if events, err = validEvents(req.Events.V); err != nil {
			return err
		}
	}
	if req.Thresholds.Set {
		if thresholds, err = validThresholds(req.Thresholds.V); err != nil {
			return err
		}
	}
	// enabled: true re-enables an endpoint the worker disabled (and forgets
	// its failures); false disables it by hand.
	enable, disable := req.Enabled.Set && req.Enabled.V, req.Enabled.Set && !req.Enabled.V
	ctx := c.Request().Context()
	tx, err := h.deps.DB.BeginTxx(ctx, nil)
	if err != nil {
		return internal("update webhook endpoint", err)
	}
	defer func() { _ = tx.Rollback() }()
	var out endpointRow
	err = tx.GetContext(ctx, &out, `UPDATE api_gateway.webhook_endpoints SET
		url = $3, description = $4, events = $5, thresholds = $6,
		disabled_at     = CASE WHEN $7 THEN NULL WHEN $8 THEN coalesce(disabled_at, $9) ELSE disabled_at END,
		disabled_reason = CASE WHEN $7 THEN NULL WHEN $8 AND disabled_at IS NULL THEN 'disabled by its owner' ELSE disabled_reason END,
		failing_since   = CASE WHEN $7 THEN NULL ELSE failing_since END,
		updated_at = $9
		WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL RETURNING `+endpointColumns,
		row.ID, who.Subject, url, desc, pq.StringArray(events), pq.Int64Array(thresholds), enable, disable, h.deps.Now().UTC())
	if errors.Is(err, sql.ErrNoRows) {
		return errEndpointNotFound
	}
	if err != nil {
		return internal("update webhook endpoint", err)
	}
	if err := h.auditEndpoint(c, tx, who.Subject, "updated", &row, &out); err != nil {
		return internal("update webhook endpoint", err)
	}
	if err := tx.Commit(); err != nil {
		return internal("update webhook endpoint", err)
	}
	h.logger.InfoContext(c.Request().Context(), "webhook endpoint updated", "endpoint_id", out.ID, "owner_id", who.Subject)
	return c.JSON(http.StatusOK, out.view())
}

func (h *Handler) deleteEndpoint(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return errEndpointNotFound
	}
	ctx := c.Request().Context()
	tx, err := h.deps.DB.BeginTxx(ctx, nil)
	if err != nil {
		return internal("delete webhook endpoint", err)
	}
	defer func() { _ = tx.Rollback() }()
	var before endpointRow
	err = tx.GetContext(ctx, &before, `SELECT `+endpointColumns+`, deleted_at IS NOT NULL AS deleted
		FROM api_gateway.webhook_endpoints WHERE id = $1 AND owner_id = $2 FOR UPDATE`, id.String(), who.Subject)
	if errors.Is(err, sql.ErrNoRows) {
		return errEndpointNotFound
	}
	if err != nil {
		return internal("delete webhook endpoint", err)
	}
	// Idempotent: deleting a deleted endpoint of the caller answers 204 again.
	if !before.Deleted {
		if _, err := tx.ExecContext(ctx, `UPDATE api_gateway.webhook_endpoints SET deleted_at = $2, updated_at = $2 WHERE id = $1`,
			id.String(), h.deps.Now().UTC()); err != nil {
			return internal("delete webhook endpoint", err)
		}
		// Nothing more is sent to it.
		if _, err := tx.ExecContext(ctx, `UPDATE api_gateway.webhook_deliveries SET status = 'failed',
			last_error = 'the endpoint was deleted', next_attempt_at = NULL, leased_until = NULL WHERE endpoint_id = $1 AND status = 'pending'`, id.String()); err != nil {
			return internal("delete webhook endpoint", err)
		}
		if err := h.auditEndpoint(c, tx, who.Subject, "deleted", &before, nil); err != nil {
			return internal("delete webhook endpoint", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return internal("delete webhook endpoint", err)
	}
	h.logger.InfoContext(ctx, "webhook endpoint deleted", "endpoint_id", id.String(), "owner_id", who.Subject)
	return c.NoContent(http.StatusNoContent)
}

// deliveryView is one event's delivery to one endpoint.
type deliveryView struct {
	ID             string     `json:"id" db:"event_id"`
	Type           string     `json:"type" db:"type"`
	Status         string     `json:"status" db:"status"`
	Attempts       int        `json:"attempts" db:"attempts"`
	LastStatusCode *int       `json:"lastStatusCode" db:"last_status_code"`
	LastError      *string    `json:"lastError" db:"last_error"`
	LastAttemptAt  *time.Time `json:"lastAttemptAt" db:"last_attempt_at"`
	NextAttemptAt  *time.Time `json:"nextAttemptAt" db:"next_attempt_at"`
	CreatedAt      time.Time  `json:"createdAt" db:"created_at"`
}

func (d deliveryView) utc() deliveryView {
	d.LastAttemptAt, d.NextAttemptAt, d.CreatedAt = utc(d.LastAttemptAt), utc(d.NextAttemptAt), d.CreatedAt.UTC()
	return d
}

const deliveryColumns = `d.event_id, ev.type, d.status, d.attempts, d.last_status_code, d.last_error, d.last_attempt_at, d.next_attempt_at, d.created_at`

func (h *Handler) listDeliveries(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	row, err := h.ownEndpoint(c, who.Subject)
	if err != nil {
		return err
	}
	limit, err := queryLimit(c, h.cfg.DefaultPageSize, h.cfg.MaxPageSize)
	if err != nil {
		return err
	}
	rows := []deliveryView{}
	if err := h.deps.DB.SelectContext(c.Request().Context(), &rows, `SELECT `+deliveryColumns+`
		FROM api_gateway.webhook_deliveries d JOIN api_gateway.webhook_events ev ON ev.id = d.event_id
		WHERE d.endpoint_id = $1 ORDER BY d.created_at DESC, d.event_id DESC LIMIT $2`, row.ID, limit); err != nil {
		return internal("list webhook deliveries", err)
	}
	for i := range rows {
		rows[i] = rows[i].utc()
	}
	return c.JSON(http.StatusOK, struct {
		Data []deliveryView `json:"data"`
	}{rows})
}

// retryDelivery makes a delivery due now, whatever its state: a failed one
// gets a fresh round of attempts, a succeeded one is sent again (same
// webhook-id, so a receiver that deduplicates ignores it). A delivery a
// sender holds (leased: being sent now) is refused with 409 and
// Retry-After: its outcome is recorded within the lease, or, if the sender
// died, it is sent again when the lease ends.
func (h *Handler) retryDelivery(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	row, err := h.ownEndpoint(c, who.Subject)
	if err != nil {
		return err
	}
	if row.DisabledAt != nil {
		return apierr.New(apierr.Conflict, "the endpoint is disabled; enable it (PATCH enabled: true) before retrying")
	}
	ctx, now := c.Request().Context(), h.deps.Now().UTC()
	var d deliveryView
	err = h.deps.DB.GetContext(ctx, &d, `WITH d AS (
		UPDATE api_gateway.webhook_deliveries SET status = 'pending', next_attempt_at = $3
		WHERE endpoint_id = $1 AND event_id = $2 AND NOT (status = 'pending' AND coalesce(leased_until > $3, false))
		RETURNING *)
		SELECT `+deliveryColumns+` FROM d JOIN api_gateway.webhook_events ev ON ev.id = d.event_id`,
		row.ID, c.Param("deliveryId"), now)
	if errors.Is(err, sql.ErrNoRows) {
		var leasedUntil *time.Time
		err = h.deps.DB.GetContext(ctx, &leasedUntil, `SELECT leased_until FROM api_gateway.webhook_deliveries
			WHERE endpoint_id = $1 AND event_id = $2 AND status = 'pending' AND leased_until > $3`, row.ID, c.Param("deliveryId"), now)
		if errors.Is(err, sql.ErrNoRows) {
			return apierr.New(apierr.NotFound, "webhook delivery not found")
		}
		if err != nil {
			return internal("retry webhook delivery", err)
		}
		wait := max(time.Second, time.Duration(math.Ceil(leasedUntil.Sub(now).Seconds()))*time.Second)
		return apierr.New(apierr.Conflict, fmt.Sprintf("the delivery is being sent (leased until %s): its outcome is recorded by then, "+
			"or it is sent again under the same webhook-id if the sender stopped", leasedUntil.UTC().Format(time.RFC3339))).RetryIn(wait)
	}
	if err != nil {
		return internal("retry webhook delivery", err)
	}
	return c.JSON(http.StatusAccepted, d.utc())
}
