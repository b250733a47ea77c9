package delivery_test

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/billing-worker/internal/delivery"
	"github.com/mana/apigw/proto/webhook"
	"github.com/mana/apigw/services/testenv"
)

// receiver is a webhook endpoint that checks every request the way a
// receiver following the Standard Webhooks specification would, with its
// own HMAC code, and answers the statuses it is given in turn (then 200).
type receiver struct {
	t       *testing.T
	secret  string
	mu      sync.Mutex
	answers []int
	got     []received
	srv     *httptest.Server
}

type received struct {
	id, signature string
	ts            int64
	body          []byte
	valid         bool
}

func newReceiver(t *testing.T, secret string, answers ...int) *receiver {
	r := &receiver{t: t, secret: secret, answers: answers}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	id, tsText, sigs := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature")
	ts, _ := strconv.ParseInt(tsText, 10, 64)
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(r.secret, "whsec_"))
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + tsText + "." + string(body)))
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	valid := false
	for _, s := range strings.Fields(sigs) {
		valid = valid || hmac.Equal([]byte(s), []byte(want))
	}
	valid = valid && req.Method == http.MethodPost && req.Header.Get("Content-Type") == "application/json" &&
		time.Since(time.Unix(ts, 0)).Abs() < 5*time.Minute
	r.mu.Lock()
	r.got = append(r.got, received{id: id, signature: sigs, ts: ts, body: body, valid: valid})
	code := http.StatusOK
	if len(r.answers) > 0 {
		code, r.answers = r.answers[0], r.answers[1:]
	}
	r.mu.Unlock()
	if !valid {
		code = http.StatusUnauthorized
	}
	w.WriteHeader(code)
}

func (r *receiver) received() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// env is one test's servers: a fresh migrated database and an embedded
// nats-server, with the series of the webhook path.
type env struct {
	t       *testing.T
	db      *sqlx.DB
	nats    *testenv.NATS
	js      jetstream.JetStream
	reg     *prometheus.Registry
	metrics *delivery.Metrics
}

func newEnv(t *testing.T) *env {
	db, err := sqlx.Open("postgres", testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	reg := prometheus.NewRegistry()
	m, err := delivery.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	n := testenv.StartNATS(t)
	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, nats: n, js: js, reg: reg, metrics: m}
}

// endpoint registers url for owner and returns its id and secret.
func (e *env) endpoint(owner, url string) (string, string) {
	id, secret := uuid.NewString(), webhook.NewSecret()
	if _, err := e.db.Exec(`INSERT INTO api_gateway.webhook_endpoints (id, owner_id, url, secret) VALUES ($1, $2, $3, $4)`,
		id, owner, url, secret); err != nil {
		e.t.Fatal(err)
	}
	return id, secret
}

func (e *env) enqueue(owner string) string {
	id := webhook.NewID()
	if err := webhook.Enqueue(e.t.Context(), e.db, webhook.Event{ID: id, OwnerID: owner, Type: webhook.KeyCreated,
		Data: map[string]any{"keyId": "k1"}}); err != nil {
		e.t.Fatal(err)
	}
	return id
}

