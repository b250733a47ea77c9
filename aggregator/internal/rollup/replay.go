package rollup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Start is where a replay (or a tail) begins reading the stream.
type Start struct {
	Policy jetstream.DeliverPolicy // DeliverAllPolicy, DeliverByStartSequencePolicy, DeliverByStartTimePolicy or DeliverNewPolicy
	Seq    uint64
	Time   time.Time
}

// Windowed tells whether the start leaves out part of the stream.
func (s Start) Windowed() bool { return s.Policy != jetstream.DeliverAllPolicy }

// OrderedConfig is the ordered-consumer configuration reading from s.
func (s Start) OrderedConfig() jetstream.OrderedConsumerConfig {
	c := jetstream.OrderedConsumerConfig{FilterSubjects: []string{usagev1.SubjectWildcard}, DeliverPolicy: s.Policy}
	switch s.Policy {
	case jetstream.DeliverByStartSequencePolicy:
		c.OptStartSeq = s.Seq
	case jetstream.DeliverByStartTimePolicy:
		t := s.Time
		c.OptStartTime = &t
	}
	return c
}

// ReplayConfig configures Replay.
type ReplayConfig struct {
	DB     *sqlx.DB
	JS     jetstream.JetStream
	Logger *slog.Logger
	Start  Start
	// Apply replaces the live aggregates by the replayed ones when they differ.
	Apply bool
	// Keep leaves the scratch schema in place (its name is in the report).
	Keep bool
	// Out receives the differing rows; Progress (optional) a progress line.
	Out      io.Writer
	Progress io.Writer
	// BatchSize is the number of events per scratch transaction (default 2000).
	BatchSize int
	// Schema names the scratch schema (default api_gateway_replay_<unix nanos>).
	Schema string
}

// Validate reports every problem of the configuration at once.
func (c *ReplayConfig) Validate() error {
	var errs []error
	if c.DB == nil || c.JS == nil || c.Logger == nil || c.Out == nil {
		errs = append(errs, errors.New("db, jetstream, logger and out are required"))
	}
	if c.Start.Policy == jetstream.DeliverNewPolicy || c.Start.Policy == jetstream.DeliverLastPolicy {
		errs = append(errs, errors.New("replay starts from the start, a sequence or a time"))
	}
	if c.Schema != "" && !strings.HasPrefix(c.Schema, "api_gateway_replay_") {
		errs = append(errs, errors.New("scratch schema must start with api_gateway_replay_"))
	}
	return errors.Join(errs...)
}

// Report is what a replay found.
type Report struct {
	Schema     string
	Events     int         // events read from the stream
	Invalid    int         // messages that failed to decode (skipped, as the consumer dead-letters them)
	Days       []time.Time // days compared (windowed replay only; nil = all)
	UsageDiffs int         // differing api_usage rows (either side)
	DailyDiffs int         // differing api_usage_daily rows (either side)
	Applied    bool        // the live tables were replaced
}

// Differs tells whether the live tables differed from the replay.
func (r Report) Differs() bool { return r.UsageDiffs+r.DailyDiffs > 0 }

