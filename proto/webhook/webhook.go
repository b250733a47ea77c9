// Package webhook owns what the gateway tells key owners by webhook: the
// event types, the outbox every producer writes to (in the transaction of
// the change it reports), the fan-out of an event to its endpoints'
// deliveries, and the Standard Webhooks signature. The billing worker reads
// the outbox and sends; producers never send anything themselves.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The event types an endpoint may subscribe to.
const (
	CreditsThreshold = "credits.threshold"
	CreditsExhausted = "credits.exhausted"
	CreditsGranted   = "credits.granted"
	KeyCreated       = "key.created"
	KeyUpdated       = "key.updated"
	KeyDeleted       = "key.deleted"
	KeyRegenerated   = "key.regenerated"
)

// Types lists every event type, in the order the documentation gives them.
var Types = []string{CreditsThreshold, CreditsExhausted, CreditsGranted, KeyCreated, KeyUpdated, KeyDeleted, KeyRegenerated}

// KnownType tells whether t is one of Types.
func KnownType(t string) bool {
	for _, k := range Types {
		if k == t {
			return true
		}
	}
	return false
}

// Event is one notification for the endpoints of OwnerID.
type Event struct {
	// ID is the webhook-id receivers dedupe on; NewID makes one.
	ID      string
	OwnerID string
	Type    string
	Time    time.Time
	// Threshold, for credits.threshold, limits the event to the endpoints
	// whose thresholds include it.
	Threshold int
	Data      any
}

// Body is what every endpoint receives, as the Standard Webhooks
// specification shapes it.
type Body struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      any       `json:"data"`
}

// NewID returns a fresh event ID, "msg_" + 26 random base32 characters.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "msg_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// Execer is a transaction or a database: *sql.Tx, *sqlx.Tx, *sqlx.DB.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

const enqueue = `
INSERT INTO api_gateway.webhook_events (id, owner_id, type, payload, created_at, threshold)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO NOTHING`

// Enqueue writes ev to the outbox inside tx: the event exists exactly when
// the change it reports is committed. The billing worker relays it to the
// WEBHOOKS stream and makes its deliveries from there (FanOut), one per
// endpoint of its owner that subscribes to it. Enqueueing an ID twice
// changes nothing.
func Enqueue(ctx context.Context, tx Execer, ev Event) error {
	if ev.ID == "" || ev.OwnerID == "" || !KnownType(ev.Type) {
		return errors.New("webhook: an event needs an ID, an owner and a known type")
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC().Truncate(time.Microsecond)
	payload, err := json.Marshal(Body{Type: ev.Type, Timestamp: ev.Time, Data: ev.Data})
	if err != nil {
		return fmt.Errorf("webhook %s: encode: %w", ev.Type, err)
	}
	if _, err := tx.ExecContext(ctx, enqueue, ev.ID, ev.OwnerID, ev.Type, payload, ev.Time, ev.Threshold); err != nil {
		return fmt.Errorf("webhook %s: enqueue: %w", ev.Type, err)
	}
	return nil
}

const fanOut = `
INSERT INTO api_gateway.webhook_deliveries (endpoint_id, event_id, next_attempt_at, created_at)
SELECT e.id, ev.id, $2::timestamptz, $2::timestamptz
FROM api_gateway.webhook_events ev JOIN api_gateway.webhook_endpoints e ON e.owner_id = ev.owner_id
WHERE ev.id = ANY($1::text[]) AND e.deleted_at IS NULL AND e.disabled_at IS NULL
  AND (cardinality(e.events) = 0 OR ev.type = ANY(e.events))
  AND (ev.threshold = 0 OR ev.threshold = ANY(e.thresholds))
ORDER BY e.id, ev.id
ON CONFLICT (endpoint_id, event_id) DO NOTHING`

// FanOut makes the deliveries of the outbox events ids, due at now: one per
// live endpoint of each event's owner that subscribes to it then. It is
// idempotent (a delivery already made is left as it is), and an ID that is
// no longer in the outbox (pruned) makes none. It returns how many it made.
func FanOut(ctx context.Context, tx Execer, ids []string, now time.Time) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	res, err := tx.ExecContext(ctx, fanOut, stringArray(ids), now.UTC())
	if err != nil {
		return 0, fmt.Errorf("webhook fan-out: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("webhook fan-out: %w", err)
	}
	return n, nil
}

// stringArray is ids as a PostgreSQL text[] literal, so this package needs
// no driver: each element quoted, with its quotes and backslashes escaped.
func stringArray(ids []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(id))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// SecretPrefix starts every signing secret.
const SecretPrefix = "whsec_"

// NewSecret returns a fresh signing secret: whsec_ + base64 of 32 random bytes.
func NewSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return SecretPrefix + base64.StdEncoding.EncodeToString(b[:])
}

// Sign returns the webhook-signature header value for one message:
// "v1," + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body)),
// where key is the base64-decoded part of secret after whsec_.
func Sign(secret, id string, timestamp time.Time, body []byte) (string, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, SecretPrefix))
	if err != nil {
		return "", fmt.Errorf("webhook: signing secret is not base64: %w", err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + strconv.FormatInt(timestamp.Unix(), 10) + "."))
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil)), nil
}
