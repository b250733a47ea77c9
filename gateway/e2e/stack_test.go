package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mana/apigw/services/authdev"
	"github.com/mana/apigw/services/search"
	"github.com/mana/apigw/services/testenv"
)

// stack is the whole system for one test.
type stack struct {
	t        *testing.T
	dsn      string
	db       *sqlx.DB
	redis    *testenv.Redis
	nats     *testenv.NATS
	js       jetstream.JetStream
	authURL  string
	backends map[string]string
	gateways []*testenv.Process
	gwURLs   []string
	billing  *testenv.Process
	agg      *testenv.Process
	bins     map[string]string
	http     testenv.HTTP
}

var binCache = map[string]string{}

func bin(t *testing.T, pkg string) string {
	if b, ok := binCache[pkg]; ok {
		return b
	}
	b := testenv.BuildBinary(t, pkg)
	binCache[pkg] = b
	return b
}

type stackOpts struct {
	gateways int
	extraEnv []string
}

func newStack(t *testing.T, o stackOpts) *stack {
	t.Helper()
	if o.gateways == 0 {
		o.gateways = 1
	}
	s := &stack{t: t, backends: map[string]string{}}
	s.dsn = testenv.PostgresURL(t)
	db, err := sqlx.Open("postgres", s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s.db = db
	s.redis = testenv.StartRedis(t)
	s.nats = testenv.StartNATS(t)
	nc, err := nats.Connect(s.nats.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s.js, _ = jetstream.New(nc)

	logger := testenv.Logger(t)
	ah, err := authdev.New(authdev.Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	as := httptest.NewServer(ah)
	t.Cleanup(as.Close)
	s.authURL = as.URL
	sh, err := search.New(search.Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	ss := httptest.NewServer(sh)
	t.Cleanup(ss.Close)
	s.backends["search"] = ss.URL
	for _, name := range []string{"stt", "tts"} {
		if _, ok := s.backends[name]; !ok {
			s.backends[name] = standIn(t, name)
		}
	}

	host, port, _ := net.SplitHostPort(s.redis.Addr)
	common := []string{
		"DATABASE_URL=" + s.dsn, "REDIS_HOST=" + host, "REDIS_PORT=" + port, "NATS_URL=" + s.nats.URL,
		"LOG_LEVEL=info",
	}
	for i := 0; i < o.gateways; i++ {
		p := testenv.FreePort(t)
		env := append(append([]string{}, common...),
			"PORT="+strconv.Itoa(p), "MANA_CORE_AUTH_URL="+s.authURL,
			"SEARCH_SERVICE_URL="+s.backends["search"], "STT_SERVICE_URL="+s.backends["stt"], "TTS_SERVICE_URL="+s.backends["tts"],
			"SPOOL_DIR="+t.TempDir(), "GATEWAY_ID=gw"+strconv.Itoa(i), "API_KEY_PEPPER=e2e-pepper-0123456789")
		env = append(env, o.extraEnv...)
		u := fmt.Sprintf("http://127.0.0.1:%d", p)
		s.gateways = append(s.gateways, testenv.StartProcess(t, "gateway"+strconv.Itoa(i), bin(t, "./gateway/cmd/gateway"), env, u+"/ready"))
		s.gwURLs = append(s.gwURLs, u)
	}
	bp := testenv.FreePort(t)
	s.billing = testenv.StartProcess(t, "billing-worker", bin(t, "./billing-worker/cmd/billing-worker"),
		append(append([]string{}, common...), "METRICS_PORT="+strconv.Itoa(bp)), fmt.Sprintf("http://127.0.0.1:%d/health", bp))
	ap := testenv.FreePort(t)
	s.agg = testenv.StartProcess(t, "aggregator", bin(t, "./aggregator/cmd/aggregator"),
		append(append([]string{}, common...), "METRICS_PORT="+strconv.Itoa(ap)), fmt.Sprintf("http://127.0.0.1:%d/health", ap))
	return s
}

// standIn is a minimal backend for the services this test does not look at.
func standIn(t *testing.T, name string) string {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"service":%q,"durationSeconds":1}`, name)
	}))
	t.Cleanup(s.Close)
	return s.URL
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
	deadline := time.Now().Add(20 * time.Second)
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
