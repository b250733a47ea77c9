package testenv

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Usage is the USAGE stream on an embedded nats-server, for the tests of
// the binaries that publish and consume usage events.
type Usage struct {
	t    testing.TB
	NATS *NATS
	JS   jetstream.JetStream
}

// StartUsage starts nats-server (StartNATS) and ensures the USAGE stream.
func StartUsage(t testing.TB) *Usage {
	t.Helper()
	u := &Usage{t: t, NATS: StartNATS(t)}
	nc, err := nats.Connect(u.NATS.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if u.JS, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := usagev1.EnsureStream(ctx, u.JS, 0); err != nil {
		t.Fatal(err)
	}
	return u
}

// UsageDB is what a test of a USAGE stream consumer needs: the stream
// (StartUsage) and a fresh migrated database (PostgresURL).
type UsageDB struct {
	*Usage
	DBURL string
	DB    *sql.DB
}

// StartUsageDB starts both.
func StartUsageDB(t testing.TB) *UsageDB {
	t.Helper()
	u := &UsageDB{Usage: StartUsage(t), DBURL: PostgresURL(t)}
	u.DB = OpenDB(t, u.DBURL)
	return u
}

// Count runs a query returning one number on the database (NULL counts as 0).
func (u *UsageDB) Count(query string, args ...any) int64 {
	u.t.Helper()
	return Count(u.t, u.DB, query, args...)
}

// WaitRows waits until table holds at least n rows.
func (u *UsageDB) WaitRows(table string, n int64, timeout time.Duration) {
	u.t.Helper()
	WaitRows(u.t, u.DB, table, n, timeout)
}

// UsageEvents builds n valid events over keys random key IDs, spread over
// the last 40 days (so over two or three credit periods), with 0 to 10
// credits, 1 to 100 units and a few error statuses.
func UsageEvents(n, keys int) []*usagev1.UsageEvent {
	ids := make([]string, keys)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	now := time.Now().UTC()
	evs := make([]*usagev1.UsageEvent, n)
	for i := range evs {
		at := now.Add(-time.Duration(rand.Int64N(int64(40 * 24 * time.Hour)))).Truncate(time.Microsecond)
		k := rand.IntN(keys)
		evs[i] = &usagev1.UsageEvent{
			EventId:        ulid.Make().String(),
			RequestId:      fmt.Sprintf("req-%d", i),
			KeyId:          ids[k],
			OwnerId:        fmt.Sprintf("owner-%d", k%3),
			Tier:           "pro",
			Endpoint:       []string{"POST /v1/search", "POST /v1/extract", "GET /v1/search/engines"}[i%3],
			Status:         []int32{200, 200, 200, 404, 502}[rand.IntN(5)],
			Credits:        rand.Int64N(11),
			Units:          1 + rand.Int64N(100),
			Unit:           "request",
			OccurredAt:     timestamppb.New(at),
			LatencyUs:      1234,
			Period:         at.Format("2006-01"),
			MonthlyCredits: 5000,
			GatewayId:      "gw-test",
		}
	}
	return evs
}

// Publish sends the events asynchronously and waits for every ack. msgID
// decides the Nats-Msg-Id: nil means the event ID (the gateway's way).
func (u *Usage) Publish(evs []*usagev1.UsageEvent, msgID func(*usagev1.UsageEvent) string) {
	u.t.Helper()
	msgs := make([]outMsg, len(evs))
	for i, ev := range evs {
		data, err := proto.Marshal(ev)
		if err != nil {
			u.t.Fatal(err)
		}
		id := ev.GetEventId()
		if msgID != nil {
			id = msgID(ev)
		}
		msgs[i] = outMsg{subject: usagev1.Subject(ev.GetKeyId()), data: data, id: id}
	}
	u.publishAll(msgs)
}

// outMsg is one message for publishAll.
type outMsg struct {
	subject string
	data    []byte
	id      string
}

// publishWithin bounds publishAll's wait for the next ack: the publish
// fails when no message was acknowledged for that long. It bounds a stuck
// stream, not the volume: 10,000 messages fsynced one by one on a loaded
// machine take longer than a minute, and still make progress.
const publishWithin = 60 * time.Second

// publishAll publishes the messages asynchronously, 2,000 at most in flight,
// and waits for every ack. An ack that does not come (the reply was lost
// while the server restarted or the stream was re-created) times out after
// the JetStream context's async timeout, and the message is published again
// under the same Nats-Msg-Id, so the stream holds it once.
func (u *Usage) publishAll(msgs []outMsg) {
	u.t.Helper()
	deadline := time.Now().Add(publishWithin)
	for len(msgs) > 0 {
		n := min(len(msgs), 2000)
		futures := make([]jetstream.PubAckFuture, n)
		for i, m := range msgs[:n] {
			f, err := u.JS.PublishAsync(m.subject, m.data, msgOpts(m.id, jetstream.WithStallWait(10*time.Second))...)
			if err != nil {
				u.t.Fatalf("publish: %v", err)
			}
			futures[i] = f
		}
		for i, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				u.republish(msgs[i], err, deadline)
			case <-time.After(time.Until(deadline)):
				u.t.Fatalf("publish: no ack for %s", publishWithin)
			}
			deadline = time.Now().Add(publishWithin)
		}
		msgs = msgs[n:]
	}
}

