package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jmoiron/sqlx"
)

// Pruner deletes the webhook events older than the retention whose every
// delivery is settled (succeeded or failed), with those deliveries. An event
// not yet relayed, or with a delivery still pending, is kept whatever its
// age. The alerts' guard rows (api_gateway.credit_alerts) are not touched:
// an alert is still raised once per key, threshold and period.
type Pruner struct {
	cfg     Config
	db      *sqlx.DB
	metrics *Metrics
	logger  *slog.Logger
	now     func() time.Time
}

// NewPruner validates cfg and returns a pruner of db.
func NewPruner(cfg Config, db *sqlx.DB, metrics *Metrics, logger *slog.Logger) (*Pruner, error) {
	errs := []error{cfg.Validate()}
	if db == nil || metrics == nil || logger == nil {
		errs = append(errs, errors.New("delivery pruner: db, metrics and logger are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.defaults()
	return &Pruner{cfg: cfg, db: db, metrics: metrics, logger: logger, now: time.Now}, nil
}

// Run prunes every PruneEvery (and once at start) until ctx is done.
func (p *Pruner) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.PruneEvery)
	defer t.Stop()
	for {
		n, err := p.RunOnce(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			p.logger.WarnContext(ctx, "webhook pruning failed", "err", err)
		case n > 0:
			p.logger.InfoContext(ctx, "webhook events pruned", "events", n, "retention", p.cfg.Retention)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// pruneBatch deletes up to $2 settled events created before $1 and their
// deliveries, in one statement (the foreign key is checked at its end).
const pruneBatch = `
WITH old AS (
    SELECT ev.id FROM api_gateway.webhook_events ev
    WHERE ev.created_at < $1 AND ev.relayed_at IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM api_gateway.webhook_deliveries d WHERE d.event_id = ev.id AND d.status = 'pending')
    ORDER BY ev.created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM api_gateway.webhook_deliveries d USING old WHERE d.event_id = old.id
)
DELETE FROM api_gateway.webhook_events ev USING old WHERE ev.id = old.id`

// RunOnce deletes every settled event older than the retention, a thousand
// per transaction, and returns how many.
func (p *Pruner) RunOnce(ctx context.Context) (int64, error) {
	before := p.now().UTC().Add(-p.cfg.Retention)
	var total int64
	for {
		res, err := p.db.ExecContext(ctx, pruneBatch, before, 1000)
		if err != nil {
			return total, fmt.Errorf("prune webhook events: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("prune webhook events: %w", err)
		}
		total += n
		p.metrics.pruned.Add(float64(n))
		if n < 1000 || ctx.Err() != nil {
			return total, nil
		}
	}
}
