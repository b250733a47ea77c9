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

	"github.com/mana/apigw/consumer"
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
	Schema   string
	Messages int // messages read from the stream
	Events   int // valid events read (both forms)
	// What the live consumer dead-letters, the replay skips and counts:
	// Invalid whole messages (undecodable, or an older one-event message
	// whose event breaks the rules), InvalidEvents of batches that break the
	// rules (the rest of their batch is replayed), and Rejected events the
	// database refused alone.
	Invalid, InvalidEvents, Rejected int
	// Skipped lists the first MaxSkipped of them.
	Skipped    []Skipped
	Days       []time.Time // days compared (windowed replay only; nil = all)
	UsageDiffs int         // differing api_usage rows (either side)
	DailyDiffs int         // differing api_usage_daily rows (either side)
	Applied    bool        // the live tables were replaced
}

// MaxSkipped bounds Report.Skipped.
const MaxSkipped = 100

// Skipped is a message, or one event of a batch (Index >= 0), that the
// replay skipped as the live consumer dead-letters it.
type Skipped struct {
	StreamSeq uint64
	Index     int // -1: the whole message
	EventID   string
	Reason    string
}

func (r *Report) skip(s Skipped) {
	if len(r.Skipped) < MaxSkipped {
		r.Skipped = append(r.Skipped, s)
	}
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
				cfg.Logger.ErrorContext(ctx, "drop scratch schema", "schema", cfg.Schema, "err", err)
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
	// What is published after the replay starts is not read.
	rd, err := usagev1.NewReader(ctx, cfg.JS, usagev1.ReaderConfig{Consumer: cfg.Start.OrderedConfig(), UpToLast: true, Buffer: 2 * cfg.BatchSize})
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	defer rd.Stop()
	dayset := map[time.Time]bool{}
	total := rd.Pending()

	var batch []sourced
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := recordReplayed(ctx, cfg, store, batch, rep)
		batch = batch[:0]
		return err
	}
	start, lastPrint := time.Now(), time.Time{}
	for read := uint64(0); ; {
		msg, meta, err := rd.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("replay: %w", err)
		}
		seq := meta.Sequence.Stream
		read++
		rep.Messages++
		for _, ev := range DecodeChecked(ctx, seq, msg.Subject(), msg.Data(), rep, cfg.Logger) {
			r := RowOf(ev.Event)
			dayset[r.Day()] = true
			batch = append(batch, sourced{row: r, seq: seq, index: ev.Index})
		}
		if len(batch) >= cfg.BatchSize {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		if cfg.Progress != nil && time.Since(lastPrint) > 200*time.Millisecond {
			lastPrint = time.Now()
			rate := float64(read) / max(time.Since(start).Seconds(), 1e-3)
			fmt.Fprintf(cfg.Progress, "\rreplay: %d/%d messages, seq %d, %.0f msg/s ", read, total, seq, rate)
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "\rreplay: %d events in %d messages read, %d skipped, in %s\n",
			rep.Events, rep.Messages, rep.Invalid+rep.InvalidEvents+rep.Rejected, time.Since(start).Round(time.Millisecond))
	}
	days := make([]time.Time, 0, len(dayset))
	for d := range dayset {
		days = append(days, d)
	}
	return days, nil
}

// CheckedEvent is a valid event and its index in its batch (-1: the older
// one-event form).
type CheckedEvent struct {
	Event *usagev1.UsageEvent
	Index int
}

// DecodeChecked decodes one message of either form with the rules of the
// live consumer (usagev1.DecodeMessage, then consumer.CheckKeyID) and returns the events
// the consumer applies; what it would dead-letter is counted in rep. The
// tail prints what it returns.
func DecodeChecked(ctx context.Context, seq uint64, subject string, data []byte, rep *Report, logger *slog.Logger) []CheckedEvent {
	skip := func(index int, id, reason string) {
		rep.skip(Skipped{StreamSeq: seq, Index: index, EventID: id, Reason: reason})
		logger.WarnContext(ctx, "skipped: the consumers dead-letter it", "stream_seq", seq, "event_index", index, "event_id", id, "reason", reason)
	}
	m, err := usagev1.DecodeMessage(subject, data)
	if err != nil {
		rep.Invalid++
		skip(-1, "", err.Error())
		return nil
	}
	batch := usagev1.IsBatchSubject(subject)
	for _, inv := range m.Invalid {
		rep.InvalidEvents++
		skip(inv.Index, inv.Event.GetEventId(), inv.Err.Error())
	}
	bad := map[int]bool{}
	for _, inv := range m.Invalid {
		bad[inv.Index] = true
	}
	out := make([]CheckedEvent, 0, len(m.Events))
	pos := 0
	for _, ev := range m.Events {
		for bad[pos] {
			pos++
		}
		index := -1
		if batch {
			index = pos
		}
		pos++
		if err := consumer.CheckKeyID(ev); err != nil {
			if !batch {
				rep.Invalid++
				skip(-1, "", err.Error())
				return nil
			}
			rep.InvalidEvents++
			skip(index, ev.GetEventId(), err.Error())
			continue
		}
		rep.Events++
		out = append(out, CheckedEvent{Event: ev, Index: index})
	}
	return out
}

