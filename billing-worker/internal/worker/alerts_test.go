package worker_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// TestCreditAlertsOnce: a key's usage crossing 50, 80 and 100 % of its
// grant raises each threshold once, however the batches are redelivered,
// republished or re-read by a restarted worker; the ledger reaching the
// grant is no credits.exhausted (that is the gateway's refusal's to tell).
func TestCreditAlertsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	key, owner := uuid.NewString(), "owner-alerts"
	// One endpoint asks for 50 and 100, another for 80 only: each threshold
	// is one alert, delivered to the endpoints that asked for it.
	both, only80 := uuid.NewString(), uuid.NewString()
	for id, ts := range map[string]string{both: "{50,100}", only80: "{80}"} {
		if _, err := e.db.Exec(`INSERT INTO api_gateway.webhook_endpoints (id, owner_id, url, thresholds, secret)
			VALUES ($1, $2, 'http://127.0.0.1:1/hook', $3, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')`, id, owner, ts); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	ev := func(credits int64) *usagev1.UsageEvent {
		return &usagev1.UsageEvent{EventId: ulid.Make().String(), RequestId: "r", KeyId: key, OwnerId: owner, Tier: "free",
			Endpoint: "POST /v1/search", Status: 200, Credits: credits, Units: 1, Unit: "request",
			OccurredAt: timestamppb.New(now), Period: now.Format("2006-01"), MonthlyCredits: 100, GatewayId: "gw"}
	}
	count := func(q string) int64 { return e.Count(q, key) }
	alerts := `SELECT count(*) FROM api_gateway.credit_alerts WHERE key_id = $1`

	e.start(nil)
	e.PublishBatch("", []*usagev1.UsageEvent{ev(30), ev(10)}) // 40 %: nothing
	e.waitLedger(2, 60*time.Second)
	e.waitDrained(30 * time.Second)
	if n := count(alerts); n != 0 {
		t.Fatalf("%d alerts at 40 %%", n)
	}
	second := []*usagev1.UsageEvent{ev(15)} // 55 %: 50 crossed
	e.PublishBatch("", second)
	e.waitLedger(3, 60*time.Second)
	e.PublishBatch("", second) // after the duplicate window: the same events again
	e.waitDrained(30 * time.Second)
	third := []*usagev1.UsageEvent{ev(30), ev(20)} // 105 %: 80 and 100
	e.PublishBatch("", third)
	e.waitLedger(5, 60*time.Second)
	e.waitDrained(30 * time.Second)

	// A second worker, and every batch once more.
	second2 := e.start(nil)
	waitHealthy(t, second2.MetricsPort)
	e.PublishBatch("", []*usagev1.UsageEvent{ev(0)})
	e.PublishBatch("", third)
	e.waitLedger(6, 60*time.Second)
	e.waitDrained(30 * time.Second)

	var got []struct {
		Kind      string `db:"kind"`
		Threshold int    `db:"threshold"`
	}
	if err := e.db.Select(&got, `SELECT kind, threshold FROM api_gateway.credit_alerts WHERE key_id = $1 ORDER BY kind, threshold`, key); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[{threshold 50} {threshold 80} {threshold 100}]" {
		t.Fatalf("alerts %v", got)
	}
	// The deliveries are made from the WEBHOOKS stream, after the ledger's
	// transaction: three of them (2 to one endpoint, 1 to the other).
	deadline := time.Now().Add(60 * time.Second)
	for e.Count(`SELECT count(*) FROM api_gateway.webhook_deliveries d JOIN api_gateway.webhook_events ev ON ev.id = d.event_id
		WHERE ev.owner_id = $1`, owner) < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	var deliveries []struct {
		Endpoint string `db:"endpoint_id"`
		Type     string `db:"type"`
		Payload  []byte `db:"payload"`
	}
	if err := e.db.Select(&deliveries, `SELECT d.endpoint_id::text, ev.type, ev.payload FROM api_gateway.webhook_deliveries d
		JOIN api_gateway.webhook_events ev ON ev.id = d.event_id WHERE ev.owner_id = $1`, owner); err != nil {
		t.Fatal(err)
	}
	per := map[string][]int{}
	for _, d := range deliveries {
		var body struct {
			Type string
			Data struct {
				KeyID                                  string `json:"keyId"`
				Period                                 string
				Threshold                              int
				CreditsUsed, CreditsLeft, CreditsGrant int64 `json:"-"`
			}
		}
		if err := json.Unmarshal(d.Payload, &body); err != nil || body.Type != d.Type || body.Data.KeyID != key || body.Data.Period != now.Format("2006-01") {
			t.Fatalf("payload %s (%v)", d.Payload, err)
		}
		name := map[string]string{both: "both", only80: "only80"}[d.Endpoint]
		if d.Type != "credits.threshold" {
			t.Fatalf("a %s delivery from the ledger alone: %s", d.Type, d.Payload)
		}
		per[name] = append(per[name], body.Data.Threshold)
	}
	if len(per["both"]) != 2 || len(per["only80"]) != 1 {
		t.Fatalf("deliveries by endpoint (threshold): %v", per)
	}
	var data map[string]any
	var raw []byte
	if err := e.db.Get(&raw, `SELECT payload->'data' FROM api_gateway.webhook_events WHERE owner_id = $1 AND payload->'data'->>'threshold' = '80'`, owner); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(raw, &data)
	if data["creditsUsed"] != 105.0 || data["creditsLeft"] != 0.0 || data["creditsGranted"] != 100.0 {
		t.Fatalf("threshold 80 data %s", raw)
	}
}

