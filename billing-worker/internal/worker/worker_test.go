package worker_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/mana/apigw/billing-worker/internal/worker"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

// start runs a worker in this process until the test ends.
func (e *env) start(mod func(*worker.Config)) worker.Config {
	e.t.Helper()
	env := map[string]string{"DATABASE_URL": e.DBURL, "NATS_URL": e.NATS.URL, "METRICS_PORT": strconv.Itoa(testenv.FreePort(e.t)),
		"FETCH_WAIT": "200ms", "NAK_DELAY": "100ms"}
	cfg, err := worker.ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil {
		e.t.Fatal(err)
	}
	if mod != nil {
		mod(&cfg)
	}
	testenv.Background(e.t, "worker", func(ctx context.Context) error { return worker.Run(ctx, cfg, testenv.Logger(e.t)) })
	return cfg
}

func TestLedgerExact(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(3000, 7)
	e.Publish(evs, nil)
	cfg := e.start(nil)
	e.waitLedger(int64(len(evs)), 60*time.Second)
	e.waitDrained(10 * time.Second)
	e.checkLedger(evs)

	if got := testenv.Scrape(t, cfg.MetricsPort, "billing_events_processed_total"); got != float64(len(evs)) {
		t.Errorf("processed metric = %v, want %d", got, len(evs))
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", cfg.MetricsPort))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/health = %d", resp.StatusCode)
	}
}

// TestRepublishTwice sends 10,000 events, then the same 10,000 again with the
// same Nats-Msg-Id (the stream's dedupe drops them) and once more with new
// message IDs, so the stream holds every event twice: the ledger still has
// each event once and the balances do not move.
func TestRepublishTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(10000, 5)
	e.Publish(evs, nil)
	cfg := e.start(nil)
	e.waitLedger(int64(len(evs)), 60*time.Second)
	e.waitDrained(10 * time.Second)
	before := e.balances()

	e.Publish(evs, nil)
	e.Publish(evs, func(ev *usagev1.UsageEvent) string { return ev.GetEventId() + "-again" })
	e.waitDrained(60 * time.Second)

	e.checkLedger(evs)
	after := e.balances()
	for k, b := range before {
		if after[k] != b {
			t.Errorf("balance %s moved: %+v -> %+v", k, b, after[k])
		}
	}
	if got := testenv.Scrape(t, cfg.MetricsPort, "billing_events_duplicate_total"); got != float64(len(evs)) {
		t.Errorf("duplicates metric = %v, want %d", got, len(evs))
	}
}