// Replay reads the stream from cfg.Start up to its last message at the time
// of the call with an ordered consumer, rebuilds api_usage and
// api_usage_daily from it in a scratch schema with the consumer's own code,
// and compares them with the live tables.
//
// A full replay compares every row. A windowed one (from a sequence or a
// time) compares only the days its events fall on: their live api_usage rows
// from before the window are carried into the scratch tables first, so a day
// the window cuts is still compared whole.
func Replay(ctx context.Context, cfg ReplayConfig) (Report, error) {
	if err := cfg.Validate(); err != nil {
		return Report{}, fmt.Errorf("replay config: %w", err)
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 2000
	}
	if cfg.Schema == "" {
		cfg.Schema = fmt.Sprintf("api_gateway_replay_%d", time.Now().UnixNano())
	}
	rep := Report{Schema: cfg.Schema}
	if err := createScratch(ctx, cfg.DB, cfg.Schema); err != nil {
		return rep, err
	}
	if !cfg.Keep {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if _, err := cfg.DB.ExecContext(dctx, `DROP SCHEMA `+pq.QuoteIdentifier(cfg.Schema)+` CASCADE`); err != nil {
				cfg.Logger.ErrorContext(ctx, "drop scratch schema", "schema", cfg.Schema, "error", err)
			}
		}()
	}
	scratch := NewStore(cfg.Schema)
	days, err := readStream(ctx, cfg, scratch, &rep)
	if err != nil {
		return rep, err
	}
	if cfg.Start.Windowed() {
		rep.Days = days
		if err := carryOver(ctx, cfg.DB, cfg.Schema, days); err != nil {
			return rep, err
		}
	}
	if rep.UsageDiffs, err = diff(ctx, cfg.DB, cfg.Out, "api_usage", usageColumns, "event_id, occurred_at", cfg.Schema, usageDayExpr, rep.Days); err != nil {
		return rep, err
	}
	if rep.DailyDiffs, err = diff(ctx, cfg.DB, cfg.Out, "api_usage_daily", dailyColumns, "day, key_id, endpoint", cfg.Schema, "day", rep.Days); err != nil {
		return rep, err
	}
	if cfg.Apply && rep.Differs() {
		if err := apply(ctx, cfg.DB, cfg.Schema, rep.Days); err != nil {
			return rep, err
		}
		rep.Applied = true
	}
	return rep, nil
}

const usageDayExpr = `(occurred_at AT TIME ZONE 'UTC')::date`

func createScratch(ctx context.Context, db *sqlx.DB, schema string) error {
	s := pq.QuoteIdentifier(schema)
	ddl := []string{
		`CREATE SCHEMA ` + s,
		`CREATE TABLE ` + s + `.api_usage (LIKE api_gateway.api_usage INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
			PRIMARY KEY (event_id, occurred_at)) PARTITION BY RANGE (occurred_at)`,
		`CREATE TABLE ` + s + `.api_usage_default PARTITION OF ` + s + `.api_usage DEFAULT`,
		`CREATE TABLE ` + s + `.api_usage_daily (LIKE api_gateway.api_usage_daily INCLUDING ALL)`,
	}
	return inTx(ctx, db, func(tx *sqlx.Tx) error {
		for _, q := range ddl {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("create scratch schema %s: %w", schema, err)
			}
		}
		return nil
	})
}

// readStream replays the stream into the scratch store and returns the UTC
// days of the events it read.
func readStream(ctx context.Context, cfg ReplayConfig, store *Store, rep *Report) ([]time.Time, error) {
	stream, err := cfg.JS.Stream(ctx, usagev1.StreamName)
	if err != nil {
		return nil, fmt.Errorf("replay: stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("replay: stream info: %w", err)
	}
	last := info.State.LastSeq
	cons, err := cfg.JS.OrderedConsumer(ctx, usagev1.StreamName, cfg.Start.OrderedConfig())
	if err != nil {
		return nil, fmt.Errorf("replay: ordered consumer: %w", err)
	}
	cinfo, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("replay: consumer info: %w", err)
	}
	dayset := map[time.Time]bool{}
	if cinfo.NumPending == 0 || info.State.Msgs == 0 {
		return nil, nil
	}
	total := cinfo.NumPending
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * cfg.BatchSize))
	if err != nil {
		return nil, fmt.Errorf("replay: messages: %w", err)
	}
	defer it.Stop()

	var batch []Row
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := store.EnsurePartitions(ctx, cfg.DB, batch); err != nil {
			return err
		}
		err := inTx(ctx, cfg.DB, func(tx *sqlx.Tx) error {
			_, err := store.Record(ctx, tx, batch)
			return err
		})
		batch = batch[:0]
		if err != nil {
			return fmt.Errorf("replay: record: %w", err)
		}
		return nil
	}
	start, lastPrint := time.Now(), time.Time{}
	for read := uint64(0); ; {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("replay: read stream: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return nil, fmt.Errorf("replay: metadata: %w", err)
		}
		if meta.Sequence.Stream > last {
			break // published after the replay started
		}
		read++
		dm, err := usagev1.DecodeMessage(msg.Subject(), msg.Data())
		if err != nil {
			rep.Invalid++
			cfg.Logger.WarnContext(ctx, "replay: skipping invalid message", "stream_seq", meta.Sequence.Stream, "reason", err.Error())
		}
		for _, inv := range dm.Invalid {
			rep.Invalid++
			cfg.Logger.WarnContext(ctx, "replay: skipping invalid event of a batch", "stream_seq", meta.Sequence.Stream, "index", inv.Index, "reason", inv.Err.Error())
		}
		for _, ev := range dm.Events {
			rep.Events++
			r := RowOf(ev)
			dayset[r.Day()] = true
			batch = append(batch, r)
		}
		if len(batch) >= cfg.BatchSize {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		if cfg.Progress != nil && time.Since(lastPrint) > 200*time.Millisecond {
			lastPrint = time.Now()
			rate := float64(read) / max(time.Since(start).Seconds(), 1e-3)
			fmt.Fprintf(cfg.Progress, "\rreplay: %d/%d messages, seq %d, %.0f msg/s ", read, total, meta.Sequence.Stream, rate)
		}
		if meta.NumPending == 0 || meta.Sequence.Stream == last {
			break
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "\rreplay: %d events read, %d invalid, in %s\n", rep.Events, rep.Invalid, time.Since(start).Round(time.Millisecond))
	}
	days := make([]time.Time, 0, len(dayset))
	for d := range dayset {
		days = append(days, d)
	}
	return days, nil
}