// TestExhaustedOnce: the gateway's news of a key refused for want of
// credits raises credits.exhausted once per key and period, with the
// ledger's balance, also when the ledger is far from the grant (a hold
// larger than what is left) or has nothing of the key yet, and however the
// news is redelivered, told again after a Redis flush or re-read by a
// second worker. The news is no ledger row and no request.
func TestExhaustedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	owner, silent := "owner-exhausted", "owner-without-endpoints"
	endpoint := uuid.NewString()
	if _, err := e.db.Exec(`INSERT INTO api_gateway.webhook_endpoints (id, owner_id, url, events, thresholds, secret)
		VALUES ($1, $2, 'http://127.0.0.1:1/hook', '{credits.exhausted}', '{}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')`, endpoint, owner); err != nil {
		t.Fatal(err)
	}
	used, fresh, unheard := uuid.NewString(), uuid.NewString(), uuid.NewString()
	now := time.Now().UTC()
	call := func(key string, credits int64) *usagev1.UsageEvent {
		return &usagev1.UsageEvent{EventId: ulid.Make().String(), RequestId: "r", KeyId: key, OwnerId: owner, Tier: "free",
			Endpoint: "POST /v1/search", Status: 200, Credits: credits, Units: credits, Unit: "request",
			OccurredAt: timestamppb.New(now), Period: now.Format("2006-01"), MonthlyCredits: 100, GatewayId: "gw"}
	}
	refused := func(key, owner string) *usagev1.UsageEvent {
		return &usagev1.UsageEvent{EventId: ulid.Make().String(), RequestId: "r402", KeyId: key, OwnerId: owner, Tier: "free",
			Endpoint: usagev1.ExhaustedEndpoint, Status: 402, Unit: "credit",
			OccurredAt: timestamppb.New(now), Period: now.Format("2006-01"), MonthlyCredits: 100, GatewayId: "gw"}
	}

	e.start(nil)
	// 30 of 100 used, then a call holding more than the 70 left is refused.
	e.PublishBatch("", []*usagev1.UsageEvent{call(used, 30)})
	e.waitLedger(1, 60*time.Second)
	first := refused(used, owner)
	e.PublishBatch("", []*usagev1.UsageEvent{first, refused(fresh, owner), refused(unheard, silent)})
	e.waitDrained(30 * time.Second)
	// Again: the same news after the duplicate window, the news told anew
	// after a Redis flush (twice in one batch, beside a call), and a second
	// worker reading it all.
	e.PublishBatch("", []*usagev1.UsageEvent{first})
	e.PublishBatch("", []*usagev1.UsageEvent{refused(used, owner), call(used, 5), refused(used, owner)})
	e.waitLedger(2, 60*time.Second)
	w2 := e.start(nil)
	waitHealthy(t, w2.MetricsPort)
	e.PublishBatch("", []*usagev1.UsageEvent{refused(fresh, owner), first})
	e.waitDrained(30 * time.Second)

	var alerts []string
	if err := e.db.Select(&alerts, `SELECT key_id::text || ' ' || kind || ' ' || threshold FROM api_gateway.credit_alerts ORDER BY 1`); err != nil {
		t.Fatal(err)
	}
	want := []string{fresh + " exhausted 0", used + " exhausted 0"}
	if fresh > used {
		want[0], want[1] = want[1], want[0]
	}
	if fmt.Sprint(alerts) != fmt.Sprint(want) {
		t.Fatalf("credit alerts %v, want %v (none for the owner without endpoints)", alerts, want)
	}
	// The deliveries are made from the WEBHOOKS stream, after the ledger's
	// transaction: one per event.
	deadline := time.Now().Add(60 * time.Second)
	for e.Count(`SELECT count(*) FROM api_gateway.webhook_deliveries WHERE endpoint_id = $1`, endpoint) < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	var events []struct {
		Payload  []byte `db:"payload"`
		Delivers int    `db:"delivers"`
	}
	if err := e.db.Select(&events, `SELECT ev.payload, (SELECT count(*) FROM api_gateway.webhook_deliveries d
		WHERE d.event_id = ev.id AND d.endpoint_id = $2) AS delivers
		FROM api_gateway.webhook_events ev WHERE ev.owner_id = $1 AND ev.type = 'credits.exhausted'`, owner, endpoint); err != nil {
		t.Fatal(err)
	}
	data := map[string]string{}
	for _, ev := range events {
		var body struct {
			Type string
			Data struct {
				KeyID        string `json:"keyId"`
				Period       string `json:"period"`
				CreditsUsed  int64  `json:"creditsUsed"`
				CreditsGrant int64  `json:"creditsGranted"`
			}
		}
		if err := json.Unmarshal(ev.Payload, &body); err != nil || body.Type != "credits.exhausted" || body.Data.Period != now.Format("2006-01") || ev.Delivers != 1 {
			t.Fatalf("event %s, %d deliveries (%v)", ev.Payload, ev.Delivers, err)
		}
		data[body.Data.KeyID] = fmt.Sprintf("%d/%d", body.Data.CreditsUsed, body.Data.CreditsGrant)
	}
	// The key with usage: the ledger's 30 of 100 when the news came first;
	// the key the ledger had nothing of: 0 of its monthly grant.
	if len(events) != 2 || data[used] != "30/100" || data[fresh] != "0/100" {
		t.Fatalf("credits.exhausted events %v, want one per key: used 30/100, fresh 0/100", data)
	}
	if n := e.Count(`SELECT count(*) FROM api_gateway.credit_ledger WHERE endpoint = $1`, usagev1.ExhaustedEndpoint); n != 0 {
		t.Fatalf("%d ledger rows of the news", n)
	}
	if b := e.balances()[used+"/"+now.Format("2006-01")+"-01"]; b != (balance{Granted: 100, Used: 35, Requests: 2}) {
		t.Fatalf("balance %+v, want 35 used by 2 requests of 100", b)
	}
	if _, ok := e.balances()[fresh+"/"+now.Format("2006-01")+"-01"]; ok {
		t.Fatal("the news of a refusal made a balance")
	}
}

// waitHealthy polls a worker's /health until it answers 200.
func waitHealthy(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker on :%d never became healthy (%v)", port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
