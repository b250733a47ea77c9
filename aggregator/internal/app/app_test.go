package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mana/apigw/aggregator/internal/app"
	"github.com/mana/apigw/aggregator/internal/rollup"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

func (e *env) getenv(extra ...string) func(string) string {
	m := map[string]string{"DATABASE_URL": e.DBURL, "NATS_URL": e.NATS.URL, "LOG_LEVEL": "error",
		"FETCH_WAIT": "200ms", "NAK_DELAY": "100ms", "METRICS_PORT": "0"}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return func(k string) string { return m[k] }
}

// start runs the aggregator consumer in this process until the test ends.
func (e *env) start(mod func(*app.Config)) app.Config {
	e.t.Helper()
	cfg, err := app.ConfigFromEnv(e.getenv("METRICS_PORT", strconv.Itoa(testenv.FreePort(e.t))))
	if err != nil {
		e.t.Fatal(err)
	}
	if mod != nil {
		mod(&cfg)
	}
	testenv.Background(e.t, "aggregator", func(ctx context.Context) error { return app.Run(ctx, cfg, testenv.Logger(e.t)) })
	return cfg
}

// main runs the binary's Main in this process and returns its exit code and outputs.
func (e *env) main(args ...string) (int, string, string) {
	e.t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := app.Main(ctx, args, e.getenv(), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestDaily checks the daily rows, including a late event (published last,
// from days ago and from the previous month) landing on its own day in its
// own partition.
func TestDaily(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(3000, 6)
	late := proto.Clone(evs[0]).(*usagev1.UsageEvent)
	at := time.Now().UTC().AddDate(0, -1, -3).Truncate(time.Microsecond)
	late.EventId, late.KeyId, late.OccurredAt, late.Period = "01HZZZZZZZZZZZZZZZZZZZZZZZ", "8d0c5b1e-0000-4000-8000-000000000001", timestamppb.New(at), at.Format("2006-01")
	late.TraceId = "4bf92f3577b34da6a3ce929d0e0e4736" // finance's row leads back to the call's trace
	cfg := e.start(nil)
	e.Publish(evs, nil)
	e.waitUsage(int64(len(evs)), 60*time.Second)
	e.Publish([]*usagev1.UsageEvent{late}, nil)
	all := append(evs, late)
	e.waitUsage(int64(len(all)), 30*time.Second)
	e.waitDrained(10 * time.Second)
	e.checkUsage(all)
	if got := e.daily()[at.Format(time.DateOnly)+"/"+late.KeyId+"/"+late.Endpoint]; got.Requests != 1 || got.Credits != late.Credits {
		t.Errorf("late event's day row = %+v", got)
	}
	var trace string
	if err := e.db.Get(&trace, `SELECT trace_id FROM api_gateway.api_usage WHERE event_id = $1`, late.EventId); err != nil || trace != late.TraceId {
		t.Errorf("late event's trace_id = %q (%v), want %q", trace, err, late.TraceId)
	}
	part := fmt.Sprintf("api_gateway.api_usage_%s", at.Format("2006_01"))
	if n := e.Count(`SELECT count(*) FROM `+part+` WHERE event_id = $1`, late.EventId); n != 1 {
		t.Errorf("late event not in partition %s", part)
	}
	if got := testenv.Scrape(t, cfg.MetricsPort, "aggregator_events_processed_total"); got != float64(len(all)) {
		t.Errorf("processed metric = %v, want %d", got, len(all))
	}
}

// TestIdempotent: every event twice in the stream (different message IDs)
// and batches held past AckWait by two consumers, so events are redelivered:
// api_usage and the daily rows stay exact.
func TestIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(400, 3)
	e.Publish(evs, nil)
	e.Publish(evs, func(ev *usagev1.UsageEvent) string { return "again-" + ev.GetEventId() })
	slow := func(c *app.Config) {
		c.AckWait, c.HandleDelay, c.BatchSize, c.MaxAckPending = time.Second, 1500*time.Millisecond, 200, 400
	}
	a, b := e.start(slow), e.start(slow)
	e.waitUsage(int64(len(evs)), 60*time.Second)
	e.waitDrained(60 * time.Second)
	e.checkUsage(evs)
	if r := testenv.Scrape(t, a.MetricsPort, "aggregator_messages_redelivered_total") + testenv.Scrape(t, b.MetricsPort, "aggregator_messages_redelivered_total"); r == 0 {
		t.Error("no redelivery happened")
	}
	if d := testenv.Scrape(t, a.MetricsPort, "aggregator_events_duplicate_total") + testenv.Scrape(t, b.MetricsPort, "aggregator_events_duplicate_total"); d < float64(len(evs)) {
		t.Errorf("duplicates = %v, want at least %d", d, len(evs))
	}
}

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(20, 2)
	bad := proto.Clone(evs[0]).(*usagev1.UsageEvent)
	bad.Period = "1999-01"
	badData, err := proto.Marshal(bad)
	if err != nil {
		t.Fatal(err)
	}
	// Valid protobuf that passes every rule, refused by PostgreSQL (22021).
	refused := proto.Clone(evs[1]).(*usagev1.UsageEvent)
	refused.EventId, refused.OwnerId = "01JAAAAAAAAAAAAAAAAAAAAAAB", "owner\x00with a NUL"
	refusedData, err := proto.Marshal(refused)
	if err != nil {
		t.Fatal(err)
	}
	e.PublishRaw(usagev1.Subject("x"), []byte("not protobuf \xff"), "junk")
	e.PublishRaw(usagev1.Subject(bad.GetKeyId()), badData, "bad-period")
	e.PublishRaw(usagev1.Subject(refused.GetKeyId()), refusedData, refused.GetEventId())
	e.Publish(evs, nil)
	e.start(nil)
	e.waitUsage(int64(len(evs)), 30*time.Second)
	e.waitDrained(10 * time.Second)
	e.checkUsage(evs)
	var reasons []string
	if err := e.db.Select(&reasons, `SELECT reason FROM api_gateway.dead_letters WHERE consumer = 'aggregator' ORDER BY stream_seq`); err != nil {
		t.Fatal(err)
	}
	if len(reasons) != 3 || !strings.Contains(reasons[0], "decode") || !strings.Contains(reasons[1], "period does not match") || !strings.Contains(reasons[2], "rejected by the database") {
		t.Errorf("dead letter reasons = %q", reasons)
	}
}

// TestReplay: replaying twice into empty tables gives the live daily table
// row for row (same SHA-256 of the ordered dump); a tampered live row is
// found (exit 1), --apply repairs it; a windowed replay compares whole days.
func TestReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(4000, 5)
	e.Publish(evs[:2000], nil)
	e.Publish(evs[:500], func(ev *usagev1.UsageEvent) string { return "dup-" + ev.GetEventId() })
	e.Publish(evs[2000:], nil)
	e.start(nil)
	e.waitUsage(int64(len(evs)), 60*time.Second)
	e.waitDrained(10 * time.Second)
	e.checkUsage(evs)

	ctx := context.Background()
	live, err := rollup.DailyDigest(ctx, e.db, rollup.LiveSchema)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		rep, err := rollup.Replay(ctx, rollup.ReplayConfig{DB: e.db, JS: e.JS, Logger: testenv.Logger(t),
			Start: rollup.Start{Policy: jetstream.DeliverAllPolicy}, Keep: true, Out: &bytes.Buffer{},
			Schema: fmt.Sprintf("api_gateway_replay_t%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Events != 4500 || rep.Differs() {
			t.Errorf("replay %d: %+v", i, rep)
		}
		got, err := rollup.DailyDigest(ctx, e.db, rep.Schema)
		if err != nil {
			t.Fatal(err)
		}
		if got != live {
			t.Errorf("replay %d: daily digest %s, live %s", i, got, live)
		}
	}

	if code, out, errOut := e.main("replay"); code != app.ExitOK {
		t.Fatalf("replay of untouched tables: exit %d\n%s\n%s", code, out, errOut)
	}
	var day, key, ep string
	if err := e.db.QueryRow(`UPDATE api_gateway.api_usage_daily SET credits = credits + 7
		WHERE (day, key_id, endpoint) = (SELECT day, key_id, endpoint FROM api_gateway.api_usage_daily ORDER BY day DESC LIMIT 1)
		RETURNING to_char(day, 'YYYY-MM-DD'), key_id::text, endpoint`).Scan(&day, &key, &ep); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := e.main("replay", "--from-start")
	if code != app.ExitDiffers || !strings.Contains(out, "- api_usage_daily live   day="+day+" key_id="+key) || !strings.Contains(out, "+ api_usage_daily replay") {
		t.Fatalf("replay of a tampered row: exit %d\n%s\n%s", code, out, errOut)
	}
	// A window starting in the middle of the stream covers the tampered (latest) day.
	if code, out, _ := e.main("replay", "--from-seq", "2600"); code != app.ExitDiffers || !strings.Contains(out, "day="+day) {
		t.Fatalf("windowed replay of a tampered row: exit %d\n%s", code, out)
	}
	if code, out, errOut := e.main("replay", "--apply"); code != app.ExitOK || !strings.Contains(errOut, "replaced") {
		t.Fatalf("replay --apply: exit %d\n%s\n%s", code, out, errOut)
	}
	if got, _ := rollup.DailyDigest(ctx, e.db, rollup.LiveSchema); got != live {
		t.Errorf("after --apply the daily digest is %s, want %s", got, live)
	}
	for _, args := range [][]string{{"replay"}, {"replay", "--from-seq", "2600"}, {"replay", "--from-time", time.Now().UTC().Add(-time.Hour).Format(time.RFC3339)}} {
		if code, out, errOut := e.main(args...); code != app.ExitOK {
			t.Errorf("%v after --apply: exit %d\n%s\n%s", args, code, out, errOut)
		}
	}
	if code, _, _ := e.main("replay", "--from-seq", "1", "--from-start"); code != app.ExitError {
		t.Errorf("conflicting flags: exit %d", code)
	}
	var left int
	if err := e.db.Get(&left, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'api_gateway_replay_%' AND nspname NOT LIKE 'api_gateway_replay_t%'`); err != nil || left != 0 {
		t.Errorf("%d scratch schemas left behind (%v)", left, err)
	}
}

// TestReplayBinary runs the built binary: its exit code tells a tampered
// api_usage row.
func TestReplayBinary(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bin := testenv.BuildBinary(t, "./aggregator/cmd/aggregator")
	evs := testenv.UsageEvents(200, 2)
	e.Publish(evs, nil)
	e.start(nil)
	e.waitUsage(int64(len(evs)), 30*time.Second)
	e.waitDrained(10 * time.Second)
	run := func(args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = testenv.Env("DATABASE_URL", e.DBURL, "NATS_URL", e.NATS.URL, "LOG_LEVEL", "error")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run("replay"); code != 0 {
		t.Fatalf("replay: exit %d\n%s", code, out)
	}
	if _, err := e.db.Exec(`UPDATE api_gateway.api_usage SET status = 201 WHERE event_id = $1`, evs[7].GetEventId()); err != nil {
		t.Fatal(err)
	}
	if code, out := run("replay"); code != 1 || !strings.Contains(out, evs[7].GetEventId()) {
		t.Fatalf("replay of a tampered api_usage row: exit %d\n%s", code, out)
	}
	if code, out := run("tail", "--from-start", "--limit", "3"); code != 0 || strings.Count(out, "\n") != 3 {
		t.Fatalf("tail: exit %d\n%s", code, out)
	}
}

func TestTail(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(6, 2)
	e.Publish(evs[:3], nil)
	e.PublishRaw(usagev1.Subject("x"), []byte("junk"), "")
	e.Publish(evs[3:], nil)
	code, out, errOut := e.main("tail", "--from-start", "--limit", "6")
	if code != 0 {
		t.Fatalf("tail: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 {
		t.Fatalf("tail printed %d lines:\n%s", len(lines), out)
	}
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v", i, err)
		}
		if m["event_id"] != evs[i].GetEventId() {
			t.Errorf("line %d: event_id %v, want %s", i, m["event_id"], evs[i].GetEventId())
		}
	}
	// Default: only new events, here of one key inside batches that mix
	// keys. The tail's consumer starts at some point: publish until it
	// prints one, which must be one of the key's events published.
	done := make(chan string, 1)
	go func() {
		_, out, _ := e.main("tail", "--limit", "1", "--key", evs[5].GetKeyId())
		done <- out
	}()
	var sent []string
	deadline := time.After(30 * time.Second)
	for {
		batch := testenv.UsageEvents(3, 3)
		batch[1].KeyId = evs[5].GetKeyId()
		e.PublishBatch("", batch)
		sent = append(sent, batch[1].GetEventId())
		select {
		case out := <-done:
			if strings.Count(out, "\n") != 1 || !slices.ContainsFunc(sent, func(id string) bool { return strings.Contains(out, id) }) {
				t.Errorf("tail of new events printed %q, want one of %q", out, sent)
			}
			return
		case <-deadline:
			t.Fatal("tail did not print a new event")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		env       map[string]string
		withError func(*testing.T, error)
	}{
		{name: "defaults"},
		{name: "bad values", env: map[string]string{"METRICS_PORT": "-1", "FETCH_WAIT": "x", "LOG_LEVEL": "chatty"},
			withError: func(t *testing.T, err error) {
				for _, s := range []string{"METRICS_PORT", "FETCH_WAIT", "LOG_LEVEL"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not name %s", err, s)
					}
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := app.ConfigFromEnv(func(k string) string { return tt.env[k] })
			if tt.withError == nil {
				if err != nil || c.MetricsPort != 9102 {
					t.Fatalf("config %+v, %v", c, err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			tt.withError(t, err)
		})
	}
}

// TestPartitionMovesDefaultRows: rows already in the default partition for
// a month are moved when that month's partition is created.
func TestPartitionMovesDefaultRows(t *testing.T) {
	t.Parallel()
	db := sqlx.MustOpen("postgres", testenv.PostgresURL(t))
	defer db.Close()
	ctx := context.Background()
	if _, err := db.Exec(`INSERT INTO api_gateway.api_usage VALUES
		('01HAAAAAAAAAAAAAAAAAAAAAAA', '2024-02-10T10:00:00Z', 'r', '8d0c5b1e-0000-4000-8000-000000000001', 'o', 'pro', 'POST /v1/search', 200, 1, 1, 'request', 5),
		('01HAAAAAAAAAAAAAAAAAAAAAAB', '2024-03-01T00:00:00Z', 'r', '8d0c5b1e-0000-4000-8000-000000000001', 'o', 'pro', 'POST /v1/search', 200, 1, 1, 'request', 5)`); err != nil {
		t.Fatal(err)
	}
	store := rollup.NewStore(rollup.LiveSchema)
	for range 2 { // the second call is a no-op
		if err := store.EnsurePartition(ctx, db, time.Date(2024, 2, 15, 0, 0, 0, 0, time.UTC)); err != nil {
			t.Fatal(err)
		}
	}
	if err := rollup.NewStore(rollup.LiveSchema).EnsurePartition(ctx, db, time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	var feb, def int
	if err := db.Get(&feb, `SELECT count(*) FROM api_gateway.api_usage_2024_02`); err != nil {
		t.Fatal(err)
	}
	if err := db.Get(&def, `SELECT count(*) FROM api_gateway.api_usage_default`); err != nil {
		t.Fatal(err)
	}
	if feb != 1 || def != 1 {
		t.Errorf("february partition %d rows, default %d rows; want 1 and 1", feb, def)
	}
}

// TestBatches reads both forms: events one per message and batches of 50,
// with every batch held past AckWait by two consumers (redeliveries), and a
// batch delivered again under a new message ID: api_usage and the daily
// rows stay exact.
func TestBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(1100, 5)
	e.Publish(evs[:100], nil)
	ids := e.PublishBatches(evs[100:], 50)
	slow := func(c *app.Config) {
		c.AckWait, c.HandleDelay, c.BatchSize, c.MaxAckPending = time.Second, 1500*time.Millisecond, 20, 40
	}
	a, b := e.start(slow), e.start(slow)
	e.waitUsage(int64(len(evs)), 90*time.Second)
	_, data := testenv.Batch(t, ids[3], evs[250:300])
	e.PublishRaw(usagev1.BatchSubject("gw-other"), data, ids[3]+"-after-the-window")
	e.waitDrained(60 * time.Second)
	e.checkUsage(evs)
	if r := testenv.Scrape(t, a.MetricsPort, "aggregator_messages_redelivered_total") + testenv.Scrape(t, b.MetricsPort, "aggregator_messages_redelivered_total"); r == 0 {
		t.Error("no redelivery happened")
	}
	if d := testenv.Scrape(t, a.MetricsPort, "aggregator_events_duplicate_total") + testenv.Scrape(t, b.MetricsPort, "aggregator_events_duplicate_total"); d < 50 {
		t.Errorf("duplicates = %v, want at least 50", d)
	}
}

// badBatch is a batch of 10 of evs' events of which index 2 breaks the
// rules, index 5 has a key ID that is not a UUID and index 8 an owner ID
// Postgres refuses (a NUL byte); it returns the batch and the 7 good events.
func badBatch(evs []*usagev1.UsageEvent) (batch, good []*usagev1.UsageEvent) {
	for i := range 10 {
		ev := proto.Clone(evs[i]).(*usagev1.UsageEvent)
		switch i {
		case 2:
			ev.Period = "1999-01"
		case 5:
			ev.KeyId = "not-a-uuid"
		case 8:
			ev.OwnerId = "owner\x00with a NUL"
		default:
			good = append(good, evs[i])
		}
		batch = append(batch, ev)
	}
	return batch, good
}

// TestBatchDeadLetters: the events of a batch that the consumer can never
// apply are dead letters of their own; the rest of the batch is applied.
func TestBatchDeadLetters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(30, 2)
	batch, good := badBatch(evs)
	e.PublishRaw(usagev1.BatchSubject("gw-junk"), []byte("not a batch \xff"), "junk")
	e.PublishBatch("", batch)
	e.PublishBatches(evs[10:], 4)
	good = append(good, evs[10:]...)
	e.start(nil)
	e.waitUsage(int64(len(good)), 30*time.Second)
	e.waitDrained(20 * time.Second)
	e.checkUsage(good)
	var got []struct {
		Index  int    `db:"event_index"`
		Reason string `db:"reason"`
	}
	if err := e.db.Select(&got, `SELECT event_index, reason FROM api_gateway.dead_letters WHERE consumer = 'aggregator' ORDER BY stream_seq, event_index`); err != nil {
		t.Fatal(err)
	}
	want := []string{"decode usage batch", "period does not match", "key_id is not a UUID", "rejected by the database"}
	if len(got) != len(want) {
		t.Fatalf("dead letters %+v, want %q", got, want)
	}
	for i, w := range want {
		if !strings.Contains(got[i].Reason, w) || got[i].Index != []int{-1, 2, 5, 8}[i] {
			t.Errorf("dead letter %d = %+v, want %q", i, got[i], w)
		}
	}
}

// TestReplaySkipsBadData: a stream holding an undecodable message, an
// invalid one-event message, and a batch with an invalid event, an event of
// a key that is not a UUID and an event Postgres refuses. The replay
// completes, reports each of them, and the aggregates match the live ones
// (the consumer dead-lettered the same).
func TestReplaySkipsBadData(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(300, 4)
	batch, good := badBatch(evs)
	invalid := proto.Clone(evs[10]).(*usagev1.UsageEvent)
	invalid.Status = 42
	invalidData, _ := proto.Marshal(invalid)
	e.Publish(evs[10:100], nil)
	e.PublishRaw(usagev1.Subject("x"), []byte("not protobuf \xff"), "junk")
	e.PublishRaw(usagev1.Subject(invalid.GetKeyId()), invalidData, "bad-status")
	e.PublishBatch("", batch)
	e.PublishBatches(evs[100:], 32)
	good = append(good, evs[10:]...)
	e.start(nil)
	e.waitUsage(int64(len(good)), 30*time.Second)
	e.waitDrained(20 * time.Second)
	e.checkUsage(good)

	rep, err := rollup.Replay(context.Background(), rollup.ReplayConfig{DB: e.db, JS: e.JS, Logger: testenv.Logger(t),
		Start: rollup.Start{Policy: jetstream.DeliverAllPolicy}, Out: &bytes.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Differs() || rep.Events != len(good) || rep.Invalid != 2 || rep.InvalidEvents != 2 || rep.Rejected != 1 || len(rep.Skipped) != 5 {
		t.Errorf("replay report %+v, want no difference, %d events, 2 invalid messages, 2 invalid events, 1 rejected", rep, len(good))
	}
	code, out, errOut := e.main("replay")
	if code != app.ExitOK || strings.Count(errOut, "replay: skipped stream_seq=") != 5 || !strings.Contains(errOut, "rejected by the database") {
		t.Errorf("replay: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := e.main("tail", "--from-start", "--limit", strconv.Itoa(len(good))); code != 0 || strings.Count(out, "\n") != len(good) {
		t.Errorf("tail: exit %d, %d lines\n%s", code, strings.Count(out, "\n"), errOut)
	}
}

// TestStaysLive deletes the durable consumer, then the stream, under a
// running aggregator: it re-creates both and keeps applying; /health turns
// 503 with a reason while NATS is away, 200 when it is back.
func TestStaysLive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(300, 3)
	// StaleAfter is many idle fetches long: an idle fetch counts only when
	// the server's timeout beats the client's deadline by its 20 ms, which
	// a busy machine misses now and then. A message the server delivers
	// just after the client's deadline waits AckWait for redelivery: 2 s,
	// not the default 30 s that the test's 30 s waits cannot absorb.
	cfg := e.start(func(c *app.Config) { c.StaleAfter, c.AckWait = 5*time.Second, 2*time.Second })
	e.PublishBatches(evs[:100], 20)
	e.waitUsage(100, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := e.JS.DeleteConsumer(ctx, usagev1.StreamName, usagev1.AggregatorConsumer); err != nil {
		t.Fatal(err)
	}
	e.PublishBatches(evs[100:200], 20)
	e.waitUsage(200, 30*time.Second)
	if err := e.JS.DeleteStream(ctx, usagev1.StreamName); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := e.JS.Stream(ctx, usagev1.StreamName); err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("stream not re-created: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.PublishBatches(evs[200:], 20)
	e.waitUsage(300, 30*time.Second)
	e.waitDrained(20 * time.Second)
	e.checkUsage(evs)
	e.NATS.Stop()
	waitHealth(t, cfg.MetricsPort, http.StatusServiceUnavailable, "no successful fetch", 60*time.Second)
	e.NATS.Start()
	waitHealth(t, cfg.MetricsPort, http.StatusOK, `"ok"`, 30*time.Second)
}

// waitHealth waits until /health answers code with a body containing want.
func waitHealth(t *testing.T, port, code int, want string, timeout time.Duration) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode == code && strings.Contains(string(body), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health = %d %s after %s, want %d with %q", resp.StatusCode, body, timeout, code, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// monthEvents are n of evs moved to the given month (UTC).
func monthEvents(evs []*usagev1.UsageEvent, month time.Time) []*usagev1.UsageEvent {
	out := make([]*usagev1.UsageEvent, len(evs))
	for i, ev := range evs {
		ev = proto.Clone(ev).(*usagev1.UsageEvent)
		at := month.Add(time.Duration(i) * time.Minute)
		ev.OccurredAt, ev.Period = timestamppb.New(at), at.Format("2006-01")
		out[i] = ev
	}
	return out
}

// TestPartitionRace: creating a new month's partition concurrently is not
// bad data. Several appliers with their own stores create the same months
// at once; and a creator the advisory lock does not serialise (a session
// holding the new partition uncommitted) makes the consumer's DDL wait and
// then fail with a duplicate: the events are applied into that partition,
// nothing is dead-lettered.
func TestPartitionRace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	for _, month := range []time.Time{time.Date(2021, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2021, 4, 1, 0, 0, 0, 0, time.UTC)} {
		evs := monthEvents(testenv.UsageEvents(40, 2), month)
		errs := make(chan error, 4)
		for w := range 4 {
			go func() {
				store := rollup.NewStore(rollup.LiveSchema)
				rows := make([]rollup.Row, 0, 10)
				for _, ev := range evs[w*10 : w*10+10] {
					rows = append(rows, rollup.RowOf(ev))
				}
				err := store.EnsurePartitions(ctx, e.db, rows)
				if err == nil {
					err = func() error {
						tx, err := e.db.BeginTxx(ctx, nil)
						if err != nil {
							return err
						}
						if _, err := store.Record(ctx, tx, rows); err != nil {
							_ = tx.Rollback()
							return err
						}
						return tx.Commit()
					}()
				}
				errs <- err
			}()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Errorf("concurrent applier on %s: %v", month.Format("2006-01"), err)
			}
		}
		if n := e.Count(`SELECT count(*) FROM api_gateway.api_usage_` + month.Format("2006_01")); n != 40 {
			t.Errorf("partition of %s holds %d rows, want 40", month.Format("2006-01"), n)
		}
	}

	// A foreign creator holds the partition of May 2021 uncommitted while
	// the running consumer meets events of that month.
	e.start(nil)
	current := testenv.UsageEvents(20, 2)
	e.PublishBatches(current, 10)
	e.waitUsage(80+20, 30*time.Second)
	month := time.Date(2021, 5, 1, 0, 0, 0, 0, time.UTC)
	foreign, err := e.db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = foreign.Rollback() }()
	for _, q := range []string{
		`CREATE TABLE api_gateway.api_usage_2021_05 (LIKE api_gateway.api_usage INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`,
		`ALTER TABLE api_gateway.api_usage ATTACH PARTITION api_gateway.api_usage_2021_05 FOR VALUES FROM ('2021-05-01T00:00:00Z') TO ('2021-06-01T00:00:00Z')`,
	} {
		if _, err := foreign.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	evs := monthEvents(testenv.UsageEvents(50, 2), month)
	e.PublishBatches(evs, 25)
	deadline := time.Now().Add(30 * time.Second)
	for e.Count(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
		AND query LIKE 'CREATE TABLE%api_usage_2021_05%'`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the consumer's partition DDL never waited on the foreign creator")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := foreign.Commit(); err != nil {
		t.Fatal(err)
	}
	e.WaitRows("api_gateway.api_usage_2021_05", int64(len(evs)), 30*time.Second)
	e.waitDrained(20 * time.Second)
	if n := e.Count(`SELECT count(*) FROM api_gateway.dead_letters`); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	if n := e.Count(`SELECT count(*) FROM api_gateway.api_usage_default`); n != 0 {
		t.Errorf("%d rows in the default partition", n)
	}
}

// TestExhaustedNewsIsNoCall: the gateway's news of a key refused for want
// of credits (endpoint credits.exhausted) is neither an api_usage row nor a
// request, error or credit of a daily row, live as in a replay.
func TestExhaustedNewsIsNoCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	calls := testenv.UsageEvents(300, 3)
	var all []*usagev1.UsageEvent
	for i, ev := range calls {
		all = append(all, ev)
		if i%50 == 0 {
			x := proto.Clone(ev).(*usagev1.UsageEvent)
			x.EventId = ulid.Make().String()
			x.Endpoint, x.Status, x.Credits, x.Units, x.Unit = usagev1.ExhaustedEndpoint, 402, 0, 0, "credit"
			all = append(all, x)
		}
	}
	e.PublishBatches(all, 40)
	e.start(nil)
	e.waitUsage(int64(len(calls)), 60*time.Second)
	e.waitDrained(10 * time.Second)
	e.checkUsage(calls)
	if n := e.Count(`SELECT count(*) FROM api_gateway.api_usage_daily WHERE endpoint = $1`, usagev1.ExhaustedEndpoint); n != 0 {
		t.Fatalf("%d daily rows of the news", n)
	}
	rep, err := rollup.Replay(context.Background(), rollup.ReplayConfig{DB: e.db, JS: e.JS, Logger: testenv.Logger(t),
		Start: rollup.Start{Policy: jetstream.DeliverAllPolicy}, Out: &bytes.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Events != len(all) || rep.Differs() || rep.Invalid+rep.InvalidEvents+rep.Rejected != 0 {
		t.Fatalf("replay: %+v", rep)
	}
}
