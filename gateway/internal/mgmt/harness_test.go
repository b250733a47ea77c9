package mgmt

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	_ "github.com/lib/pq"

	"github.com/mana/apigw/gateway/internal/auth"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/problem"
	"github.com/mana/apigw/services/testenv"
)

// tiers is the contract's tier table.
type tiers map[string]struct {
	rpm     int
	credits int64
}

func (t tiers) Tier(name string) (int, int64, bool) {
	v, ok := t[name]
	return v.rpm, v.credits, ok
}

var contractTiers = tiers{"free": {10, 100}, "pro": {100, 5000}, "enterprise": {1000, 50000}}

// testCatalog is what GET /tiers answers in these tests.
var testCatalog = []TierInfo{{Name: "free", RateLimitPerMinute: 10, MonthlyCredits: 100, Endpoints: []EndpointInfo{
	{Method: "POST", Path: "/v1/search", Operation: "search", Unit: "request", Credits: 1, Per: 1}}}}

// recordingState is a KeyState that records every synced state and fails
// while fail is set.
type recordingState struct {
	mu    sync.Mutex
	calls []keys.Key
	fail  bool
}

func (s *recordingState) Sync(_ context.Context, k *keys.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("redis unavailable")
	}
	s.calls = append(s.calls, *k)
	return nil
}

func (s *recordingState) setFail(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = v
}

// snapshot returns the synced states so far.
func (s *recordingState) snapshot() []keys.Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]keys.Key(nil), s.calls...)
}

type env struct {
	t      *testing.T
	e      *echo.Echo
	db     *sqlx.DB
	store  *keys.Store
	hasher keys.Hasher
	state  *recordingState
	now    time.Time
	signer *rsa.PrivateKey
}

const (
	issuerName = "mana-core-auth"
	audience   = "mana-api-gateway"
)

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, testenv.PostgresURL(t))
}

// newEnvOn is newEnv on the migrated database at dsn.
func newEnvOn(t *testing.T, dsn string) *env {
	t.Helper()
	return newEnvState(t, dsn, nil)
}

// newEnvState is newEnvOn with the key state propagated to state instead
// of the recording one (nil: the recording one).
func newEnvState(t *testing.T, dsn string, state KeyState) *env {
	t.Helper()
	db, err := sqlx.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })

	signer, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(signer.Public(), jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{KID: "k1", ALG: jwkset.AlgRS256, USE: jwkset.UseSig},
	})
	if err != nil {
		t.Fatal(err)
	}
	set := jwkset.NewMemoryStorage()
	if err := set.KeyWrite(context.Background(), jwk); err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := set.JSONPublic(r.Context())
		_, _ = w.Write(raw)
	}))
	t.Cleanup(jwks.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	logger := testenv.Logger(t)
	v, err := auth.NewVerifier(ctx, auth.VerifierConfig{JWKSURL: jwks.URL, Issuer: issuerName, Audience: audience}, logger)
	if err != nil {
		t.Fatal(err)
	}

	en := &env{t: t, db: db, store: keys.NewStore(db), hasher: keys.NewHasher([]byte("test-pepper")),
		state: &recordingState{}, now: time.Date(2026, 3, 15, 12, 0, 0, 0, time.UTC), signer: signer}
	if state == nil {
		state = en.state
	}
	h, err := New(Config{}, Deps{Store: en.store, DB: db, Hasher: en.hasher, Tiers: contractTiers, State: state,
		Now: func() time.Time { return en.now }, Catalog: testCatalog}, logger)
	if err != nil {
		t.Fatal(err)
	}
	en.e = echo.New()
	en.e.HTTPErrorHandler = problem.ErrorHandler(logger)
	h.Register(en.e, auth.Middleware(v))
	return en
}

// token returns a bearer token for sub with role.
func (en *env) token(sub, role string) string {
	en.t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"sub": sub, "role": role, "iss": issuerName, "aud": audience,
		"exp": time.Now().Add(time.Hour).Unix(),
	})
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(en.signer)
	if err != nil {
		en.t.Fatal(err)
	}
	return s
}

type resp struct {
	code   int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// doCT sends a raw body with the given Content-Type as sub.
func (en *env) doCT(sub, method, path string, body any, ctype string) resp {
	en.t.Helper()
	var rd io.Reader
	if b, ok := body.(string); ok {
		rd = strings.NewReader(b)
	}
	req := httptest.NewRequest(method, path, rd)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Authorization", "Bearer "+en.token(sub, ""))
	rec := httptest.NewRecorder()
	en.e.ServeHTTP(rec, req)
	return resp{code: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// do sends method path as sub (role) with body (a string is sent as is,
// anything else as JSON) and returns the answer.
func (en *env) do(sub, role, method, path string, body any) resp {
	en.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			en.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req := httptest.NewRequest(method, path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if sub != "" {
		req.Header.Set("Authorization", "Bearer "+en.token(sub, role))
	}
	rec := httptest.NewRecorder()
	en.e.ServeHTTP(rec, req)
	return resp{code: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// create makes a key for sub and returns the answer's key object.
func (en *env) create(sub string, body map[string]any) keyView {
	en.t.Helper()
	r := en.do(sub, "", http.MethodPost, "/api-keys", body)
	if r.code != http.StatusCreated {
		en.t.Fatalf("create: %d %s", r.code, r.body)
	}
	var v keyView
	r.json(en.t, &v)
	return v
}

// wantProblem checks that r is a problem+json with status code.
func wantProblem(t *testing.T, r resp, code int) problem.Problem {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d: %s", r.code, code, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != problem.ContentType {
		t.Fatalf("content type %q for %d %s", ct, r.code, r.body)
	}
	var p problem.Problem
	r.json(t, &p)
	if p.Status != code || p.Title == "" || p.Detail == "" || p.Type == "" {
		t.Fatalf("problem %+v", p)
	}
	return p
}

func (en *env) exec(q string, args ...any) {
	en.t.Helper()
	if _, err := en.db.Exec(q, args...); err != nil {
		en.t.Fatal(err)
	}
}
