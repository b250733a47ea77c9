package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mana/apigw/gateway/internal/config"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/reconcile"
)

// Reconcile runs one reconcile pass over the recently active keys, as
// `gateway reconcile` does, beside running gateways (its corrections are
// guarded like theirs), and writes a table of the keys it checked to w.
func Reconcile(ctx context.Context, cfg config.Config, logger *slog.Logger, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	db, err := OpenDB(ctx, cfg, logger)
	if err != nil {
		return err
	}
	c := &Clients{DB: db, Redis: openRedis(cfg, 8, 0)}
	defer c.Close()
	if c.NATS, err = nats.Connect(cfg.NATSURL, nats.Name("mana-gateway reconcile"), nats.Timeout(cfg.Tuning.NATSConnectTimeout)); err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	if c.JS, err = jetstream.New(c.NATS); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	rdb := c.Redis
	truth, tail, presence, err := balanceTruth(c, cfg, "", logger)
	if err != nil {
		return err
	}
	bg, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); tail.Run(bg) }()
	defer func() { stop(); wg.Wait() }()
	// Hear from every live gateway before asking them for their holds.
	if err := presence.Listen(ctx); err != nil {
		return err
	}
	r, err := reconcile.New(reconcile.Config{Interval: cfg.ReconcileInterval, ActiveWindow: cfg.ReconcileActiveWindow, Owner: "reconcile"},
		rdb, quota.NewStore(rdb, truth, nil), truth, logger, nil)
	if err != nil {
		return err
	}
	rows, err := r.Once(ctx)
	if err != nil {
		return err
	}
	return writeTable(w, rows)
}

func writeTable(w io.Writer, rows []reconcile.Row) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "key\tredis\texpected\tdrift\tfixed\t")
	var drifted, fixed int
	var credits int64
	for _, r := range rows {
		mark := "-"
		switch {
		case r.Fixed:
			mark = "yes"
			fixed++
			credits += max(r.Drift, -r.Drift)
		case r.Drift != 0:
			mark = "no: " + r.Note
		}
		if r.Drift != 0 {
			drifted++
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%+d\t%s\t\n", r.KeyID, r.Redis, r.Expected, r.Drift, mark)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	_, err := fmt.Fprintf(w, "%d keys checked, %d drifted, %d corrected (%d credits)\n", len(rows), drifted, fixed, credits)
	return err
}
