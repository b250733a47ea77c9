// Package alerts owns the credit alerts: when a ledger batch moves a key's
// usage across a threshold of its grant (credits.threshold), or holds the
// gateway's news of a key's first refusal for want of credits in a period
// (credits.exhausted: a call's hold can be refused before the ledger reaches
// the grant), it raises the webhook event in the same transaction. A row of
// api_gateway.credit_alerts per key, period, kind and threshold is the
// guard: an alert is raised once, whatever is redelivered, restarted or
// replayed, because a batch that changes no balance crosses nothing and an
// alert already recorded is not recorded again.
package alerts

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/mana/apigw/billing-worker/internal/ledger"
	"github.com/mana/apigw/proto/webhook"
)

// ThresholdData is the data of a credits.threshold event.
type ThresholdData struct {
	KeyID        string `json:"keyId"`
	Period       string `json:"period"` // YYYY-MM, the credit month (UTC)
	Threshold    int    `json:"threshold"`
	CreditsUsed  int64  `json:"creditsUsed"`
	CreditsLeft  int64  `json:"creditsLeft"`
	CreditsGrant int64  `json:"creditsGranted"`
}

// ExhaustedData is the data of a credits.exhausted event.
type ExhaustedData struct {
	KeyID        string `json:"keyId"`
	Period       string `json:"period"`
	CreditsUsed  int64  `json:"creditsUsed"`
	CreditsGrant int64  `json:"creditsGranted"`
}

const (
	kindThreshold = "threshold"
	kindExhausted = "exhausted"
)

type candidate struct {
	change    ledger.Change
	kind      string
	threshold int
	id        string
}

// subscriptions is what one owner's live endpoints ask for.
type subscriptions struct {
	thresholds map[int]bool
	exhausted  bool
}

const readSubscriptions = `
SELECT owner_id, thresholds, events FROM api_gateway.webhook_endpoints
WHERE owner_id = ANY($1) AND deleted_at IS NULL AND disabled_at IS NULL`

const insertAlerts = `
INSERT INTO api_gateway.credit_alerts (key_id, period, kind, threshold, event_id)
SELECT * FROM unnest($1::uuid[], $2::date[], $3::text[], $4::integer[], $5::text[])
ON CONFLICT DO NOTHING
RETURNING event_id`

// Raise records the alerts the changes cross and the refusals for want of
// credits tell, and writes their events to the webhook outbox, inside tx.
// Only owners with a live endpoint that subscribes to an alert are
// considered; an alert no endpoint of the owner asks for is not recorded, so
// an endpoint added later still hears of a crossing that happens after it.
// The exhausted alert comes only from the gateway's refusals, never from
// the ledger reaching the grant (the 100 % threshold tells that).
func Raise(ctx context.Context, tx *sqlx.Tx, changes []ledger.Change, exhausted []ledger.Exhausted, now time.Time) (int, error) {
	owners := map[string]bool{}
	for _, c := range changes {
		if c.Granted > 0 && c.Used > c.UsedBefore {
			owners[c.OwnerID] = true
		}
	}
	for _, x := range exhausted {
		owners[x.OwnerID] = true
	}
	if len(owners) == 0 {
		return 0, nil
	}
	ownerList := make([]string, 0, len(owners))
	for o := range owners {
		ownerList = append(ownerList, o)
	}
	var rows []struct {
		OwnerID    string         `db:"owner_id"`
		Thresholds pq.Int64Array  `db:"thresholds"`
		Events     pq.StringArray `db:"events"`
	}
	if err := tx.SelectContext(ctx, &rows, readSubscriptions, pq.Array(ownerList)); err != nil {
		return 0, fmt.Errorf("read webhook subscriptions: %w", err)
	}
	subs := map[string]*subscriptions{}
	for _, r := range rows {
		s := subs[r.OwnerID]
		if s == nil {
			s = &subscriptions{thresholds: map[int]bool{}}
			subs[r.OwnerID] = s
		}
		all := len(r.Events) == 0
		if all || slices.Contains(r.Events, webhook.CreditsThreshold) {
			for _, t := range r.Thresholds {
				s.thresholds[int(t)] = true
			}
		}
		if all || slices.Contains(r.Events, webhook.CreditsExhausted) {
			s.exhausted = true
		}
	}

	var cands []candidate
	for _, c := range changes {
		s := subs[c.OwnerID]
		if s == nil || c.Granted <= 0 {
			continue
		}
		for t := range s.thresholds {
			mark := int64(t) * c.Granted // compare in hundredths: used/granted >= t/100
			if c.UsedBefore*100 < mark && c.Used*100 >= mark {
				cands = append(cands, candidate{change: c, kind: kindThreshold, threshold: t})
			}
		}
	}
	type keyPeriod struct {
		key    string
		period time.Time
	}
	told := map[keyPeriod]bool{} // the news twice in one batch (Redis flushed in between) is one alert
	for _, x := range exhausted {
		k := keyPeriod{x.KeyID, x.Period}
		if s := subs[x.OwnerID]; s == nil || !s.exhausted || told[k] {
			continue
		}
		told[k] = true
		c := ledger.Change{KeyID: x.KeyID, OwnerID: x.OwnerID, Period: x.Period, Granted: x.Allowance, UsedBefore: x.Used, Used: x.Used}
		cands = append(cands, candidate{change: c, kind: kindExhausted})
	}
	if len(cands) == 0 {
		return 0, nil
	}
	// A fixed order, so concurrent workers lock the guard rows alike.
	slices.SortFunc(cands, func(a, b candidate) int {
		return cmp.Or(cmp.Compare(a.change.KeyID, b.change.KeyID), a.change.Period.Compare(b.change.Period),
			cmp.Compare(a.kind, b.kind), cmp.Compare(a.threshold, b.threshold))
	})
	n := len(cands)
	keys, periods, kinds, ids := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	thresholds := make([]int64, n)
	for i := range cands {
		cands[i].id = webhook.NewID()
		keys[i], periods[i], kinds[i], ids[i] = cands[i].change.KeyID, cands[i].change.Period.Format(time.DateOnly), cands[i].kind, cands[i].id
		thresholds[i] = int64(cands[i].threshold)
	}
	var raised []string
	if err := tx.SelectContext(ctx, &raised, insertAlerts, pq.Array(keys), pq.Array(periods), pq.Array(kinds),
		pq.Array(thresholds), pq.Array(ids)); err != nil {
		return 0, fmt.Errorf("record credit alerts: %w", err)
	}
	isNew := make(map[string]bool, len(raised))
	for _, id := range raised {
		isNew[id] = true
	}
	for _, cd := range cands {
		if !isNew[cd.id] {
			continue
		}
		c := cd.change
		ev := webhook.Event{ID: cd.id, OwnerID: c.OwnerID, Time: now}
		period := c.Period.Format("2006-01")
		if cd.kind == kindThreshold {
			ev.Type, ev.Threshold = webhook.CreditsThreshold, cd.threshold
			ev.Data = ThresholdData{KeyID: c.KeyID, Period: period, Threshold: cd.threshold, CreditsUsed: c.Used,
				CreditsLeft: max(0, c.Granted-c.Used), CreditsGrant: c.Granted}
		} else {
			ev.Type = webhook.CreditsExhausted
			ev.Data = ExhaustedData{KeyID: c.KeyID, Period: period, CreditsUsed: c.Used, CreditsGrant: c.Granted}
		}
		if err := webhook.Enqueue(ctx, tx, ev); err != nil {
			return 0, err
		}
	}
	return len(raised), nil
}
