package mgmt

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/audit"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/proto/webhook"
)

// keyEventData is the data of a key.* webhook: what an owner sees of the
// key in the management API, never its secret or hash.
type keyEventData struct {
	KeyID     string     `json:"keyId"`
	Name      string     `json:"name"`
	KeyPrefix string     `json:"keyPrefix"`
	Tier      string     `json:"tier"`
	Active    bool       `json:"active"`
	ExpiresAt *time.Time `json:"expiresAt"`
	// Changed names the fields a key.updated changed.
	Changed []string `json:"changed,omitempty"`
}

// auditedKey is a key as the audit trail records it: never its secret or hash.
type auditedKey struct {
	Name      string     `json:"name"`
	KeyPrefix string     `json:"keyPrefix"`
	Tier      string     `json:"tier"`
	Active    bool       `json:"active"`
	ExpiresAt *time.Time `json:"expiresAt"`
	DeletedAt *time.Time `json:"deletedAt"`
}

func audited(k *keys.Key) any {
	if k == nil {
		return nil
	}
	return auditedKey{Name: k.Name, KeyPrefix: k.Prefix, Tier: k.Tier, Active: k.Active, ExpiresAt: utc(k.ExpiresAt), DeletedAt: utc(k.DeletedAt)}
}

func sameAudit(a, b *keys.Key) bool {
	x, _ := json.Marshal(audited(a))
	y, _ := json.Marshal(audited(b))
	return bytes.Equal(x, y)
}

// requestID is the request's X-Request-Id, as the server set it.
func requestID(c echo.Context) string {
	if id := c.Response().Header().Get(echo.HeaderXRequestID); id != "" {
		return id
	}
	return c.Request().Header.Get(echo.HeaderXRequestID)
}

// keyChange returns the Then that, in the key's own transaction, appends
// the change to the audit trail and writes its key.* event to the webhook
// outbox, so both exist exactly when the change is committed. A repeated
// delete (of a key already deleted) and an update that changed nothing
// record nothing.
func (h *Handler) keyChange(c echo.Context, actor, action string) keys.Then {
	event := h.keyEvent(action)
	return func(ctx context.Context, tx *sqlx.Tx, before, after *keys.Key) error {
		if before != nil && action != "regenerated" && sameAudit(before, after) {
			return nil
		}
		if err := audit.Record(ctx, tx, audit.Entry{At: h.deps.Now(), Actor: actor, OwnerID: after.OwnerID,
			RequestID: requestID(c), Action: "api_key." + action, TargetType: "api_key", TargetID: after.ID,
			Before: audited(before), After: audited(after)}); err != nil {
			return err
		}
		return event(ctx, tx, before, after)
	}
}

// keyEvent returns the Then that writes the key.* event of action to the
// webhook outbox. A repeated delete and an update that changed nothing make
// no event.
func (h *Handler) keyEvent(action string) keys.Then {
	return func(ctx context.Context, tx *sqlx.Tx, before, after *keys.Key) error {
		typ := map[string]string{"created": webhook.KeyCreated, "updated": webhook.KeyUpdated,
			"deleted": webhook.KeyDeleted, "regenerated": webhook.KeyRegenerated}[action]
		data := keyEventData{KeyID: after.ID, Name: after.Name, KeyPrefix: after.Prefix, Tier: after.Tier,
			Active: after.Active, ExpiresAt: utc(after.ExpiresAt)}
		switch {
		case typ == "":
			return nil
		case typ == webhook.KeyDeleted && before != nil && before.DeletedAt != nil:
			return nil
		case typ == webhook.KeyUpdated && before != nil:
			if before.Name != after.Name {
				data.Changed = append(data.Changed, "name")
			}
			if before.Active != after.Active {
				data.Changed = append(data.Changed, "active")
			}
			if !sameTime(before.ExpiresAt, after.ExpiresAt) {
				data.Changed = append(data.Changed, "expiresAt")
			}
			if len(data.Changed) == 0 {
				return nil
			}
		}
		return webhook.Enqueue(ctx, tx, webhook.Event{ID: webhook.NewID(), OwnerID: after.OwnerID, Type: typ,
			Time: h.deps.Now(), Data: data})
	}
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