// TestRedelivery holds every batch past AckWait, so the server redelivers
// messages while their first delivery is still being applied (to the second
// worker): redeliveries happen and the ledger stays exact, for events
// published one per message and for group-committed batches.
func TestRedelivery(t *testing.T) {
	t.Parallel()
	for _, form := range []string{"events", "batches"} {
		t.Run(form, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			evs := testenv.UsageEvents(400, 3)
			slow := func(c *worker.Config) {
				c.AckWait, c.HandleDelay, c.BatchSize, c.MaxAckPending = time.Second, 1500*time.Millisecond, 100, 200
			}
			if form == "events" {
				e.Publish(evs, nil)
			} else {
				e.PublishBatches(evs, 16)
				slow = func(c *worker.Config) {
					c.AckWait, c.HandleDelay, c.BatchSize, c.MaxAckPending = time.Second, 1500*time.Millisecond, 6, 12
				}
			}
			a, b := e.start(slow), e.start(slow)
			e.waitLedger(int64(len(evs)), 60*time.Second)
			e.waitDrained(60 * time.Second)
			e.checkLedger(evs)
			redelivered := testenv.Scrape(t, a.MetricsPort, "billing_messages_redelivered_total") +
				testenv.Scrape(t, b.MetricsPort, "billing_messages_redelivered_total")
			if redelivered == 0 {
				t.Error("no message was redelivered; the test proves nothing")
			}
			t.Logf("redeliveries: %v", redelivered)
		})
	}
}

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	good := testenv.UsageEvents(50, 2)
	e.Publish(good[:25], nil)

	marshal := func(ev *usagev1.UsageEvent) []byte {
		t.Helper()
		b, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	invalid := proto.Clone(good[0]).(*usagev1.UsageEvent)
	invalid.EventId, invalid.Status = "not-a-ulid", 42
	badKey := proto.Clone(good[1]).(*usagev1.UsageEvent)
	badKey.EventId, badKey.KeyId = "01JAAAAAAAAAAAAAAAAAAAAAAA", "not-a-uuid"
	// Valid protobuf that passes every rule, refused by PostgreSQL (22021).
	refused := proto.Clone(good[2]).(*usagev1.UsageEvent)
	refused.EventId, refused.OwnerId = "01JAAAAAAAAAAAAAAAAAAAAAAB", "owner\x00with a NUL"

	e.PublishRaw(usagev1.Subject("garbage"), []byte("\xff\xfe garbage \x00"), "garbage-1")
	e.PublishRaw(usagev1.Subject(good[0].GetKeyId()), marshal(invalid), "invalid-1")
	e.PublishRaw(usagev1.Subject("not-a-uuid"), marshal(badKey), "")
	e.PublishRaw(usagev1.Subject(refused.GetKeyId()), marshal(refused), refused.GetEventId())
	e.Publish(good[25:], nil)
	e.start(nil)
	e.waitLedger(int64(len(good)), 30*time.Second)
	e.waitDrained(10 * time.Second)
	e.checkLedger(good)

	type dl struct {
		Subject string  `db:"subject"`
		MsgID   *string `db:"msg_id"`
		Reason  string  `db:"reason"`
		Payload []byte  `db:"payload"`
	}
	var got []dl
	if err := e.db.Select(&got, `SELECT subject, msg_id, reason, payload FROM api_gateway.dead_letters WHERE consumer = 'billing' ORDER BY stream_seq`); err != nil {
		t.Fatal(err)
	}
	want := []struct{ subject, reason string }{
		{usagev1.Subject("garbage"), "decode usage event"},
		{usagev1.Subject(good[0].GetKeyId()), "event_id is not a ULID"},
		{usagev1.Subject("not-a-uuid"), "key_id is not a UUID"},
		{usagev1.Subject(refused.GetKeyId()), "rejected by the database"},
	}
	if len(got) != len(want) {
		t.Fatalf("dead letters = %d (%+v), want %d", len(got), got, len(want))
	}
	for i, w := range want {
		if got[i].Subject != w.subject || !strings.Contains(got[i].Reason, w.reason) || len(got[i].Payload) == 0 {
			t.Errorf("dead letter %d = %+v, want subject %s, reason containing %q", i, got[i], w.subject, w.reason)
		}
	}
	if got[0].MsgID == nil || *got[0].MsgID != "garbage-1" {
		t.Errorf("dead letter msg_id = %v, want garbage-1", got[0].MsgID)
	}
	var ev usagev1.UsageEvent
	if err := proto.Unmarshal(got[3].Payload, &ev); err != nil || ev.GetEventId() != refused.GetEventId() {
		t.Errorf("dead letter of the refused event: payload %v (%v), want the event", &ev, err)
	}
	var n int
	if err := e.db.Get(&n, `SELECT count(*) FROM api_gateway.credit_ledger WHERE event_id = $1`, refused.GetEventId()); err != nil || n != 0 {
		t.Errorf("the refused event has %d ledger rows (%v)", n, err)
	}
}