func dayStrings(days []time.Time) []string {
	out := make([]string, len(days))
	for i, d := range days {
		out[i] = d.Format(time.DateOnly)
	}
	return out
}

// carryOver copies the live api_usage rows of the replayed days that the
// window did not contain into the scratch tables, and adds them to the
// scratch daily rows.
func carryOver(ctx context.Context, db *sqlx.DB, schema string, days []time.Time) error {
	if len(days) == 0 {
		return nil
	}
	s := pq.QuoteIdentifier(schema)
	q := `WITH carried AS (
	INSERT INTO ` + s + `.api_usage (` + usageColumns + `)
	SELECT ` + usageColumns + ` FROM api_gateway.api_usage l
	WHERE ` + usageDayExpr + ` = ANY($1::date[])
	  AND NOT EXISTS (SELECT 1 FROM ` + s + `.api_usage r WHERE r.event_id = l.event_id)
	RETURNING *
)
INSERT INTO ` + s + `.api_usage_daily AS d (` + dailyColumns + `)
SELECT ` + usageDayExpr + `, key_id, min(owner_id), endpoint, count(*), sum(credits), sum(units), count(*) FILTER (WHERE status >= 400)
FROM carried GROUP BY 1, 2, 4
ON CONFLICT (day, key_id, endpoint) DO UPDATE SET
    owner_id = LEAST(d.owner_id, EXCLUDED.owner_id),
    requests = d.requests + EXCLUDED.requests,
    credits  = d.credits + EXCLUDED.credits,
    units    = d.units + EXCLUDED.units,
    errors   = d.errors + EXCLUDED.errors`
	if _, err := db.ExecContext(ctx, q, pq.Array(dayStrings(days))); err != nil {
		return fmt.Errorf("replay: carry over live rows: %w", err)
	}
	return nil
}

// diff prints the rows of table that differ between the live and the scratch
// schema (restricted to days when days is not nil) and returns their number.
func diff(ctx context.Context, db *sqlx.DB, out io.Writer, table, cols, order, schema, dayExpr string, days []time.Time) (int, error) {
	live := `api_gateway.` + table
	scratch := pq.QuoteIdentifier(schema) + `.` + table
	where := ""
	args := []any{}
	if days != nil {
		where = ` WHERE ` + dayExpr + ` = ANY($1::date[])`
		args = append(args, pq.Array(dayStrings(days)))
	}
	q := `SELECT * FROM (
	(SELECT 'live' AS side, * FROM (SELECT ` + cols + ` FROM ` + live + where + ` EXCEPT ALL SELECT ` + cols + ` FROM ` + scratch + where + `) a)
	UNION ALL
	(SELECT 'replay' AS side, * FROM (SELECT ` + cols + ` FROM ` + scratch + where + ` EXCEPT ALL SELECT ` + cols + ` FROM ` + live + where + `) b)
) d ORDER BY ` + order + `, side`
	rows, err := db.QueryxContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("replay: compare %s: %w", table, err)
	}
	defer rows.Close()
	names := strings.Split(strings.ReplaceAll(cols, " ", ""), ",")
	n := 0
	for rows.Next() {
		vals, err := rows.SliceScan()
		if err != nil {
			return n, fmt.Errorf("replay: compare %s: %w", table, err)
		}
		n++
		mark := "-"
		if asString(vals[0]) == "replay" {
			mark = "+"
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s %-6s", mark, table, asString(vals[0]))
		for i, v := range vals[1:] {
			fmt.Fprintf(&b, " %s=%s", names[i], asString(v))
		}
		fmt.Fprintln(out, b.String())
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("replay: compare %s: %w", table, err)
	}
	return n, nil
}

