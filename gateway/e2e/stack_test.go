package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/mana/apigw/gateway/internal/pricing"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/authdev"
	"github.com/mana/apigw/services/search"
	"github.com/mana/apigw/services/stt"
	"github.com/mana/apigw/services/testenv"
	"github.com/mana/apigw/services/tts"
)

// stack is the whole system for one test.
type stack struct {
	t     *testing.T
	dsn   string
	pg    *testenv.Postgres // with stackOpts.ownPostgres
	db    *sqlx.DB
	redis *testenv.Redis
	nats  *testenv.NATS
	// With stackOpts.cluster: a Redis Cluster and a JetStream cluster
	// instead of redis and nats.
	redisCluster *testenv.RedisCluster
	natsCluster  *testenv.NATSCluster
	rdb          redis.UniversalClient
	// serverEnv is the binaries' Redis and NATS settings.
	serverEnv []string
	js        jetstream.JetStream
	authURL   string
	backends  map[string]string
	hits      *backendHits
	gateways  []*testenv.Process
	gwURLs    []string
	spools    []string
	// pricingFile is the PRICING_FILE the gateways load, with stackOpts.pricing.
	pricingFile string
	billing     *testenv.Process
	agg         *testenv.Process
	// pgCount, with stackOpts.countPostgres, counts the statements the
	// gateways send to Postgres.
	pgCount *testenv.PostgresCounter
	// The workers' metrics addresses (/metrics, /health).
	billingURL, aggURL string
	http               testenv.HTTP
}

var (
	binMu    sync.Mutex
	binDir   string
	binCache = map[string]string{}
)

// TestMain keeps the binaries built once for all tests of the package.
// It is also the flood client of TestInventedKeyFlood, as a process of
// its own (floodEnv).
func TestMain(m *testing.M) {
	if os.Getenv(floodEnv) != "" {
		os.Exit(floodProcess())
	}
	d, err := os.MkdirTemp("", "e2e-bin-")
	if err != nil {
		panic(err)
	}
	binDir = d
	code := m.Run()
	_ = os.RemoveAll(d)
	os.Exit(code)
}