// TestConfigFromEnv checks the billing worker's own default; the settings
// themselves are tested in consumer/process.
func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	if c, err := worker.ConfigFromEnv(func(string) string { return "" }); err != nil || c.MetricsPort != 9101 {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	if _, err := worker.ConfigFromEnv(func(k string) string { return map[string]string{"BATCH_SIZE": "0"}[k] }); err == nil {
		t.Error("BATCH_SIZE=0 accepted")
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		ok   bool
	}{
		{"webhook settings", map[string]string{"WEBHOOK_TIMEOUT": "3s", "WEBHOOK_LEASE": "10s", "WEBHOOK_RETENTION": "168h"}, true},
		{"lease within the default timeout", map[string]string{"WEBHOOK_LEASE": "5s"}, false},
		{"lease as long as the timeout", map[string]string{"WEBHOOK_TIMEOUT": "5s", "WEBHOOK_LEASE": "5s"}, false},
		{"timeout below 1s", map[string]string{"WEBHOOK_TIMEOUT": "100ms"}, false},
		{"retention below 1h", map[string]string{"WEBHOOK_RETENTION": "10m"}, false},
		{"not a duration", map[string]string{"WEBHOOK_RETENTION": "30 days"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := worker.ConfigFromEnv(func(k string) string { return tc.env[k] })
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok %v", err, tc.ok)
			}
			if tc.ok && (c.Webhooks.Timeout != 3*time.Second || c.Webhooks.Lease != 10*time.Second || c.Webhooks.Retention != 168*time.Hour) {
				t.Fatalf("webhook config %+v", c.Webhooks)
			}
		})
	}
}

// process is a billing-worker binary run by a test, with its metrics port.
type process struct {
	*testenv.Process
	port int // METRICS_PORT
}

// spawn starts the binary with the test's database and NATS and the
// settings in extra (key, value, …); it does not wait for anything.
func (e *env) spawn(bin string, extra ...string) *process {
	e.t.Helper()
	port := testenv.FreePort(e.t)
	kv := append([]string{"DATABASE_URL", e.DBURL, "NATS_URL", e.NATS.URL,
		"METRICS_PORT", strconv.Itoa(port), "FETCH_WAIT", "200ms", "NAK_DELAY", "100ms",
		"LOG_LEVEL", "warn"}, extra...)
	var env []string
	for i := 0; i+1 < len(kv); i += 2 {
		env = append(env, kv[i]+"="+kv[i+1])
	}
	return &process{Process: testenv.StartProcess(e.t, "billing-worker", bin, env, ""), port: port}
}

// stop ends the process with SIGTERM; it must exit cleanly within 30 s.
func (p *process) stop(t testing.TB) {
	t.Helper()
	if err := p.StopWithin(30 * time.Second); err != nil {
		t.Errorf("worker exit: %v", err)
	}
}

// consumed scrapes the process's /metrics for the events it handled: those
// it charged and those it found already charged.
func (p *process) consumed(t testing.TB) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", p.port))
	if err != nil {
		t.Fatalf("scrape the worker: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read the worker's metrics: %v", err)
	}
	var n float64
	for _, name := range []string{"billing_events_processed_total", "billing_events_duplicate_total"} {
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				n, found = n+f, true
			}
		}
		if !found {
			t.Fatalf("the worker's metrics have no %s", name)
		}
	}
	return n
}

