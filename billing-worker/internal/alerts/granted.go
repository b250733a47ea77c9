package alerts

import (
	"context"
	"strings"
	"time"

	"github.com/mana/apigw/billing-worker/internal/ledger"
	"github.com/mana/apigw/proto/webhook"
)

// GrantedData is the data of a credits.granted event: the grant, and the
// key's balance of the period right after the ledger took it in.
type GrantedData struct {
	KeyID   string `json:"keyId"`
	Period  string `json:"period"` // YYYY-MM, the credit month (UTC)
	Credits int64  `json:"credits"`
	Reason  string `json:"reason"`
	// Actor is who granted them (the JWT subject).
	Actor string `json:"actor"`
	// GrantID is the grant's ID, as its answer gave it.
	GrantID string `json:"grantId"`
	// CreditsAllowed is the period's allowance now: the monthly grant plus
	// every credit grant; CreditsLeft is what of it is not used.
	CreditsAllowed int64 `json:"creditsAllowed"`
	CreditsUsed    int64 `json:"creditsUsed"`
	CreditsLeft    int64 `json:"creditsLeft"`
}

// GrantedID is the webhook-id of a grant's credits.granted event, made from
// the grant's event ID: raising it again (a redelivered or replayed grant)
// writes nothing new to the outbox.
func GrantedID(eventID string) string { return "msg_grant_" + strings.ToLower(eventID) }

// Granted writes a credits.granted event for each grant the ledger took in,
// inside tx. The ledger inserts a grant once, whatever is redelivered or
// replayed, and the event's ID is the grant's, so each grant is told once.
func Granted(ctx context.Context, tx webhook.Execer, grants []ledger.Grant, now time.Time) error {
	for _, g := range grants {
		ev := webhook.Event{ID: GrantedID(g.EventID), OwnerID: g.OwnerID, Type: webhook.CreditsGranted, Time: now,
			Data: GrantedData{KeyID: g.KeyID, Period: g.Period.Format("2006-01"), Credits: g.Granted, Reason: g.Reason,
				Actor: g.Actor, GrantID: g.EventID, CreditsAllowed: g.Allowance, CreditsUsed: g.Used,
				CreditsLeft: max(0, g.Allowance-g.Used)}}
		if err := webhook.Enqueue(ctx, tx, ev); err != nil {
			return err
		}
	}
	return nil
}