// start runs the whole path: the relay from the outbox to the stream, the
// fan-out from the stream to the deliveries, and the sender.
func (e *env) start(cfg delivery.Config) {
	e.t.Helper()
	w, err := delivery.New(cfg, e.db, e.metrics, testenv.Logger(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	testenv.Background(e.t, "delivery", w.Run)
	e.startRelay(cfg)
	f, err := delivery.NewFanOut(cfg, e.db, e.js, e.metrics, testenv.Logger(e.t), w.Wake)
	if err != nil {
		e.t.Fatal(err)
	}
	testenv.Background(e.t, "fan-out", f.Run)
}

func (e *env) relay(cfg delivery.Config) *delivery.Relay {
	e.t.Helper()
	r, err := delivery.NewRelay(cfg, e.db, e.js, e.metrics, testenv.Logger(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) startRelay(cfg delivery.Config) { testenv.Background(e.t, "relay", e.relay(cfg).Run) }

type row struct {
	Status   string  `db:"status"`
	Attempts int     `db:"attempts"`
	Code     *int    `db:"last_status_code"`
	Err      *string `db:"last_error"`
}

// waitFor polls the delivery until cond holds.
func (e *env) waitFor(endpoint, event string, cond func(row) bool) row {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var r row
		err := e.db.Get(&r, `SELECT status, attempts, last_status_code, last_error FROM api_gateway.webhook_deliveries
			WHERE endpoint_id = $1 AND event_id = $2`, endpoint, event)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			e.t.Fatal(err)
		}
		if err == nil && cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("delivery never got there: %+v", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var fast = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond}

func allowLoopback(t *testing.T) delivery.AllowList {
	a, err := delivery.ParseAllowList("127.0.0.1, localhost")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestRetriesUntilTheReceiverAccepts: a receiver that answers 500 three
// times and then 200 gets four signed requests under one webhook-id.
func TestRetriesUntilTheReceiverAccepts(t *testing.T) {
	e := newEnv(t)
	ep, secret := e.endpoint("alice", "")
	rcv := newReceiver(t, secret, 500, 500, 500)
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2 WHERE id = $1`, ep, rcv.srv.URL+"/hook")
	ev := e.enqueue("alice")
	e.start(delivery.Config{AllowHosts: allowLoopback(t), Backoff: fast, Poll: 20 * time.Millisecond})

	r := e.waitFor(ep, ev, func(r row) bool { return r.Status == "succeeded" })
	if r.Attempts != 4 || r.Code == nil || *r.Code != 200 {
		t.Fatalf("delivery %+v", r)
	}
	got := rcv.received()
	if len(got) != 4 {
		t.Fatalf("%d requests, want 4", len(got))
	}
	for i, g := range got {
		if !g.valid || g.id != ev {
			t.Fatalf("request %d: id %q (want %q), signature valid %v", i, g.id, ev, g.valid)
		}
	}
	var body struct {
		Type      string
		Timestamp time.Time
		Data      map[string]any
	}
	if err := json.Unmarshal(got[3].body, &body); err != nil || body.Type != webhook.KeyCreated || body.Data["keyId"] != "k1" || body.Timestamp.IsZero() {
		t.Fatalf("body %s (%v)", got[3].body, err)
	}
	var endpointFailing *time.Time
	if err := e.db.Get(&endpointFailing, `SELECT failing_since FROM api_gateway.webhook_endpoints WHERE id = $1`, ep); err != nil || endpointFailing != nil {
		t.Fatalf("failing_since %v after a success (%v)", endpointFailing, err)
	}
	if n := value(t, e.reg, "webhook_deliveries_total", "retry"); n != 3 {
		t.Fatalf("%v retries counted", n)
	}
}

// TestGivesUpAfterTheLastAttempt: len(Backoff)+1 attempts, then failed.
func TestGivesUpAfterTheLastAttempt(t *testing.T) {
	e := newEnv(t)
	ep, secret := e.endpoint("alice", "")
	rcv := newReceiver(t, secret, 503, 503, 503, 503, 503)
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2 WHERE id = $1`, ep, rcv.srv.URL)
	ev := e.enqueue("alice")
	e.start(delivery.Config{AllowHosts: allowLoopback(t), Backoff: fast[:2], Poll: 20 * time.Millisecond})
	r := e.waitFor(ep, ev, func(r row) bool { return r.Status == "failed" })
	if r.Attempts != 3 || r.Code == nil || *r.Code != 503 || len(rcv.received()) != 3 {
		t.Fatalf("delivery %+v after %d requests", r, len(rcv.received()))
	}
}

// TestDisablesAnEndpointFailingForDays: a failure of an endpoint whose
// failures started longer ago than DisableAfter disables it and gives up
// its pending deliveries.
func TestDisablesAnEndpointFailingForDays(t *testing.T) {
	e := newEnv(t)
	ep, secret := e.endpoint("alice", "")
	rcv := newReceiver(t, secret, 500, 500)
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2, failing_since = now() - interval '6 days' WHERE id = $1`, ep, rcv.srv.URL)
	first, second := e.enqueue("alice"), e.enqueue("alice")
	// The second one's delivery is made already and due in an hour; the
	// fan-out leaves it so.
	if _, err := webhook.FanOut(t.Context(), e.db, []string{second}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	e.start(delivery.Config{AllowHosts: allowLoopback(t), Backoff: fast, Poll: 20 * time.Millisecond})
	e.waitFor(ep, first, func(r row) bool { return r.Status == "failed" })
	var st struct {
		DisabledAt *time.Time `db:"disabled_at"`
		Reason     *string    `db:"disabled_reason"`
	}
	if err := e.db.Get(&st, `SELECT disabled_at, disabled_reason FROM api_gateway.webhook_endpoints WHERE id = $1`, ep); err != nil {
		t.Fatal(err)
	}
	if st.DisabledAt == nil || st.Reason == nil || !strings.Contains(*st.Reason, "failed since") {
		t.Fatalf("endpoint %+v", st)
	}
	if r := e.waitFor(ep, second, func(row) bool { return true }); r.Status != "failed" || r.Attempts != 0 {
		t.Fatalf("the other delivery of a disabled endpoint: %+v", r)
	}
	if n := value(t, e.reg, "webhook_endpoints_disabled_total", ""); n != 1 {
		t.Fatalf("disabled counter %v", n)
	}
}

// TestRefusesPrivateAddresses: without an allow-list entry, loopback is not
// dialled, neither directly nor as the target of a redirect from an
// allowed host.
func TestRefusesPrivateAddresses(t *testing.T) {
	e := newEnv(t)
	ep, secret := e.endpoint("alice", "")
	rcv := newReceiver(t, secret)
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2 WHERE id = $1`, ep, rcv.srv.URL)
	direct := e.enqueue("alice")

	// localhost is allowed, and redirects to 127.0.0.1, which is not.
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, rcv.srv.URL+"/hook", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	ep2, _ := e.endpoint("bob", strings.Replace(redirector.URL, "127.0.0.1", "localhost", 1))
	redirected := e.enqueue("bob")

	allow, err := delivery.ParseAllowList("localhost")
	if err != nil {
		t.Fatal(err)
	}
	e.start(delivery.Config{AllowHosts: allow, Backoff: fast[:1], Poll: 20 * time.Millisecond})
	for _, c := range []struct{ ep, ev string }{{ep, direct}, {ep2, redirected}} {
		r := e.waitFor(c.ep, c.ev, func(r row) bool { return r.Status == "failed" })
		if r.Err == nil || !strings.Contains(*r.Err, "not public") || r.Code != nil {
			t.Fatalf("delivery %+v", r)
		}
	}
	if n := len(rcv.received()); n != 0 {
		t.Fatalf("the private receiver got %d requests", n)
	}
}

// TestRedirectsThatDropTheBodyFail: after a 301, 302 or 303 a client sends
// a bodiless GET; such an answer is a failure with its status, never a
// delivery, and the target is not called.
func TestRedirectsThatDropTheBodyFail(t *testing.T) {
	e := newEnv(t)
	ep, secret := e.endpoint("alice", "")
	rcv := newReceiver(t, secret)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, rcv.srv.URL+"/hook", http.StatusMovedPermanently)
	}))
	t.Cleanup(redirector.Close)
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2 WHERE id = $1`, ep, redirector.URL)
	ev := e.enqueue("alice")
	e.start(delivery.Config{AllowHosts: allowLoopback(t), Backoff: fast[:1], Poll: 20 * time.Millisecond})
	r := e.waitFor(ep, ev, func(r row) bool { return r.Status == "failed" })
	if r.Attempts != 2 || r.Code == nil || *r.Code != 301 || r.Err == nil || !strings.Contains(*r.Err, "not followed") {
		t.Fatalf("delivery %+v", r)
	}
	if n := len(rcv.received()); n != 0 {
		t.Fatalf("the redirect's target got %d requests", n)
	}
}

// TestAReceiversBytesAreStoredAsText: a reason phrase that is not UTF-8
// (which PostgreSQL refuses to store) does not keep a delivery pending
// forever: each attempt is recorded, and it fails after the last one.
func TestAReceiversBytesAreStoredAsText(t *testing.T) {
	e := newEnv(t)
	ep, _ := e.endpoint("alice", "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = bufio.NewReader(c).ReadString('\n')
				_, _ = c.Write([]byte("HTTP/1.1 500 \xff\xfe\x00bad\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	e.exec(`UPDATE api_gateway.webhook_endpoints SET url = $2 WHERE id = $1`, ep, "http://"+l.Addr().String()+"/hook")
	ev := e.enqueue("alice")
	e.start(delivery.Config{AllowHosts: allowLoopback(t), Backoff: fast[:2], Poll: 20 * time.Millisecond})
	r := e.waitFor(ep, ev, func(r row) bool { return r.Status == "failed" })
	if r.Attempts != 3 || r.Code == nil || *r.Code != 500 || r.Err == nil || !utf8.ValidString(*r.Err) {
		t.Fatalf("delivery %+v", r)
	}
}

func TestBlocked(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "172.16.0.1": true, "192.168.1.1": true, "169.254.169.254": true,
		"100.64.0.1": true, "0.0.0.0": true, "::1": true, "::ffff:127.0.0.1": true, "::ffff:10.0.0.1": true,
		"fd00:ec2::254": true, "fe80::1": true, "224.0.0.1": true, "::": true,
		"fec0::1": true, "::127.0.0.1": true, "::a9fe:a9fe": true, "::ffff:0:7f00:1": true, "2002:a00:1::1": true,
		"8.8.8.8": false, "1.1.1.1": false, "2606:4700:4700::1111": false,
	} {
		if got := delivery.Blocked(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Blocked(%s) = %v, want %v", addr, got, want)
		}
	}
	if _, err := delivery.ParseAllowList("http://localhost:8080"); err == nil {
		t.Error("a URL was accepted as an allowed host")
	}
}

func (e *env) exec(q string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(q, args...); err != nil {
		e.t.Fatal(err)
	}
}

// value is the counter name (with outcome, if given) as reg gathers it.
func value(t *testing.T, reg *prometheus.Registry, name, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if outcome == "" || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == outcome) {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no series %s %s", name, outcome)
	return 0
}
