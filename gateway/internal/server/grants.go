package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/mana/apigw/gateway/internal/holds"
	"github.com/mana/apigw/gateway/internal/mgmt"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/usage"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// NewGranter returns the mgmt.Granter of a gateway: q and l are the ones
// its edge enforces and counts holds with, pub the one it publishes with.
func NewGranter(gatewayID string, q *quota.Store, l *holds.Ledger, pub *usage.Publisher, logger *slog.Logger) mgmt.Granter {
	return granter{gatewayID: gatewayID, quota: q, holds: l, pub: pub, logger: logger}
}

// granter makes a credit grant take effect the way a call's charge does,
// with the sign turned: the credits go into the enforced balance in Redis
// at once, the event onto the usage stream through the same durable
// publisher, and in between a hold of minus the credits tells a balance
// rebuilt meanwhile (on any gateway) of a grant that is neither on the
// stream nor in the ledger yet.
type granter struct {
	gatewayID string
	quota     *quota.Store
	holds     *holds.Ledger
	pub       *usage.Publisher
	logger    *slog.Logger
}

// Grant implements mgmt.Granter. The balance takes a grant once (the
// adjustment is named by the event ID); the stream's consumers apply its
// event once. A Redis that cannot be reached leaves the balance to the next
// rebuild or correction, which count the grant from the stream or the
// ledger; an event that could not be made durable is an error.
func (g granter) Grant(ctx context.Context, ev *usagev1.UsageEvent) error {
	ev.GatewayId = g.gatewayID
	key, id, credits := ev.GetKeyId(), ev.GetEventId(), ev.GetGrant().GetCredits()
	g.holds.Begin(key, id, -credits)
	err := g.quota.Adjust(ctx, key, ev.GetPeriod(), "grant:"+id, credits)
	g.holds.End(key, id, true)
	defer g.holds.Release(key, id)
	if err != nil {
		g.logger.WarnContext(ctx, "credit grant not in the enforced balance yet; the reconciler adds it",
			"key_id", key, "event_id", id, "err", err)
	}
	if err := g.pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("publish credit grant %s: %w", id, err)
	}
	return nil
}