// sourced is a replayed row and where its event sits in the stream.
type sourced struct {
	row   Row
	seq   uint64
	index int
}

// recordReplayed records rows into the scratch tables in one transaction.
// A transient failure (a partition DDL race, a lost connection) is retried
// a few times; a rejection of the data is narrowed down to the event, which
// is skipped and counted, as the live consumer dead-letters it.
func recordReplayed(ctx context.Context, cfg ReplayConfig, store *Store, rows []sourced, rep *Report) error {
	record := func(rows []sourced) error {
		plain := make([]Row, len(rows))
		for i, r := range rows {
			plain[i] = r.row
		}
		var err error
		for attempt := 0; ; attempt++ {
			if err = store.EnsurePartitions(ctx, cfg.DB, plain); err == nil {
				err = inTx(ctx, cfg.DB, func(tx *sqlx.Tx) error {
					_, err := store.Record(ctx, tx, plain)
					return err
				})
				if err == nil || consumer.Permanent(err) {
					return err
				}
			}
			if attempt == 4 || ctx.Err() != nil {
				return fmt.Errorf("replay: record: %w", err)
			}
			cfg.Logger.WarnContext(ctx, "replay: transient failure, retrying", "err", err)
			if serr := sleep(ctx, time.Duration(200<<attempt)*time.Millisecond); serr != nil {
				return fmt.Errorf("replay: record: %w", err)
			}
		}
	}
	err := record(rows)
	if err == nil || !consumer.Permanent(err) {
		return err
	}
	for _, r := range rows {
		err := record([]sourced{r})
		if err != nil && consumer.Permanent(err) {
			rep.Rejected++
			rep.Events--
			reason := "rejected by the database: " + err.Error()
			rep.skip(Skipped{StreamSeq: r.seq, Index: r.index, EventID: r.row.EventID, Reason: reason})
			cfg.Logger.WarnContext(ctx, "replay: skipping what the consumer dead-letters", "stream_seq", r.seq,
				"event_index", r.index, "event_id", r.row.EventID, "reason", reason)
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
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
SELECT ` + usageDayExpr + `, key_id, min(owner_id), endpoint, count(*) FILTER (WHERE granted = 0), sum(credits), sum(units),
       count(*) FILTER (WHERE status >= 400), sum(granted)
FROM carried GROUP BY 1, 2, 4
ON CONFLICT (day, key_id, endpoint) DO UPDATE SET
    owner_id = LEAST(d.owner_id, EXCLUDED.owner_id),
    requests = d.requests + EXCLUDED.requests,
    credits  = d.credits + EXCLUDED.credits,
    units    = d.units + EXCLUDED.units,
    errors   = d.errors + EXCLUDED.errors,
    granted  = d.granted + EXCLUDED.granted`
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
	rows, err := db.QueryContext(ctx, `SELECT to_char(day, 'YYYY-MM-DD'), key_id::text, owner_id, endpoint, requests, credits, units, errors, granted
FROM `+pq.QuoteIdentifier(schema)+`.api_usage_daily ORDER BY day, key_id, endpoint`)
	if err != nil {
		return "", fmt.Errorf("daily digest: %w", err)
	}
	defer rows.Close()
	h := sha256.New()
	for rows.Next() {
		var day, key, owner, endpoint string
		var requests, credits, units, errs, granted int64
		if err := rows.Scan(&day, &key, &owner, &endpoint, &requests, &credits, &units, &errs, &granted); err != nil {
			return "", fmt.Errorf("daily digest: %w", err)
		}
		fmt.Fprintf(h, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", day, key, owner, endpoint, requests, credits, units, errs, granted)
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("daily digest: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