// republish publishes m synchronously until it is acknowledged or the
// deadline passes; first is the error of the first try.
func (u *Usage) republish(m outMsg, first error, deadline time.Time) {
	u.t.Helper()
	err := first
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), min(5*time.Second, time.Until(deadline)))
		_, err = u.JS.Publish(ctx, m.subject, m.data, msgOpts(m.id)...)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	u.t.Fatalf("publish %s: not acknowledged within %s: %v (first try: %v)", m.id, publishWithin, err, first)
}

// msgOpts adds the message ID, when there is one, to opts.
func msgOpts(id string, opts ...jetstream.PublishOpt) []jetstream.PublishOpt {
	if id == "" {
		return opts
	}
	return append(opts, jetstream.WithMsgID(id))
}

// BatchGateway is the gateway ID PublishBatch and PublishBatches publish as.
const BatchGateway = "gw-test"

// Batch marshals the events as one UsageBatch with the given ID (a new ULID
// when id is empty), sealed now by BatchGateway.
func Batch(t testing.TB, id string, evs []*usagev1.UsageEvent) (string, []byte) {
	t.Helper()
	if id == "" {
		id = ulid.Make().String()
	}
	data, err := proto.Marshal(&usagev1.UsageBatch{BatchId: id, GatewayId: BatchGateway, SealedAt: timestamppb.Now(), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	return id, data
}

// PublishBatch publishes the events as one UsageBatch the way the gateway's
// group commit does: on usagev1.BatchSubject(BatchGateway), with the batch
// ID as Nats-Msg-Id. An empty id draws a new ULID; the ID is returned.
func (u *Usage) PublishBatch(id string, evs []*usagev1.UsageEvent) string {
	u.t.Helper()
	id, data := Batch(u.t, id, evs)
	u.PublishRaw(usagev1.BatchSubject(BatchGateway), data, id)
	return id
}

// PublishBatches publishes the events in batches of size events (the last
// one may be smaller), asynchronously, and waits for every ack. It returns
// the batch IDs.
func (u *Usage) PublishBatches(evs []*usagev1.UsageEvent, size int) []string {
	u.t.Helper()
	var ids []string
	var msgs []outMsg
	for i := 0; i < len(evs); i += size {
		id, data := Batch(u.t, "", evs[i:min(i+size, len(evs))])
		ids, msgs = append(ids, id), append(msgs, outMsg{subject: usagev1.BatchSubject(BatchGateway), data: data, id: id})
	}
	u.publishAll(msgs)
	return ids
}

// PublishRaw publishes data as it is (no msg ID when msgID is empty), e.g. a
// message that must end as a dead letter.
func (u *Usage) PublishRaw(subject string, data []byte, msgID string) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := u.JS.Publish(ctx, subject, data, opts...); err != nil {
		u.t.Fatalf("publish raw: %v", err)
	}
}

// WaitDrained waits until the durable consumer has nothing pending,
// unacknowledged or waiting for redelivery.
func (u *Usage) WaitDrained(durable string, timeout time.Duration) {
	u.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := u.JS.Consumer(ctx, usagev1.StreamName, durable)
		if err == nil {
			info, err := c.Info(ctx)
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
				cancel()
				return
			}
		}
		cancel()
		time.Sleep(50 * time.Millisecond)
	}
	u.t.Fatalf("consumer %s not drained after %s", durable, timeout)
}

// Count runs a query returning one number (NULL counts as 0).
func Count(t testing.TB, db *sql.DB, query string, args ...any) int64 {
	t.Helper()
	var n sql.NullInt64
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n.Int64
}

// WaitRows waits until table holds at least n rows.
func WaitRows(t testing.TB, db *sql.DB, table string, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got int64
	for time.Now().Before(deadline) {
		if got = Count(t, db, `SELECT count(*) FROM `+table); got >= n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s has %d rows after %s, want %d", table, got, timeout, n)
}

// Scrape reads one sample of a metric from the /metrics endpoint on port.
func Scrape(t testing.TB, port int, name string) float64 {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// Background runs run in a goroutine until the test ends; then it cancels
// run's context and waits up to 30s for it to return, failing the test when
// it returns an error or does not return. name names it in the failures.
func Background(t testing.TB, name string, run func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop", name)
		}
	})
}

// OpenDB opens the Postgres database at url (e.g. from PostgresURL), closed
// when the test ends.
func OpenDB(t testing.TB, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}
