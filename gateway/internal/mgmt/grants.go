package mgmt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/audit"
	"github.com/mana/apigw/gateway/internal/keys"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Granter makes a credit grant take effect: its event durable on the usage
// stream (from where the ledger, the aggregates and a replay see it) and the
// credits in the balance every gateway enforces at once. Grant may be called
// again with the same event (a retried request, a republish): the stream's
// consumers apply an event ID once and the enforced balance takes a grant
// once. Safe for concurrent use.
type Granter interface {
	Grant(ctx context.Context, ev *usagev1.UsageEvent) error
}

// Bounds of a grant request.
const (
	// MaxGrantCredits caps one grant: twenty times the largest tier's month.
	MaxGrantCredits = 1_000_000
	// MaxGrantReason caps the reason, in characters.
	MaxGrantReason = 500
	// MaxIdempotencyKey caps the Idempotency-Key header, in bytes.
	MaxIdempotencyKey = 255
)

type grantRequest struct {
	Credits *int64  `json:"credits"`
	Reason  *string `json:"reason"`
}

// grantView is the answer to a grant, the same each time its
// Idempotency-Key is presented again.
type grantView struct {
	ID        string    `json:"id"`
	KeyID     string    `json:"keyId"`
	Credits   int64     `json:"credits"`
	Reason    string    `json:"reason"`
	Period    string    `json:"period"`
	Actor     string    `json:"actor"`
	CreatedAt time.Time `json:"createdAt"`
}

// grantRow is a row of api_gateway.credit_grants.
type grantRow struct {
	EventID        string         `db:"event_id"`
	KeyID          string         `db:"key_id"`
	OwnerID        string         `db:"owner_id"`
	Actor          string         `db:"actor"`
	IdempotencyKey sql.NullString `db:"idempotency_key"`
	RequestHash    []byte         `db:"request_hash"`
	RequestID      string         `db:"request_id"`
	Credits        int64          `db:"credits"`
	Reason         string         `db:"reason"`
	Period         time.Time      `db:"period"`
	Tier           string         `db:"tier"`
	MonthlyCredits int64          `db:"monthly_credits"`
	CreatedAt      time.Time      `db:"created_at"`
	PublishedAt    sql.NullTime   `db:"published_at"`
}

func (g grantRow) view() grantView {
	return grantView{ID: g.EventID, KeyID: g.KeyID, Credits: g.Credits, Reason: g.Reason,
		Period: g.Period.UTC().Format("2006-01"), Actor: g.Actor, CreatedAt: g.CreatedAt.UTC()}
}

// Event is the grant's usage event, the same bytes each time it is built.
func (g grantRow) Event() *usagev1.UsageEvent {
	return &usagev1.UsageEvent{
		EventId: g.EventID, RequestId: g.RequestID, KeyId: g.KeyID, OwnerId: g.OwnerID, Tier: g.Tier,
		Endpoint: usagev1.GrantEndpoint, Status: http.StatusOK, Unit: "credit",
		OccurredAt: timestamppb.New(g.CreatedAt), Period: g.Period.UTC().Format("2006-01"),
		MonthlyCredits: g.MonthlyCredits,
		Grant:          &usagev1.CreditGrant{Credits: g.Credits, Reason: g.Reason, Actor: g.Actor},
	}
}

// auditedGrant is a key's grants of the period, before and after one.
type auditedGrant struct {
	Period         string `json:"period"`
	MonthlyCredits int64  `json:"monthlyCredits"`
	GrantedCredits int64  `json:"grantedCredits"`
	Credits        int64  `json:"credits,omitempty"`
	Reason         string `json:"reason,omitempty"`
	GrantID        string `json:"grantId,omitempty"`
}

func validReason(reason string) error {
	if strings.TrimSpace(reason) == "" {
		return apierr.New(apierr.Unprocessable, "reason must not be empty")
	}
	if utf8.RuneCountInString(reason) > MaxGrantReason {
		return apierr.New(apierr.Unprocessable, fmt.Sprintf("reason must be at most %d characters", MaxGrantReason))
	}
	for _, r := range reason {
		if (unicode.IsControl(r) && r != '\n') || r == utf8.RuneError {
			return apierr.New(apierr.Unprocessable, "reason must not contain control characters")
		}
	}
	return nil
}

func validIdempotencyKey(k string) error {
	if len(k) > MaxIdempotencyKey {
		return apierr.New(apierr.Invalid, fmt.Sprintf("Idempotency-Key must be at most %d bytes", MaxIdempotencyKey))
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return apierr.New(apierr.Invalid, "Idempotency-Key must be printable ASCII without spaces")
		}
	}
	return nil
}

