// Package reconcile repairs drift between the balances the gateway enforces
// from Redis and what the billing truth says they are: grant − ledger −
// events on the stream not applied yet − holds of calls in flight. Missing
// Redis state is rebuilt on the next call; state that is present but stale
// (an older snapshot restored, a failover to a replica that missed writes, an
// append-only file that lost its last second) is found and corrected here,
// for the keys active recently, by one gateway at a time.
package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mana/apigw/gateway/internal/quota"
)

// Balances is the Redis side: snapshots of enforced balances and guarded
// corrections (quota.Store). Safe for concurrent use.
type Balances interface {
	Snapshots(ctx context.Context, keyIDs []string) ([]quota.Snapshot, error)
	Correct(ctx context.Context, sn quota.Snapshot, bal int64) (bool, error)
}

// Truth is what the balances should be (quota.PGLoader). Safe for
// concurrent use.
type Truth interface {
	ActiveKeys(ctx context.Context, period string, window time.Duration) ([]string, error)
	Spends(ctx context.Context, keyIDs []string, period string) (map[string]quota.Spend, error)
}

// Config configures a Reconciler.
type Config struct {
	// Interval between passes of Run (RECONCILE_INTERVAL).
	Interval time.Duration
	// ActiveWindow: keys charged within it are checked (RECONCILE_ACTIVE_WINDOW).
	ActiveWindow time.Duration
	// Owner names this instance in the lock that lets one gateway reconcile at a time.
	Owner string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Interval <= 0 {
		errs = append(errs, errors.New("reconcile: Interval must be positive"))
	}
	if c.ActiveWindow <= 0 {
		errs = append(errs, errors.New("reconcile: ActiveWindow must be positive"))
	}
	if c.Owner == "" {
		errs = append(errs, errors.New("reconcile: Owner is required"))
	}
	return errors.Join(errs...)
}

// lockKey is the Redis key of the lock; whoever sets it reconciles for one
// interval.
const lockKey = "gw:reconcile:lock"

// attempts: a key whose correction finds a call admitted meanwhile is
// computed again this many times in one pass before it waits for the next.
const attempts = 3

// Row is one key checked by a pass.
type Row struct {
	KeyID    string
	Redis    int64 // the balance Redis enforced
	Expected int64 // grant − ledger − pending − holds
	Drift    int64 // Redis − Expected: > 0 grants credits already spent
	Fixed    bool  // Redis now holds Expected
	// Note says why a drift was left: the key was busy each time, or the
	// truth was not fully known and Redis was already lower (raising it then
	// could grant what a gateway's spool or a silent gateway spent).
	Note string
}

// Reconciler compares and corrects. Safe for concurrent use.
type Reconciler struct {
	cfg    Config
	rdb    redis.UniversalClient
	bal    Balances
	truth  Truth
	logger *slog.Logger

	passes  *prometheus.CounterVec
	keys    *prometheus.CounterVec
	credits *prometheus.CounterVec
}

// New builds a reconciler; reg may be nil.
func New(cfg Config, rdb redis.UniversalClient, bal Balances, truth Truth, logger *slog.Logger, reg prometheus.Registerer) (*Reconciler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Reconciler{cfg: cfg, rdb: rdb, bal: bal, truth: truth, logger: logger,
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_reconcile_passes_total",
			Help: "Reconcile passes run by this gateway, by result: ok, failed.",
		}, []string{"result"}),
		keys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_reconcile_keys_corrected_total",
			Help: "Keys whose Redis balance was corrected, by drift: over (Redis granted spent credits), under.",
		}, []string{"drift"}),
		credits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_reconcile_credits_corrected_total",
			Help: "Credits of drift corrected in Redis balances, by drift: over (taken back), under (given back).",
		}, []string{"drift"}),
	}
	if reg != nil {
		reg.MustRegister(r.passes, r.keys, r.credits)
	}
	return r, nil
}

// Run reconciles every interval while this gateway holds the lock, until
// ctx ends.
func (r *Reconciler) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// The lock expires a little before the next tick, so that some
		// gateway runs each interval and no two overlap in the usual case
		// (the corrections are guarded anyway).
		ok, err := r.rdb.SetNX(ctx, lockKey, r.cfg.Owner, r.cfg.Interval*9/10).Result()
		if err != nil || !ok {
			continue
		}
		if _, err := r.Once(ctx); err != nil && ctx.Err() == nil {
			r.logger.WarnContext(ctx, "reconcile pass failed", "err", err)
		}
	}
}

// Once runs one pass over the recently active keys and returns a row per key.
func (r *Reconciler) Once(ctx context.Context) ([]Row, error) {
	rows, err := r.once(ctx)
	if err != nil {
		r.passes.WithLabelValues("failed").Inc()
		return rows, err
	}
	r.passes.WithLabelValues("ok").Inc()
	return rows, nil
}

func (r *Reconciler) once(ctx context.Context) ([]Row, error) {
	now, err := r.rdb.Time(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("reconcile: redis time: %w", err)
	}
	period := now.UTC().Format("2006-01")
	ids, err := r.truth.ActiveKeys(ctx, period, r.cfg.ActiveWindow)
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	done := map[string]Row{}
	for attempt := 0; attempt < attempts && len(ids) > 0; attempt++ {
		// Redis first, then the truth: a call admitted after the snapshot
		// shows in the truth but not in the snapshot, and changes what the
		// correction checks, which then does nothing.
		snaps, err := r.bal.Snapshots(ctx, ids)
		if err != nil {
			return nil, fmt.Errorf("reconcile: %w", err)
		}
		spends, err := r.truth.Spends(ctx, ids, period)
		if err != nil {
			return nil, fmt.Errorf("reconcile: %w", err)
		}
		var busy []string
		for _, sn := range snaps {
			sp, ok := spends[sn.KeyID]
			if !ok || sn.Period != period {
				continue // deleted, or no balance of this month in Redis: the next call rebuilds it
			}
			row := Row{KeyID: sn.KeyID, Redis: sn.Balance, Expected: sp.Balance()}
			row.Drift = row.Redis - row.Expected
			switch {
			case row.Drift == 0:
			case row.Drift < 0 && !sp.Exact:
				row.Note = "not raised: the truth was incomplete"
			default:
				fixed, err := r.bal.Correct(ctx, sn, row.Expected)
				if err != nil {
					return nil, fmt.Errorf("reconcile: %w", err)
				}
				if !fixed {
					row.Note = "busy: a call changed it meanwhile"
					busy = append(busy, sn.KeyID)
					break
				}
				row.Fixed = true
				r.record(ctx, row)
			}
			done[sn.KeyID] = row
		}
		ids = busy
	}
	out := make([]Row, 0, len(done))
	for _, row := range done {
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b Row) int {
		return cmp.Or(cmp.Compare(abs(b.Drift), abs(a.Drift)), cmp.Compare(a.KeyID, b.KeyID))
	})
	return out, nil
}

func (r *Reconciler) record(ctx context.Context, row Row) {
	dir := "over"
	if row.Drift < 0 {
		dir = "under"
	}
	r.keys.WithLabelValues(dir).Inc()
	r.credits.WithLabelValues(dir).Add(float64(abs(row.Drift)))
	r.logger.WarnContext(ctx, "redis balance drifted from the ledger; corrected",
		"key_id", row.KeyID, "redis", row.Redis, "expected", row.Expected, "drift", row.Drift)
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}