func bin(t *testing.T, pkg string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if b, ok := binCache[pkg]; ok {
		return b
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	args := []string{"build", "-o", out}
	if os.Getenv("TEST_BUILD_RACE") != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = testenv.RepoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	binCache[pkg] = out
	return out
}

type stackOpts struct {
	gateways int
	extraEnv []string
	// pricing, when set, is written to a file the gateways load (PRICING_FILE).
	pricing   string
	noWorkers bool
	// ownPostgres runs the stack on a PostgreSQL server of its own (s.pg),
	// which the test may stop, instead of a database in the shared cluster.
	ownPostgres bool
	// cluster runs the stack on a Redis Cluster of three masters with a
	// replica each and a three-node JetStream cluster with the stream at R3.
	cluster bool
	// countPostgres puts the gateways' DATABASE_URL through a proxy that
	// counts their statements (s.pgCount); the workers connect directly.
	countPostgres bool
	// backend, when set, wraps each stand-in backend's handler (by name:
	// search, stt, tts), e.g. to delay its answers.
	backend func(name string, h http.Handler) http.Handler
}

func newStack(t *testing.T, o stackOpts) *stack {
	t.Helper()
	if o.gateways == 0 {
		o.gateways = 1
	}
	s := &stack{t: t, backends: map[string]string{}, hits: &backendHits{n: map[string]int64{}}}
	if o.ownPostgres {
		s.pg = testenv.StartPostgres(t)
		s.dsn = s.pg.URL()
	} else {
		s.dsn = testenv.PostgresURL(t)
	}
	db, err := sqlx.Open("postgres", s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s.db = db
	natsURL := ""
	if o.cluster {
		s.redisCluster = testenv.StartRedisCluster(t, 3, 1)
		s.natsCluster = testenv.StartNATSCluster(t, 3)
		s.rdb = s.redisCluster.Client()
		natsURL = s.natsCluster.URL
		s.serverEnv = []string{"REDIS_ADDRS=" + strings.Join(s.redisCluster.Addrs, ","), "NATS_URL=" + natsURL, "USAGE_STREAM_REPLICAS=3"}
	} else {
		s.redis = testenv.StartRedis(t)
		s.nats = testenv.StartNATS(t)
		s.rdb = s.redis.Client()
		natsURL = s.nats.URL
		host, port, _ := net.SplitHostPort(s.redis.Addr)
		s.serverEnv = []string{"REDIS_HOST=" + host, "REDIS_PORT=" + port, "NATS_URL=" + natsURL}
	}
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if s.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}

	logger := testenv.Logger(t)
	ah, err := authdev.New(authdev.Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	as := httptest.NewServer(ah)
	t.Cleanup(as.Close)
	s.authURL = as.URL
	// The search stand-in may extract its own pages (and nothing else local).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sh, err := search.New(search.Config{PublicURL: "http://" + l.Addr().String(), ExtractAllowHosts: []string{l.Addr().String()}}, logger)
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(_ string, h http.Handler) http.Handler { return h }
	if o.backend != nil {
		wrap = o.backend
	}
	ss := httptest.NewUnstartedServer(s.hits.count("search", wrap("search", sh)))
	ss.Listener = l
	ss.Start()
	t.Cleanup(ss.Close)
	s.backends["search"] = ss.URL
	sttH, err := stt.New(stt.Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	ttsH, err := tts.New(tts.Config{Engine: tts.EngineTone}, logger)
	if err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string]http.Handler{"stt": sttH, "tts": ttsH} {
		srv := httptest.NewServer(s.hits.count(name, wrap(name, h)))
		t.Cleanup(srv.Close)
		s.backends[name] = srv.URL
	}

	if o.pricing != "" {
		f := filepath.Join(t.TempDir(), "pricing.yaml")
		if err := os.WriteFile(f, []byte(o.pricing), 0o600); err != nil {
			t.Fatal(err)
		}
		o.extraEnv = append(o.extraEnv, "PRICING_FILE="+f)
		s.pricingFile = f
	}
	gwDSN := s.dsn
	if o.countPostgres {
		s.pgCount = testenv.CountingPostgres(t, s.dsn)
		gwDSN = s.pgCount.URL()
	}
	common := append([]string{"DATABASE_URL=" + gwDSN, "LOG_LEVEL=info"}, s.serverEnv...)
	gwBin := bin(t, "./gateway/cmd/gateway")
	for i := 0; i < o.gateways; i++ {
		spool := t.TempDir()
		s.spools = append(s.spools, spool)
		env := func(port int) []string {
			env := append(append([]string{}, common...),
				"PORT="+strconv.Itoa(port), "MANA_CORE_AUTH_URL="+s.authURL,
				"SEARCH_SERVICE_URL="+s.backends["search"], "STT_SERVICE_URL="+s.backends["stt"], "TTS_SERVICE_URL="+s.backends["tts"],
				"SPOOL_DIR="+spool, "GATEWAY_ID=gw"+strconv.Itoa(i), "API_KEY_PEPPER=e2e-pepper-0123456789")
			return append(env, o.extraEnv...)
		}
		p, port := testenv.StartProcessOnPort(t, "gateway"+strconv.Itoa(i), gwBin, env, "/ready")
		s.gateways = append(s.gateways, p)
		s.gwURLs = append(s.gwURLs, fmt.Sprintf("http://127.0.0.1:%d", port))
	}
	if o.noWorkers {
		return s
	}
	s.startWorkers()
	return s
}

// backendHits counts the requests each stand-in received, by backend,
// method and path ("search POST /extract/bulk"), as they arrive.
type backendHits struct {
	mu sync.Mutex
	n  map[string]int64
}

func (h *backendHits) count(backend string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.n[backend+" "+r.Method+" "+r.URL.Path]++
		h.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// of is the number of requests the backend received on method and path.
func (h *backendHits) of(backend, method, path string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[backend+" "+method+" "+path]
}

func (s *stack) startWorkers() {
	t := s.t
	common := append([]string{"DATABASE_URL=" + s.dsn, "LOG_LEVEL=info"}, s.serverEnv...)
	env := func(port int) []string {
		return append(append([]string{}, common...), "METRICS_PORT="+strconv.Itoa(port))
	}
	billingBin, aggBin := bin(t, "./billing-worker/cmd/billing-worker"), bin(t, "./aggregator/cmd/aggregator")
	var bp, ap int
	s.billing, bp = testenv.StartProcessOnPort(t, "billing-worker", billingBin, env, "/health")
	s.billingURL = fmt.Sprintf("http://127.0.0.1:%d", bp)
	s.agg, ap = testenv.StartProcessOnPort(t, "aggregator", aggBin, env, "/health")
	s.aggURL = fmt.Sprintf("http://127.0.0.1:%d", ap)
}

func (s *stack) do(method, url string, body any, hdr map[string]string) (*http.Response, []byte) {
	s.t.Helper()
	var b []byte
	switch v := body.(type) {
	case nil:
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			s.t.Fatal(err)
		}
	}
	if hdr == nil {
		hdr = map[string]string{}
	}
	if b != nil && hdr["Content-Type"] == "" {
		hdr["Content-Type"] = "application/json"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, rb, err := s.http.Do(ctx, method, url, b, hdr)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp, rb
}

// login returns a bearer token of a dev user from the dev auth issuer.
func (s *stack) login(email string) string {
	s.t.Helper()
	resp, b := s.do("POST", s.authURL+"/api/v1/auth/login", map[string]string{"email": email, "password": "password"}, nil)
	if resp.StatusCode != 200 {
		s.t.Fatalf("login %s: %d %s", email, resp.StatusCode, b)
	}
	var out struct {
		AccessToken string `json:"accessToken"`
		TokenType   string `json:"tokenType"`
		ExpiresIn   int    `json:"expiresIn"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.AccessToken == "" || out.TokenType != "Bearer" || out.ExpiresIn <= 0 {
		s.t.Fatalf("login answer %s", b)
	}
	return out.AccessToken
}

type keyObject struct {
	ID                 string     `json:"id"`
	Name               string     `json:"name"`
	KeyPrefix          string     `json:"keyPrefix"`
	Tier               string     `json:"tier"`
	Active             bool       `json:"active"`
	RateLimitPerMinute int        `json:"rateLimitPerMinute"`
	MonthlyCredits     int64      `json:"monthlyCredits"`
	CreditsRemaining   int64      `json:"creditsRemaining"`
	CreatedAt          time.Time  `json:"createdAt"`
	ExpiresAt          *time.Time `json:"expiresAt"`
	LastUsedAt         *time.Time `json:"lastUsedAt"`
	Key                string     `json:"key"`
}

func (s *stack) createKey(gw, token string, body map[string]any) keyObject {
	s.t.Helper()
	resp, b := s.do("POST", gw+"/api-keys", body, map[string]string{"Authorization": "Bearer " + token})
	if resp.StatusCode != 201 {
		s.t.Fatalf("create key: %d %s", resp.StatusCode, b)
	}
	var k keyObject
	if err := json.Unmarshal(b, &k); err != nil {
		s.t.Fatal(err)
	}
	return k
}

// eventually polls cond until it holds or 20 s pass.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	eventuallyWithin(t, 20*time.Second, what, cond)
}

// eventuallyWithin polls cond until it holds or d passes.
func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never happened (last: %s)", what, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testPricing is the shipped price list plus tiers sized for tests.
var testPricing = string(pricing.WithTiers(
	`load: {rateLimitPerMinute: 1000000, monthlyCredits: 1000, endpoints: ["*"]}`,
	`burst: {rateLimitPerMinute: 20, monthlyCredits: 100000, endpoints: ["*"]}`,
	`soak: {rateLimitPerMinute: 1000000, monthlyCredits: 1000000, endpoints: ["*"]}`,
))

// ledger returns the key's ledger rows and their credit sum.
func (s *stack) ledger(keyID string) (rows, credits int64) {
	s.t.Helper()
	if err := s.db.QueryRowx(`SELECT count(*), COALESCE(sum(credits),0) FROM api_gateway.credit_ledger WHERE key_id = $1`, keyID).Scan(&rows, &credits); err != nil {
		s.t.Fatal(err)
	}
	return rows, credits
}

// balances returns the key's balance in Postgres (granted − used) and in Redis.
func (s *stack) balances(keyID string, grant int64) (pg, rd int64) {
	s.t.Helper()
	var used int64
	err := s.db.QueryRowx(`SELECT COALESCE((SELECT used FROM api_gateway.credit_balances WHERE key_id = $1 AND period = date_trunc('month', now() AT TIME ZONE 'UTC')::date), 0)`, keyID).Scan(&used)
	if err != nil {
		s.t.Fatal(err)
	}
	v, err := s.rdb.HGet(context.Background(), "gw:{"+keyID+"}:s", "bal").Int64()
	if err != nil {
		s.t.Fatalf("redis balance: %v", err)
	}
	return grant - used, v
}

// eachEvent reads the whole stream as it is now, every batch, and calls fn
// with each event.
func (s *stack) eachEvent(timeout time.Duration, fn func(*usagev1.UsageEvent)) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rd, err := usagev1.NewReader(ctx, s.js, usagev1.ReaderConfig{UpToLast: true, Buffer: 500})
	if err != nil {
		s.t.Fatal(err)
	}
	defer rd.Stop()
	for {
		m, _, err := rd.Next(ctx)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			s.t.Fatalf("reading the stream: %v", err)
		}
		dm, err := usagev1.DecodeMessage(m.Subject(), m.Data())
		if err != nil {
			s.t.Fatalf("stream message %s: %v", m.Subject(), err)
		}
		for _, ev := range dm.Events {
			fn(ev)
		}
	}
}

// countEvents reads the whole stream and counts the events match accepts.
func (s *stack) countEvents(match func(*usagev1.UsageEvent) bool) int {
	s.t.Helper()
	n := 0
	s.eachEvent(30*time.Second, func(ev *usagev1.UsageEvent) {
		if match(ev) {
			n++
		}
	})
	return n
}

// eventsOf counts the usage events of a key on the stream.
func (s *stack) eventsOf(keyID string) int {
	s.t.Helper()
	return s.countEvents(func(ev *usagev1.UsageEvent) bool { return ev.GetKeyId() == keyID })
}