// waitGrowth waits until the ledger holds more than from rows while p
// runs. It fails the test when p exits first, or when the
// ledger did not grow within timeout although the stream held events the
// ledger lacks (the caller starts p only then).
func (e *env) waitGrowth(p *process, from int64, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if e.Count(`SELECT count(*) FROM api_gateway.credit_ledger`) > from {
			return
		}
		if ended, err := p.Exited(); ended {
			e.t.Fatalf("the billing worker exited (%v) before the ledger grew past %d rows", err, from)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the ledger did not grow past %d rows within %s of the worker's start; consumer: %s", from, timeout, e.consumerState())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLedgerProgress waits until the ledger holds n rows, for as long as it
// keeps growing: it fails only when no row was added for stall, so the
// bound is on a stuck worker, not on how fast a loaded machine applies.
func (e *env) waitLedgerProgress(n int64, stall time.Duration) {
	e.t.Helper()
	last, lastAt := int64(-1), time.Now()
	for {
		got := e.Count(`SELECT count(*) FROM api_gateway.credit_ledger`)
		if got >= n {
			return
		}
		if got != last {
			last, lastAt = got, time.Now()
		}
		if time.Since(lastAt) > stall {
			e.t.Fatalf("the ledger stayed at %d of %d rows for %s; consumer: %s", got, n, stall, e.consumerState())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consumerState describes the billing consumer for a failure message.
func (e *env) consumerState() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.JS.Consumer(ctx, usagev1.StreamName, usagev1.BillingConsumer)
	if err != nil {
		return err.Error()
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d pending, %d unacknowledged, %d redelivered, %d pulls waiting, ack floor %d, delivered %d",
		info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting, info.AckFloor.Stream, info.Delivered.Stream)
}

func eventCount(t *testing.T, name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return n
	}
	return def
}

// TestKill9 kills the worker process at random points while events (one
// per message and in batches) flow in; the ledger ends exact. BILLING_KILL_EVENTS (default 100,000) sets the volume.
func TestKill9(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bin := testenv.BuildBinary(t, "./billing-worker/cmd/billing-worker")
	n := eventCount(t, "BILLING_KILL_EVENTS", 100000)
	kills := eventCount(t, "BILLING_KILLS", 20)
	evs := testenv.UsageEvents(n, 10)

	var acked atomic.Int64 // events the stream has acknowledged
	published := make(chan struct{})
	go func() {
		defer close(published)
		// Both forms of the stream: chunks of one event per message and
		// chunks of group-committed batches of 1 to 100 events.
		const chunk = 500
		for i := 0; i < len(evs); i += chunk {
			if part := evs[i:min(i+chunk, len(evs))]; (i/chunk)%2 == 0 {
				e.Publish(part, nil)
			} else {
				e.PublishBatches(part, 1+rand.IntN(100))
			}
			acked.Add(int64(min(chunk, len(evs)-i)))
			time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond) // an uneven pace
		}
	}()
	// unapplied waits until the stream holds events beyond the ledger's
	// rows, or the publisher is done: a worker must be measured on what
	// it applies, not on the publisher's pace on a busy machine.
	unapplied := func(rows int64) {
		for acked.Load() <= rows {
			select {
			case <-published:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	// Each worker is killed while it consumes: once the ledger grew under
	// it, at a random moment after.
	var progress []int64
	var last int64
	var slowest time.Duration
	midStream := 0
	for range kills {
		unapplied(last)
		p := e.spawn(bin, "BATCH_SIZE", strconv.Itoa(50+rand.IntN(450)), "ACK_WAIT", "2s")
		start := time.Now()
		// Generous: a race-built worker starting on a loaded machine.
		e.waitGrowth(p, last, 90*time.Second)
		slowest = max(slowest, time.Since(start))
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond) // a random moment to die
		p.Kill()
		last = e.Count(`SELECT count(*) FROM api_gateway.credit_ledger`)
		progress = append(progress, last)
		if last >= int64(n) {
			break
		}
		midStream++
	}
	t.Logf("ledger rows after each kill: %v; slowest worker to its first commit: %v", progress, slowest.Round(time.Millisecond))
	if midStream < kills/2 {
		t.Fatalf("%d of %d kills hit a worker in mid-stream: %v", midStream, kills, progress)
	}
	<-published
	start := time.Now()
	p := e.spawn(bin, "ACK_WAIT", "2s")
	e.waitLedgerProgress(int64(n), 60*time.Second)
	t.Logf("the last worker applied %d events in %v", int64(n)-last, time.Since(start).Round(time.Millisecond))
	e.waitDrained(60 * time.Second)
	p.stop(t)
	e.checkLedger(evs)
	t.Logf("%d events, %d kills, %d ledger rows", n, kills, e.Count(`SELECT count(*) FROM api_gateway.credit_ledger`))
}

// TestTwoProcesses runs two worker processes on the same durable consumer
// over a stream holding every event twice (different message IDs): nothing
// is charged twice.
func TestTwoProcesses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bin := testenv.BuildBinary(t, "./billing-worker/cmd/billing-worker")
	evs := testenv.UsageEvents(5000, 4)
	a := e.spawn(bin, "BATCH_SIZE", "100")
	b := e.spawn(bin, "BATCH_SIZE", "100")
	e.Publish(evs, nil)
	e.Publish(evs, func(ev *usagev1.UsageEvent) string { return "dup-" + ev.GetEventId() })
	e.waitLedger(int64(len(evs)), 60*time.Second)
	e.waitDrained(30 * time.Second)
	ca, cb := a.consumed(t), b.consumed(t)
	t.Logf("events consumed: %.0f and %.0f of %d", ca, cb, 2*len(evs))
	if ca == 0 || cb == 0 || ca+cb < float64(2*len(evs)) {
		t.Fatalf("the two processes consumed %.0f and %.0f events of %d", ca, cb, 2*len(evs))
	}
	a.stop(t)
	b.stop(t)
	e.checkLedger(evs)
}

// TestBatches reads both forms of the stream: events published one per
// message and group-committed batches of 64. A batch delivered again — the
// same batch under a new message ID, as a republish after the duplicate
// window sends it — changes nothing.
func TestBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(3000, 7)
	e.Publish(evs[:1000], nil)
	ids := e.PublishBatches(evs[1000:], 64)
	cfg := e.start(nil)
	e.waitLedger(int64(len(evs)), 60*time.Second)
	e.waitDrained(10 * time.Second)
	e.checkLedger(evs)
	before := e.balances()

	// The same bytes under the same ID are dropped by the stream; under a
	// new ID (after the window) they are delivered and are duplicates.
	_, data := testenv.Batch(t, ids[0], evs[1000:1064])
	e.PublishRaw(usagev1.BatchSubject(testenv.BatchGateway), data, ids[0])
	e.PublishRaw(usagev1.BatchSubject(testenv.BatchGateway), data, ids[0]+"-after-the-window")
	e.PublishBatch("", evs[:10]) // old-form events again, now in a batch
	e.waitDrained(30 * time.Second)
	e.checkLedger(evs)
	for k, b := range before {
		if after := e.balances()[k]; after != b {
			t.Errorf("balance %s moved: %+v -> %+v", k, b, after)
		}
	}
	if got := testenv.Scrape(t, cfg.MetricsPort, "billing_events_duplicate_total"); got != 74 {
		t.Errorf("duplicates metric = %v, want 74", got)
	}
	if got := testenv.Scrape(t, cfg.MetricsPort, "billing_events_processed_total"); got != float64(len(evs)) {
		t.Errorf("processed metric = %v, want %d", got, len(evs))
	}
}

// TestBatchDeadLetters: events of a batch that break the rules, or that the
// database rejects alone, are dead letters of their own (with their index
// and ID, the event alone as payload); the rest of the batch is applied. A
// batch that does not decode is one dead letter.
func TestBatchDeadLetters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	good := testenv.UsageEvents(40, 3)
	batch := make([]*usagev1.UsageEvent, 10)
	for i := range batch {
		batch[i] = proto.Clone(good[i]).(*usagev1.UsageEvent)
	}
	batch[2].EventId = "not-a-ulid"
	batch[5].KeyId = "not-a-uuid"
	batch[8].OwnerId = "owner\x00with a NUL" // valid protobuf, refused by Postgres (22021)
	applied := append(append([]*usagev1.UsageEvent{}, good[0:2]...), good[3:5]...)
	applied = append(append(applied, good[6:8]...), good[9:]...)

	e.PublishRaw(usagev1.BatchSubject("gw-junk"), []byte("\xff\xfe not a batch"), "junk-batch")
	batchID := e.PublishBatch("", batch)
	e.PublishBatches(good[10:], 7)
	e.start(nil)
	e.waitLedger(int64(len(applied)), 30*time.Second)
	e.waitDrained(20 * time.Second)
	e.checkLedger(applied)

	type dl struct {
		Index   int     `db:"event_index"`
		EventID *string `db:"event_id"`
		MsgID   *string `db:"msg_id"`
		Reason  string  `db:"reason"`
		Payload []byte  `db:"payload"`
	}
	var got []dl
	if err := e.db.Select(&got, `SELECT event_index, event_id, msg_id, reason, payload FROM api_gateway.dead_letters
		WHERE consumer = 'billing' ORDER BY stream_seq, event_index`); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		index  int
		reason string
	}{{-1, "decode usage batch"}, {2, "event_id is not a ULID"}, {5, "key_id is not a UUID"}, {8, "rejected by the database"}}
	if len(got) != len(want) {
		t.Fatalf("dead letters = %+v, want %d", got, len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Index != w.index || !strings.Contains(g.Reason, w.reason) {
			t.Errorf("dead letter %d = index %d reason %q, want %d %q", i, g.Index, g.Reason, w.index, w.reason)
		}
		if w.index < 0 {
			continue
		}
		var ev usagev1.UsageEvent
		if err := proto.Unmarshal(g.Payload, &ev); err != nil || g.EventID == nil || ev.GetEventId() != *g.EventID ||
			ev.GetRequestId() != batch[w.index].GetRequestId() || g.MsgID == nil || *g.MsgID != batchID {
			t.Errorf("dead letter %d: payload %v, event id %v, msg id %v; want the event alone, its ID and the batch ID", i, err, g.EventID, g.MsgID)
		}
	}
}

// TestStaysLive deletes the durable consumer, then the stream, under a
// running worker: it re-creates both and keeps applying new events. With
// NATS away /health answers 503 with a reason once no fetch succeeded for
// HEALTH_STALE_AFTER, and 200 again when NATS is back.
func TestStaysLive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := testenv.UsageEvents(300, 3)
	// StaleAfter is many idle fetches long: an idle fetch counts only when
	// the server's timeout beats the client's deadline by its 20 ms, which
	// a busy machine misses now and then. A message the server delivers
	// just after the client's deadline waits AckWait for redelivery: 2 s,
	// not the default 30 s that the test's 30 s waits cannot absorb.
	cfg := e.start(func(c *worker.Config) { c.StaleAfter, c.AckWait = 5*time.Second, 2*time.Second })
	e.PublishBatches(evs[:100], 20)
	e.waitLedger(100, 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := e.JS.DeleteConsumer(ctx, usagev1.StreamName, usagev1.BillingConsumer); err != nil {
		t.Fatal(err)
	}
	e.PublishBatches(evs[100:200], 20)
	e.waitLedger(200, 30*time.Second)

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
	e.waitLedger(300, 30*time.Second)
	e.waitDrained(20 * time.Second)
	e.checkLedger(evs)
	waitHealth(t, cfg.MetricsPort, http.StatusOK, `"ok"`, 30*time.Second)

	e.NATS.Stop()
	waitHealth(t, cfg.MetricsPort, http.StatusServiceUnavailable, "no successful fetch", 60*time.Second)
	e.NATS.Start()
	waitHealth(t, cfg.MetricsPort, http.StatusOK, `"ok"`, 30*time.Second)
}

func health(t *testing.T, port int) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitHealth waits until /health answers code with a body containing want.
func waitHealth(t *testing.T, port, code int, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, body := health(t, port)
		if got == code && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health = %d %s after %s, want %d with %q", got, body, timeout, code, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRunEndsWhenServingFails: when the consumer cannot be served (here a
// durable of the same name with another configuration), Run returns the
// error instead of waiting forever for the webhook sender beside it, so
// the process exits and is restarted.
func TestRunEndsWhenServingFails(t *testing.T) {
	e := newEnv(t)
	stream, err := usagev1.EnsureStream(t.Context(), e.JS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CreateConsumer(t.Context(), jetstream.ConsumerConfig{
		Durable: usagev1.BillingConsumer, DeliverPolicy: jetstream.DeliverNewPolicy, AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": e.DBURL, "NATS_URL": e.NATS.URL, "METRICS_PORT": strconv.Itoa(testenv.FreePort(t))}
	cfg, err := worker.ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- worker.Run(t.Context(), cfg, testenv.Logger(t)) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned nil for a consumer it could not serve")
		}
		t.Logf("Run: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("Run still running 60 s after serving failed")
	}
}
