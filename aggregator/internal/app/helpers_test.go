package app_test

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
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

// env is one test's servers: a JetStream server with the USAGE stream and a
// fresh migrated database.
type env struct {
	t     testing.TB
	nats  *testenv.NATS
	dbURL string
	db    *sqlx.DB
	js    jetstream.JetStream
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, nats: testenv.StartNATS(t), dbURL: testenv.PostgresURL(t)}
	db, err := sqlx.Open("postgres", e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	e.db = db
	nc, err := nats.Connect(e.nats.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	e.js = js
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := usagev1.EnsureStream(ctx, js, 0); err != nil {
		t.Fatal(err)
	}
	return e
}

// makeEvents builds n valid events over a few keys, spread over the last 40
// days (so over two or three credit periods), some with 0 credits.
func makeEvents(n, keys int) []*usagev1.UsageEvent {
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

// publish sends the events asynchronously. msgID decides the Nats-Msg-Id:
// nil means the event ID (the gateway's way).
func (e *env) publish(evs []*usagev1.UsageEvent, msgID func(*usagev1.UsageEvent) string) {
	e.t.Helper()
	for len(evs) > 2000 {
		e.publish(evs[:2000], msgID)
		evs = evs[2000:]
	}
	var futures []jetstream.PubAckFuture
	for _, ev := range evs {
		data, err := proto.Marshal(ev)
		if err != nil {
			e.t.Fatal(err)
		}
		id := ev.GetEventId()
		if msgID != nil {
			id = msgID(ev)
		}
		f, err := e.js.PublishAsync(usagev1.Subject(ev.GetKeyId()), data, jetstream.WithMsgID(id), jetstream.WithStallWait(10*time.Second))
		if err != nil {
			e.t.Fatalf("publish: %v", err)
		}
		futures = append(futures, f)
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		e.t.Fatal("publish did not complete")
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			e.t.Fatalf("publish ack: %v", err)
		}
	}
}

func (e *env) publishRaw(subject string, data []byte, msgID string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	opts := []jetstream.PublishOpt{}
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := e.js.Publish(ctx, subject, data, opts...); err != nil {
		e.t.Fatalf("publish raw: %v", err)
	}
}

func (e *env) count(query string, args ...any) int64 {
	e.t.Helper()
	var n sql.NullInt64
	if err := e.db.Get(&n, query, args...); err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return n.Int64
}

// waitDrained waits until the aggregator consumer has nothing pending or unacknowledged.
func (e *env) waitDrained(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := e.js.Consumer(ctx, usagev1.StreamName, usagev1.AggregatorConsumer)
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
	e.t.Fatalf("consumer not drained after %s", timeout)
}

// scrape reads one sample of a metric from a /metrics endpoint.
func scrape(t testing.TB, port int, name string) float64 {
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

func (e *env) waitUsage(n int64, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var got int64
	for time.Now().Before(deadline) {
		if got = e.count(`SELECT count(*) FROM api_gateway.api_usage`); got >= n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("api_usage has %d rows after %s, want %d", got, timeout, n)
}

type daily struct {
	Owner                           string
	Requests, Credits, Units, Errors int64
}

// expectDaily is api_usage_daily as it must be for the given distinct events.
func expectDaily(evs []*usagev1.UsageEvent) map[string]daily {
	want := map[string]daily{}
	for _, ev := range evs {
		at := ev.GetOccurredAt().AsTime().UTC()
		k := at.Format(time.DateOnly) + "/" + ev.GetKeyId() + "/" + ev.GetEndpoint()
		d, ok := want[k]
		if !ok || ev.GetOwnerId() < d.Owner {
			d.Owner = ev.GetOwnerId()
		}
		d.Requests++
		d.Credits += ev.GetCredits()
		d.Units += ev.GetUnits()
		if ev.GetStatus() >= 400 {
			d.Errors++
		}
		want[k] = d
	}
	return want
}

func (e *env) daily() map[string]daily {
	e.t.Helper()
	rows, err := e.db.Query(`SELECT to_char(day, 'YYYY-MM-DD'), key_id::text, endpoint, owner_id, requests, credits, units, errors FROM api_gateway.api_usage_daily`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]daily{}
	for rows.Next() {
		var day, key, ep string
		var d daily
		if err := rows.Scan(&day, &key, &ep, &d.Owner, &d.Requests, &d.Credits, &d.Units, &d.Errors); err != nil {
			e.t.Fatal(err)
		}
		got[day+"/"+key+"/"+ep] = d
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return got
}

// checkUsage asserts api_usage holds each event once and the daily rows are exact.
func (e *env) checkUsage(evs []*usagev1.UsageEvent) {
	e.t.Helper()
	if got := e.count(`SELECT count(*) FROM api_gateway.api_usage`); got != int64(len(evs)) {
		e.t.Errorf("api_usage rows = %d, want %d", got, len(evs))
	}
	if got := e.count(`SELECT count(*) FROM api_gateway.api_usage_default`); got != 0 {
		e.t.Errorf("%d rows in the default partition", got)
	}
	want, got := expectDaily(evs), e.daily()
	if len(got) != len(want) {
		e.t.Errorf("daily: %d rows, want %d", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			e.t.Errorf("daily %s = %+v, want %+v", k, got[k], w)
		}
	}
}
