package server

import (
	"context"
	"log/slog"
	"sort"
	"time"

	"github.com/mana/apigw/gateway/internal/mgmt"
	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/proxy"
)

// republishGrants publishes, every interval until ctx ends, the credit
// grants that were recorded an interval ago or more and never published.
func republishGrants(ctx context.Context, h *mgmt.Handler, interval time.Duration, logger *slog.Logger) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := h.RepublishGrants(ctx, interval); err != nil && ctx.Err() == nil {
			logger.WarnContext(ctx, "republish credit grants", "err", err)
		}
	}
}

// TierCatalog lists every tier of p with the public endpoints of the edge's
// route table it allows and their prices, tiers by monthly credits.
func TierCatalog(p *pricing.Pricing) []mgmt.TierInfo {
	out := make([]mgmt.TierInfo, 0, len(p.Tiers))
	for name, t := range p.Tiers {
		ti := mgmt.TierInfo{Name: name, RateLimitPerMinute: t.RateLimitPerMinute, MonthlyCredits: t.MonthlyCredits,
			Endpoints: []mgmt.EndpointInfo{}}
		for _, r := range proxy.Routes() {
			if !t.Allows(r.Op) {
				continue
			}
			op := p.Operations[r.Op]
			ti.Endpoints = append(ti.Endpoints, mgmt.EndpointInfo{Method: r.Method, Path: r.Path, Operation: r.Op,
				Unit: op.Unit, Credits: op.Credits, Per: op.Per})
		}
		out = append(out, ti)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].MonthlyCredits != out[j].MonthlyCredits {
			return out[i].MonthlyCredits < out[j].MonthlyCredits
		}
		return out[i].Name < out[j].Name
	})
	return out
}