func asString(v any) string {
	switch x := v.(type) {
	case []byte:
		return string(x)
	case time.Time:
		if x.Hour() == 0 && x.Minute() == 0 && x.Second() == 0 && x.Nanosecond() == 0 {
			return x.UTC().Format(time.DateOnly)
		}
		return x.UTC().Format(time.RFC3339Nano)
	case nil:
		return "NULL"
	}
	return fmt.Sprint(v)
}

// apply replaces the live rows (of days, or all when days is nil) by the
// scratch ones in one transaction.
func apply(ctx context.Context, db *sqlx.DB, schema string, days []time.Time) error {
	s := pq.QuoteIdentifier(schema)
	// The live partitions for the scratch rows' months must exist first.
	var months []time.Time
	if err := db.SelectContext(ctx, &months, `SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') FROM `+s+`.api_usage`); err != nil {
		return fmt.Errorf("replay apply: months: %w", err)
	}
	live := NewStore(LiveSchema)
	for _, m := range months {
		if err := live.EnsurePartition(ctx, db, m); err != nil {
			return fmt.Errorf("replay apply: %w", err)
		}
	}
	usageWhere, dailyWhere := "", ""
	args := []any{}
	if days != nil {
		usageWhere = ` WHERE ` + usageDayExpr + ` = ANY($1::date[])`
		dailyWhere = ` WHERE day = ANY($1::date[])`
		args = append(args, pq.Array(dayStrings(days)))
	}
	stmts := []string{
		`LOCK TABLE api_gateway.api_usage, api_gateway.api_usage_daily IN SHARE ROW EXCLUSIVE MODE`,
		`DELETE FROM api_gateway.api_usage` + usageWhere,
		`INSERT INTO api_gateway.api_usage (` + usageColumns + `) SELECT ` + usageColumns + ` FROM ` + s + `.api_usage` + usageWhere,
		`DELETE FROM api_gateway.api_usage_daily` + dailyWhere,
		`INSERT INTO api_gateway.api_usage_daily (` + dailyColumns + `) SELECT ` + dailyColumns + ` FROM ` + s + `.api_usage_daily` + dailyWhere,
	}
	return inTx(ctx, db, func(tx *sqlx.Tx) error {
		for i, q := range stmts {
			a := args
			if i == 0 {
				a = nil
			}
			if _, err := tx.ExecContext(ctx, q, a...); err != nil {
				return fmt.Errorf("replay apply: %w", err)
			}
		}
		return nil
	})
}

// DailyDigest is the SHA-256 (hex) of the ordered, tab-separated dump of a
// schema's api_usage_daily: equal digests mean equal tables, row for row.
func DailyDigest(ctx context.Context, db *sqlx.DB, schema string) (string, error) {
	rows, err := db.QueryContext(ctx, `SELECT to_char(day, 'YYYY-MM-DD'), key_id::text, owner_id, endpoint, requests, credits, units, errors
FROM `+pq.QuoteIdentifier(schema)+`.api_usage_daily ORDER BY day, key_id, endpoint`)
	if err != nil {
		return "", fmt.Errorf("daily digest: %w", err)
	}
	defer rows.Close()
	h := sha256.New()
	for rows.Next() {
		var day, key, owner, endpoint string
		var requests, credits, units, errs int64
		if err := rows.Scan(&day, &key, &owner, &endpoint, &requests, &credits, &units, &errs); err != nil {
			return "", fmt.Errorf("daily digest: %w", err)
		}
		fmt.Fprintf(h, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", day, key, owner, endpoint, requests, credits, units, errs)
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("daily digest: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