// grantHash tells one grant request from another: the key, the credits
// and the reason.
func grantHash(keyID string, credits int64, reason string) []byte {
	h := sha256.New()
	for _, f := range []string{keyID, strconv.FormatInt(credits, 10), reason} {
		h.Write([]byte(strconv.Itoa(len(f)) + ":" + f))
	}
	return h.Sum(nil)
}

// grant adds credits to a key for the current period (finance and admin).
// An owner asking about a key of its own is refused 403; about any other,
// 404 as everywhere. With an Idempotency-Key, the same request again gets
// the same answer and grants nothing more; the key with another body is 422.
func (h *Handler) grant(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	if h.deps.Granter == nil {
		return errNoGrants
	}
	var k *keys.Key
	if who.IsFinance() {
		k, err = h.readableKey(c, who)
		if err == nil && k.DeletedAt != nil {
			err = errKeyNotFound
		}
	} else {
		k, err = h.ownKey(c, who.Subject)
		if err == nil {
			err = apierr.New(apierr.Forbidden, "granting credits needs the finance or admin role")
		}
	}
	if err != nil {
		return err
	}
	idem := c.Request().Header.Get("Idempotency-Key")
	if err := validIdempotencyKey(idem); err != nil {
		return err
	}
	var req grantRequest
	if err := h.decodeJSON(c, &req, false); err != nil {
		return err
	}
	if req.Credits == nil || *req.Credits <= 0 || *req.Credits > MaxGrantCredits {
		return apierr.New(apierr.Unprocessable, fmt.Sprintf("credits must be a whole number from 1 to %d", MaxGrantCredits))
	}
	if req.Reason == nil {
		return apierr.New(apierr.Unprocessable, "reason is required")
	}
	if err := validReason(*req.Reason); err != nil {
		return err
	}
	now := h.deps.Now().UTC().Truncate(time.Microsecond)
	row := grantRow{
		EventID: ulid.Make().String(), KeyID: k.ID, OwnerID: k.OwnerID, Actor: who.Subject,
		IdempotencyKey: sql.NullString{String: idem, Valid: idem != ""},
		RequestHash:    grantHash(k.ID, *req.Credits, *req.Reason), RequestID: requestID(c),
		Credits: *req.Credits, Reason: *req.Reason, Period: monthStart(now), Tier: k.Tier,
		MonthlyCredits: k.MonthlyCredits, CreatedAt: now,
	}
	ctx := c.Request().Context()
	stored, replayed, err := h.recordGrant(ctx, row)
	if err != nil {
		return err
	}
	if replayed && !bytes.Equal(stored.RequestHash, row.RequestHash) {
		return apierr.New(apierr.Unprocessable, "this Idempotency-Key was used for another grant request")
	}
	if !stored.PublishedAt.Valid {
		if err := h.publishGrant(c, stored); err != nil {
			return err
		}
	}
	if replayed {
		c.Response().Header().Set("Idempotent-Replayed", "true")
	}
	return c.JSON(http.StatusCreated, stored.view())
}

