package mgmt

import (
	"context"
	"time"

	"github.com/jmoiron/sqlx"

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

// keyEvent returns the Then that writes the key.* event of action to the
// webhook outbox in the key's own transaction, so the event exists exactly
// when the change is committed. A repeated delete (of a key already
// deleted) and an update that changed nothing make no event.
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