// recordGrant stores the grant with its audit row, or returns the grant
// stored before under the same actor and Idempotency-Key (replayed).
func (h *Handler) recordGrant(ctx context.Context, row grantRow) (grantRow, bool, error) {
	tx, err := h.deps.DB.BeginTxx(ctx, nil)
	if err != nil {
		return grantRow{}, false, internal("record credit grant", err)
	}
	defer func() { _ = tx.Rollback() }()
	if row.IdempotencyKey.Valid {
		prev, ok, err := grantByIdempotencyKey(ctx, tx, row.Actor, row.IdempotencyKey.String)
		if err != nil {
			return grantRow{}, false, err
		}
		if ok {
			return prev, true, nil
		}
	}
	// One grant of a key at a time, so the audit trail's before and after
	// of each follow one another.
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext('credit_grants/' || $1))`, row.KeyID); err != nil {
		return grantRow{}, false, internal("record credit grant: lock", err)
	}
	var before int64
	if err := tx.GetContext(ctx, &before, `SELECT COALESCE(sum(credits), 0) FROM api_gateway.credit_grants
		WHERE key_id = $1 AND period = $2`, row.KeyID, row.Period); err != nil {
		return grantRow{}, false, internal("record credit grant: read grants", err)
	}
	res, err := tx.NamedExecContext(ctx, `INSERT INTO api_gateway.credit_grants
		(event_id, key_id, owner_id, actor, idempotency_key, request_hash, request_id, credits, reason, period, tier, monthly_credits, created_at)
		VALUES (:event_id, :key_id, :owner_id, :actor, :idempotency_key, :request_hash, :request_id, :credits, :reason, :period, :tier, :monthly_credits, :created_at)
		ON CONFLICT (actor, idempotency_key) DO NOTHING`, row)
	if err != nil {
		return grantRow{}, false, internal("record credit grant", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		// The same Idempotency-Key committed by a request that ran at the
		// same time: its grant is the answer.
		_ = tx.Rollback()
		prev, ok, err := grantByIdempotencyKey(ctx, h.deps.DB, row.Actor, row.IdempotencyKey.String)
		if err != nil {
			return grantRow{}, false, err
		}
		if !ok {
			return grantRow{}, false, internal("record credit grant", errors.New("idempotency key conflict without a row"))
		}
		return prev, true, nil
	}
	period := row.Period.Format("2006-01")
	if err := audit.Record(ctx, tx, audit.Entry{At: row.CreatedAt, Actor: row.Actor, OwnerID: row.OwnerID,
		RequestID: row.RequestID, Action: "credits.granted", TargetType: "api_key", TargetID: row.KeyID,
		Before: auditedGrant{Period: period, MonthlyCredits: row.MonthlyCredits, GrantedCredits: before},
		After: auditedGrant{Period: period, MonthlyCredits: row.MonthlyCredits, GrantedCredits: before + row.Credits,
			Credits: row.Credits, Reason: row.Reason, GrantID: row.EventID}}); err != nil {
		return grantRow{}, false, err
	}
	if err := tx.Commit(); err != nil {
		return grantRow{}, false, internal("record credit grant: commit", err)
	}
	return row, false, nil
}

func grantByIdempotencyKey(ctx context.Context, q sqlx.QueryerContext, actor, key string) (grantRow, bool, error) {
	var g grantRow
	err := sqlx.GetContext(ctx, q, &g, `SELECT event_id, key_id::text, owner_id, actor, idempotency_key, request_hash,
		request_id, credits, reason, period, tier, monthly_credits, created_at, published_at
		FROM api_gateway.credit_grants WHERE actor = $1 AND idempotency_key = $2`, actor, key)
	if errors.Is(err, sql.ErrNoRows) {
		return grantRow{}, false, nil
	}
	if err != nil {
		return grantRow{}, false, internal("read credit grant", err)
	}
	return g, true, nil
}

// publishGrant makes a committed grant take effect and marks it published.
// It runs even if the client has gone: the grant is committed.
func (h *Handler) publishGrant(c echo.Context, g grantRow) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), h.cfg.SyncTimeout)
	defer cancel()
	if err := h.deps.Granter.Grant(ctx, g.Event()); err != nil {
		h.logger.ErrorContext(ctx, "publish credit grant", "key_id", g.KeyID, "event_id", g.EventID, "err", err)
		return errGrantNotInEffect
	}
	if _, err := h.deps.DB.ExecContext(ctx, `UPDATE api_gateway.credit_grants SET published_at = now()
		WHERE event_id = $1 AND published_at IS NULL`, g.EventID); err != nil {
		// The event is durable; a later republish is harmless (applied once).
		h.logger.WarnContext(ctx, "mark credit grant published", "event_id", g.EventID, "err", err)
	}
	h.logger.InfoContext(ctx, "credits granted", "key_id", g.KeyID, "event_id", g.EventID, "credits", g.Credits,
		"actor", g.Actor, "request_id", g.RequestID)
	return nil
}

// RepublishGrants makes the grants take effect that were recorded at least
// age ago and never published — the gateway stopped, or could not make the
// event durable, between the commit and the publish — oldest first, up to
// 100 a call. It returns how many it published. Several gateways doing it at
// once is harmless: each grant's event and Redis adjustment apply once.
func (h *Handler) RepublishGrants(ctx context.Context, age time.Duration) (int, error) {
	if h.deps.Granter == nil {
		return 0, nil
	}
	var rows []grantRow
	if err := h.deps.DB.SelectContext(ctx, &rows, `SELECT event_id, key_id::text, owner_id, actor, idempotency_key, request_hash,
		request_id, credits, reason, period, tier, monthly_credits, created_at, published_at
		FROM api_gateway.credit_grants WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)
		ORDER BY created_at LIMIT 100`, age.Seconds()); err != nil {
		return 0, internal("read unpublished credit grants", err)
	}
	n := 0
	for _, g := range rows {
		if err := h.deps.Granter.Grant(ctx, g.Event()); err != nil {
			return n, fmt.Errorf("republish credit grant %s: %w", g.EventID, err)
		}
		if _, err := h.deps.DB.ExecContext(ctx, `UPDATE api_gateway.credit_grants SET published_at = now()
			WHERE event_id = $1 AND published_at IS NULL`, g.EventID); err != nil {
			return n, internal("mark credit grant published", err)
		}
		h.logger.WarnContext(ctx, "credit grant published late", "key_id", g.KeyID, "event_id", g.EventID,
			"recorded_at", g.CreatedAt)
		n++
	}
	return n, nil
}
