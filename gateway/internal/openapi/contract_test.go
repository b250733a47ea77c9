package openapi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mana/apigw/gateway/internal/auth"
	"github.com/mana/apigw/gateway/internal/dashboard"
	"github.com/mana/apigw/gateway/internal/holds"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/mgmt"
	"github.com/mana/apigw/gateway/internal/openapi"
	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/server"
	"github.com/mana/apigw/gateway/internal/usage"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/proto/wav"
	"github.com/mana/apigw/services/search"
	"github.com/mana/apigw/services/stt"
	"github.com/mana/apigw/services/testenv"
	"github.com/mana/apigw/services/tts"
)

const (
	issuer   = "mana-core-auth"
	audience = "mana-api-gateway"
)

// gateway is the whole gateway in process, wired as server.NewApp wires it,
// against real Postgres, Redis and NATS and the three stand-in backends.
type gateway struct {
	t         *testing.T
	url       string
	searchURL string
	stt       *httptest.Server
	db        *sqlx.DB
	store     *keys.Store
	hasher    keys.Hasher
	signer    *rsa.PrivateKey
	doc       *openapi3.T
	router    routers.Router
	// seen records every validated exchange as "METHOD /path STATUS".
	seen map[string]int
}

func newGateway(t *testing.T) *gateway {
	t.Helper()
	ctx := t.Context()
	logger := testenv.Logger(t)
	g := &gateway{t: t, seen: map[string]int{}}

	var err error
	g.db, err = sqlx.Open("postgres", testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.db.Close() })
	rdb := testenv.StartRedis(t).Client()
	ns := testenv.StartNATS(t)
	nc, err := nats.Connect(ns.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usagev1.EnsureStream(ctx, js, 0); err != nil {
		t.Fatal(err)
	}
	spool, err := usage.OpenSpool(t.TempDir(), 1<<20, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = spool.Close() })
	pub, err := usage.NewPublisher(usage.PublisherConfig{AckTimeout: time.Second, DrainInterval: 100 * time.Millisecond}, nc, js, spool, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pricing.Default()
	if err != nil {
		t.Fatal(err)
	}
	g.store = keys.NewStore(g.db)
	g.hasher = keys.NewHasher([]byte("contract-test-pepper"))
	resolver := keys.NewResolver(keys.ResolverConfig{Size: 1000, TTL: time.Minute, UnknownTTL: time.Second}, g.store, g.hasher)
	q := quota.NewStore(rdb, quota.NewPGLoader(g.db, nil, nil, logger), nil)
	held := holds.NewLedger()

	g.searchURL = startSearch(t)
	g.stt = startHandler(t, func() (http.Handler, error) { return stt.New(stt.Config{}, logger) })
	edge, err := proxy.New(proxy.Config{
		Backends: map[string]*url.URL{
			proxy.BackendSearch: mustURL(t, g.searchURL),
			proxy.BackendSTT:    mustURL(t, g.stt.URL),
			proxy.BackendTTS:    mustURL(t, startHandler(t, func() (http.Handler, error) { return tts.New(tts.Config{Engine: tts.EngineTone}, logger) }).URL),
		},
		GatewayID:      "contract",
		PublishTimeout: 5 * time.Second,
	}, p, resolver, q, pub, proxy.NewLastUsed(g.store, time.Hour, logger), held, logger)
	if err != nil {
		t.Fatal(err)
	}

	verifier := g.startIssuer(ctx, logger)
	h, err := mgmt.New(mgmt.Config{}, mgmt.Deps{Store: g.store, DB: g.db, Hasher: g.hasher, Tiers: p, State: q,
		Catalog: server.TierCatalog(p), Granter: server.NewGranter("contract", q, held, pub, logger)}, logger)
	if err != nil {
		t.Fatal(err)
	}
	checks := []server.Check{
		{Name: "postgres", Probe: func(ctx context.Context) error { return g.db.PingContext(ctx) }},
		{Name: "redis", Probe: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
		{Name: "nats", Probe: func(ctx context.Context) error {
			if !nc.IsConnected() {
				return errors.New("not connected")
			}
			_, err := js.AccountInfo(ctx)
			return err
		}},
	}
	e := server.NewEcho(logger, prometheus.NewRegistry(), checks, false)
	edge.Register(e)
	h.Register(e, auth.Middleware(verifier))
	openapi.Register(e)
	// A stand-in for the built page: the contract is about the headers.
	dash, err := dashboard.New(dashboard.Config{PasswordLoginURL: mustURL(t, "http://127.0.0.1:3001/api/v1/auth/login")}, fstest.MapFS{
		"index.html": {Data: []byte(`<!doctype html><body data-login="{{.PasswordLoginURL}}">`)},
		"app.js":     {Data: []byte("console.log(1)\n")},
		"app.css":    {Data: []byte("body{}\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	dash.Register(e)
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	g.url = srv.URL

	g.doc = loadSpec(t)
	g.doc.Servers = openapi3.Servers{{URL: srv.URL}}
	if g.router, err = gorillamux.NewRouter(g.doc); err != nil {
		t.Fatal(err)
	}
	return g
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func startHandler(t *testing.T, build func() (http.Handler, error)) *httptest.Server {
	t.Helper()
	h, err := build()
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

// startSearch runs the search stand-in with its own pages reachable for
// extraction (its result links point at them).
func startSearch(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	h, err := search.New(search.Config{PublicURL: base, ExtractAllowHosts: []string{ln.Addr().String()}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	s.Start()
	t.Cleanup(s.Close)
	return base
}

// startIssuer serves a JWKS with one RSA key and returns a verifier of it.
func (g *gateway) startIssuer(ctx context.Context, logger *slog.Logger) *auth.Verifier {
	t := g.t
	t.Helper()
	var err error
	if g.signer, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(g.signer.Public(), jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{KID: "k1", ALG: jwkset.AlgRS256, USE: jwkset.UseSig},
	})
	if err != nil {
		t.Fatal(err)
	}
	set := jwkset.NewMemoryStorage()
	if err := set.KeyWrite(ctx, jwk); err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := set.JSONPublic(r.Context())
		_, _ = w.Write(raw)
	}))
	t.Cleanup(jwks.Close)
	v, err := auth.NewVerifier(ctx, auth.VerifierConfig{JWKSURL: jwks.URL, Issuer: issuer, Audience: audience}, logger)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// token is a bearer token of the issuer for sub with role.
func (g *gateway) token(sub, role string) string {
	g.t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"sub": sub, "role": role, "iss": issuer, "aud": audience, "exp": time.Now().Add(time.Hour).Unix(),
	})
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(g.signer)
	if err != nil {
		g.t.Fatal(err)
	}
	return s
}

// call is one request of the contract test.
type call struct {
	method, path string
	body         []byte
	contentType  string
	header       map[string]string
	// validRequest: the request itself must match the document too (false
	// for the calls that send a bad request on purpose).
	validRequest bool
	want         int
}

func jsonCall(method, path string, body any, want int) call {
	c := call{method: method, path: path, want: want, validRequest: true}
	if body != nil {
		if s, ok := body.(string); ok {
			c.body = []byte(s)
		} else {
			b, err := json.Marshal(body)
			if err != nil {
				panic(fmt.Sprintf("test body %#v: %v", body, err))
			}
			c.body = b
		}
		c.contentType = "application/json"
	}
	return c
}

func (c call) with(name, value string) call {
	h := map[string]string{name: value}
	for k, v := range c.header {
		h[k] = v
	}
	c.header = h
	return c
}

func (c call) invalid() call { c.validRequest = false; return c }

func (c call) key(secret string) call { return c.with("X-API-Key", secret) }

func (g *gateway) bearer(c call, sub, role string) call {
	return c.with("Authorization", "Bearer "+g.token(sub, role))
}

func (c call) request(ctx context.Context, base string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, c.method, base+c.path, bytes.NewReader(c.body))
	if err != nil {
		return nil, err
	}
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	return req, nil
}

// authenticate checks that the credential a security scheme names was sent.
func authenticate(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header
	switch s := in.SecurityScheme; {
	case s.Type == "apiKey" && s.In == "header":
		if h.Get(s.Name) == "" {
			return in.NewError(fmt.Errorf("header %s missing", s.Name))
		}
	case s.Type == "http" && s.Scheme == "bearer":
		if !strings.HasPrefix(h.Get("Authorization"), "Bearer ") {
			return in.NewError(errors.New("bearer token missing"))
		}
	default:
		return in.NewError(fmt.Errorf("unexpected scheme %+v", s))
	}
	return nil
}

// validate checks one exchange against the document: the route must be
// documented (else route is nil and reqErr says why), the request must
// match it if validRequest, and the response's status (undocumented
// statuses fail), headers and body must match it.
func validate(ctx context.Context, router routers.Router, req *http.Request, validRequest bool, status int, header http.Header, body []byte) (route *routers.Route, reqErr, respErr error) {
	route, params, err := router.FindRoute(req)
	if err != nil {
		return nil, err, nil
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: authenticate, MultiError: true},
	}
	if validRequest {
		reqErr = openapi3filter.ValidateRequest(ctx, in)
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 status,
		Header:                 header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	out.SetBodyBytes(body)
	return route, reqErr, openapi3filter.ValidateResponse(ctx, out)
}

// do sends c, checks the status, and validates the exchange against the
// document: the route must be documented, the request (if meant to be
// valid) must match it, and the response's status, headers and body must
// match it. It returns the response and its body.
func (g *gateway) do(c call) (*http.Response, []byte) {
	t := g.t
	t.Helper()
	ctx := t.Context()
	req, err := c.request(ctx, g.url)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: read body: %v", c.method, c.path, err)
	}
	if resp.StatusCode != c.want {
		t.Fatalf("%s %s: status %d, want %d: %.500s", c.method, c.path, resp.StatusCode, c.want, body)
	}

	vreq, err := c.request(ctx, g.url) // a fresh body for the validator
	if err != nil {
		t.Fatal(err)
	}
	route, reqErr, respErr := validate(ctx, g.router, vreq, c.validRequest, resp.StatusCode, resp.Header, body)
	if route == nil {
		t.Fatalf("%s %s: not in the document: %v", c.method, c.path, reqErr)
	}
	if reqErr != nil {
		t.Errorf("%s %s: request does not match the document: %v", c.method, c.path, reqErr)
	}
	if respErr != nil {
		t.Errorf("%s %s -> %d: response does not match the document: %v\nheaders: %v\nbody: %.500s",
			c.method, c.path, resp.StatusCode, respErr, resp.Header, body)
	}
	g.seen[fmt.Sprintf("%s %s %d", route.Method, route.Path, resp.StatusCode)]++
	return resp, body
}

// wavUpload is a multipart body with a WAV recording of the given length
// in the field "file".
func wavUpload(t *testing.T, seconds int) (body []byte, contentType string) {
	t.Helper()
	const rate, bytesPerSecond = 16000, 32000
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if err := mw.WriteField("language", "en"); err != nil {
		t.Fatal(err)
	}
	part, err := mw.CreateFormFile("file", "speech.wav")
	if err != nil {
		t.Fatal(err)
	}
	size := uint32(seconds * bytesPerSecond)
	if err := wav.Encode(part, 1, rate, 16, size); err != nil {
		t.Fatal(err)
	}
	if _, err := part.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), mw.FormDataContentType()
}

// storeKey creates a key of tier directly in the store (as an operator
// would) and returns its secret.
func (g *gateway) storeKey(tier string) (string, *keys.Key) {
	g.t.Helper()
	p, _ := pricing.Default()
	secret, err := keys.Generate()
	if err != nil {
		g.t.Fatal(err)
	}
	k := &keys.Key{OwnerID: "owner-2", Name: tier, Prefix: keys.Prefix(secret), Tier: tier, Active: true,
		RateLimitPerMinute: p.Tiers[tier].RateLimitPerMinute, MonthlyCredits: p.Tiers[tier].MonthlyCredits, Hash: g.hasher.Hash(secret)}
	if err := g.store.Create(g.t.Context(), k); err != nil {
		g.t.Fatal(err)
	}
	return secret, k
}

func (g *gateway) exec(q string, args ...any) {
	g.t.Helper()
	if _, err := g.db.ExecContext(g.t.Context(), q, args...); err != nil {
		g.t.Fatal(err)
	}
}

func decode[T any](t *testing.T, body []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode %.300s: %v", body, err)
	}
	return v
}

// servedHeaders are the contract's headers on a /v1 answer served with the
// quota store up: the document allows the last three to be absent only
// while Redis is unreachable, so here they must be present.
var servedHeaders = []string{"X-Request-Id", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
	"X-Credits-Remaining", "RateLimit", "RateLimit-Policy"}

func requireHeaders(t *testing.T, what string, resp *http.Response, names ...string) {
	t.Helper()
	for _, h := range names {
		if resp.Header.Get(h) == "" {
			t.Errorf("%s: header %s missing", what, h)
		}
	}
}

// TestResponsesMatchTheDocument drives real requests through the wired
// gateway (real Postgres, Redis, NATS, stand-in backends) and validates
// every exchange against the document with kin-openapi's openapi3filter:
// status documented for the operation, headers (required ones present,
// all well-formed), body against its schema. Every operation of the
// document must have been exercised with a 2xx at least once.
func TestResponsesMatchTheDocument(t *testing.T) {
	for _, ct := range []string{"audio/wav", "text/html", "text/javascript", "text/css"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.FileBodyDecoder)
		t.Cleanup(func() { openapi3filter.UnregisterBodyDecoder(ct) })
	}
	g := newGateway(t)
	const owner = "user-1"

	// System.
	for _, path := range []string{"/health", "/ready", "/metrics", "/openapi.json", "/openapi.yaml"} {
		g.do(jsonCall(http.MethodGet, path, nil, http.StatusOK))
	}

	// The dashboard's files, and what the page asks about the session.
	g.do(jsonCall(http.MethodGet, "/dashboard", nil, http.StatusOK))
	resp, _ := g.do(jsonCall(http.MethodGet, "/dashboard/app.js", nil, http.StatusOK))
	g.do(jsonCall(http.MethodGet, "/dashboard/app.css", nil, http.StatusOK))
	g.do(jsonCall(http.MethodGet, "/dashboard/app.js", nil, http.StatusNotModified).with("If-None-Match", resp.Header.Get("ETag")))
	g.do(jsonCall(http.MethodGet, "/dashboard/chart.umd.min.js", nil, http.StatusNotFound))
	g.do(g.bearer(jsonCall(http.MethodGet, "/me", nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, "/me", nil, http.StatusOK), "finance-1", "finance"))
	g.do(jsonCall(http.MethodGet, "/me", nil, http.StatusUnauthorized).invalid())
	g.do(g.bearer(jsonCall(http.MethodGet, "/tiers", nil, http.StatusOK), owner, ""))

	// Management: create, read, list, change.
	_, body := g.do(g.bearer(jsonCall(http.MethodPost, "/api-keys", map[string]any{"name": "contract", "tier": "pro"}, http.StatusCreated), owner, ""))
	created := decode[struct{ ID, Key string }](t, body)
	keyPath := "/api-keys/" + created.ID
	g.do(g.bearer(jsonCall(http.MethodGet, "/api-keys", nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, "/api-keys?limit=1", nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, keyPath, nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodPatch, keyPath, map[string]any{"name": "renamed", "expiresAt": time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)}, http.StatusOK), owner, ""))

	// Management errors.
	g.do(jsonCall(http.MethodGet, "/api-keys", nil, http.StatusUnauthorized).invalid())
	g.do(jsonCall(http.MethodGet, "/api-keys", nil, http.StatusUnauthorized).with("Authorization", "Bearer not-a-jwt"))
	g.do(g.bearer(jsonCall(http.MethodGet, "/api-keys?limit=0", nil, http.StatusBadRequest), owner, "").invalid())
	g.do(g.bearer(jsonCall(http.MethodPost, "/api-keys", `{"name":`, http.StatusBadRequest), owner, "").invalid())
	g.do(g.bearer(jsonCall(http.MethodPost, "/api-keys", map[string]any{"name": "x", "tier": "gold"}, http.StatusUnprocessableEntity), owner, ""))
	unsupported := g.bearer(jsonCall(http.MethodPost, "/api-keys", `name=x`, http.StatusUnsupportedMediaType), owner, "").invalid()
	unsupported.contentType = "application/x-www-form-urlencoded"
	g.do(unsupported)
	g.do(g.bearer(jsonCall(http.MethodPost, "/api-keys", `{"name":"`+strings.Repeat("x", 70<<10)+`"}`, http.StatusRequestEntityTooLarge), owner, "").invalid())
	g.do(g.bearer(jsonCall(http.MethodGet, "/api-keys/0195b6b4-7a1c-7cde-8f00-3b2a1c9d4e5f", nil, http.StatusNotFound), owner, ""))

	// Credit grants: finance and admin only; an Idempotency-Key answers a
	// repeat the same and refuses another body with it.
	grant := map[string]any{"credits": 500, "reason": "contract"}
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", grant, http.StatusCreated), "finance-1", "finance"))
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", grant, http.StatusCreated), "admin-1", "admin").with("Idempotency-Key", "contract-1"))
	resp, _ = g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", grant, http.StatusCreated), "admin-1", "admin").with("Idempotency-Key", "contract-1"))
	requireHeaders(t, "repeated grant", resp, "Idempotent-Replayed")
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", map[string]any{"credits": 1, "reason": "contract"}, http.StatusUnprocessableEntity), "admin-1", "admin").with("Idempotency-Key", "contract-1"))
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", grant, http.StatusForbidden), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", grant, http.StatusNotFound), "someone-else", ""))
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", `{"credits":`, http.StatusBadRequest), "finance-1", "finance").invalid())
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/credits", map[string]any{"credits": 0, "reason": "x"}, http.StatusUnprocessableEntity), "finance-1", "finance").invalid())
	g.do(g.bearer(jsonCall(http.MethodGet, keyPath, nil, http.StatusNotFound), "someone-else", ""))
	g.do(g.bearer(jsonCall(http.MethodPatch, keyPath, map[string]any{}, http.StatusUnprocessableEntity), owner, "").invalid())

	// Public API with the key the management API made (pro: every route).
	pro := created.Key
	resp, body = g.do(jsonCall(http.MethodPost, "/v1/search", map[string]any{"query": "quantum computing", "limit": 3}, http.StatusOK).key(pro))
	requireHeaders(t, "search", resp, servedHeaders...)
	results := decode[search.Response](t, body)
	if len(results.Results) < 2 {
		t.Fatalf("search found %d results", len(results.Results))
	}
	page1, page2 := results.Results[0].URL, results.Results[1].URL
	served := []call{
		jsonCall(http.MethodPost, "/v1/extract", map[string]any{"url": page1}, http.StatusOK),
		jsonCall(http.MethodPost, "/v1/extract/bulk", map[string]any{"urls": []string{page1, page2}}, http.StatusOK),
		jsonCall(http.MethodGet, "/v1/search/engines", nil, http.StatusOK),
		jsonCall(http.MethodGet, "/v1/stt/models", nil, http.StatusOK),
		jsonCall(http.MethodGet, "/v1/stt/languages", nil, http.StatusOK),
		jsonCall(http.MethodPost, "/v1/tts/synthesize", map[string]any{"text": "Hello from the gateway.", "voice": "en-US-1"}, http.StatusOK),
		jsonCall(http.MethodGet, "/v1/tts/voices", nil, http.StatusOK),
		jsonCall(http.MethodGet, "/v1/tts/languages", nil, http.StatusOK),
		jsonCall(http.MethodGet, "/v1/key", nil, http.StatusOK),
	}
	upload, uploadType := wavUpload(t, 2)
	served = append(served, call{method: http.MethodPost, path: "/v1/stt/transcribe", body: upload, contentType: uploadType, validRequest: true, want: http.StatusOK})
	for _, c := range served {
		resp, _ := g.do(c.key(pro))
		requireHeaders(t, c.path, resp, servedHeaders...)
	}

	// Public errors.
	g.do(jsonCall(http.MethodPost, "/v1/search", map[string]any{"query": "x"}, http.StatusUnauthorized).invalid())
	g.do(jsonCall(http.MethodGet, "/v1/key", nil, http.StatusUnauthorized).key("sk_live_malformed"))
	g.do(jsonCall(http.MethodPost, "/v1/search", map[string]any{"limit": 3}, http.StatusBadRequest).key(pro).invalid())
	g.do(jsonCall(http.MethodPost, "/v1/search", map[string]any{"query": "x", "unknown": 1}, http.StatusBadRequest).key(pro).invalid())
	textBody := jsonCall(http.MethodPost, "/v1/search", "query", http.StatusUnsupportedMediaType).key(pro).invalid()
	textBody.contentType = "text/plain"
	g.do(textBody)
	g.do(jsonCall(http.MethodPost, "/v1/search", `{"query":"`+strings.Repeat("x", 65<<10)+`"}`, http.StatusRequestEntityTooLarge).key(pro).invalid())
	notWAV := call{method: http.MethodPost, path: "/v1/stt/transcribe", want: http.StatusUnsupportedMediaType}
	notWAV.body, notWAV.contentType = func() ([]byte, string) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("file", "x.mp3")
		_, _ = fw.Write(bytes.Repeat([]byte("ID3"), 100))
		_ = mw.Close()
		return buf.Bytes(), mw.FormDataContentType()
	}()
	g.do(notWAV.key(pro))
	// The backend's own refusals, passed through with the quota headers.
	resp, _ = g.do(jsonCall(http.MethodPost, "/v1/extract", map[string]any{"url": "http://10.0.0.1/private"}, http.StatusUnprocessableEntity).key(pro))
	requireHeaders(t, "backend 422", resp, "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Credits-Remaining")
	g.do(jsonCall(http.MethodPost, "/v1/tts/synthesize", map[string]any{"text": "hi", "voice": "xx-XX-9"}, http.StatusBadRequest).key(pro))
	// A backend that is gone.
	g.stt.Close()
	resp, _ = g.do(jsonCall(http.MethodGet, "/v1/stt/models", nil, http.StatusBadGateway).key(pro))
	requireHeaders(t, "502", resp, "X-RateLimit-Limit", "X-Credits-Remaining")

	// The free tier: a route outside it (403), no credits left (402), the
	// rate limit (429).
	free, _ := g.storeKey("free")
	resp, _ = g.do(jsonCall(http.MethodGet, "/v1/tts/voices", nil, http.StatusForbidden).key(free))
	requireHeaders(t, "403", resp, "X-RateLimit-Limit")
	broke, brokeKey := g.storeKey("free")
	g.exec(`INSERT INTO api_gateway.credit_balances (key_id, period, granted, used) VALUES ($1, date_trunc('month', now() AT TIME ZONE 'UTC')::date, 100, 100)`, brokeKey.ID)
	resp, _ = g.do(jsonCall(http.MethodPost, "/v1/search", map[string]any{"query": "x"}, http.StatusPaymentRequired).key(broke))
	requireHeaders(t, "402", resp, append(servedHeaders, "Retry-After")...)
	busy, _ := g.storeKey("free")
	for range 10 {
		g.do(jsonCall(http.MethodGet, "/v1/search/engines", nil, http.StatusOK).key(busy))
	}
	resp, _ = g.do(jsonCall(http.MethodGet, "/v1/search/engines", nil, http.StatusTooManyRequests).key(busy))
	requireHeaders(t, "429", resp, append(servedHeaders, "Retry-After")...)

	// Usage as the aggregator and the billing worker record it.
	today := time.Now().UTC().Format(time.DateOnly)
	g.exec(`INSERT INTO api_gateway.api_usage_daily (day, key_id, owner_id, endpoint, requests, credits, units, errors)
		VALUES ($1, $2, $3, '/v1/search', 3, 3, 3, 0), ($1, $2, $3, '/v1/tts/synthesize', 2, 2, 46, 1)`, today, created.ID, owner)
	g.exec(`INSERT INTO api_gateway.credit_balances (key_id, period, granted, used, requests) VALUES ($1, date_trunc('month', now() AT TIME ZONE 'UTC')::date, 5000, 5, 5)`, created.ID)
	_, body = g.do(g.bearer(jsonCall(http.MethodGet, keyPath+"/usage?from="+today+"&to="+today, nil, http.StatusOK), owner, ""))
	if rows := decode[struct{ Data []json.RawMessage }](t, body); len(rows.Data) != 2 {
		t.Fatalf("usage rows %s", body)
	}
	g.do(g.bearer(jsonCall(http.MethodGet, keyPath+"/usage", nil, http.StatusOK), "finance-1", "finance"))
	g.do(g.bearer(jsonCall(http.MethodGet, keyPath+"/usage/summary", nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, keyPath+"/usage?from=yesterday", nil, http.StatusBadRequest), owner, "").invalid())
	g.do(g.bearer(jsonCall(http.MethodGet, keyPath+"/usage?from=2026-03-02&to=2026-03-01", nil, http.StatusUnprocessableEntity), owner, ""))
	_, body = g.do(g.bearer(jsonCall(http.MethodGet, "/billing/daily?from="+today+"&to="+today, nil, http.StatusOK), "finance-1", "finance"))
	if rows := decode[struct{ Data []json.RawMessage }](t, body); len(rows.Data) != 2 {
		t.Fatalf("billing rows %s", body)
	}
	resp, body = g.do(g.bearer(jsonCall(http.MethodGet, "/billing/daily?format=csv&from="+today+"&to="+today, nil, http.StatusOK), "admin-1", "admin"))
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") || !strings.HasPrefix(string(body), "date,key_id,owner_id,endpoint,requests,credits,units,errors,granted\n") {
		t.Fatalf("csv %q: %s", resp.Header.Get("Content-Type"), body)
	}
	g.do(g.bearer(jsonCall(http.MethodGet, "/billing/daily", nil, http.StatusForbidden), owner, ""))
	_, body = g.do(g.bearer(jsonCall(http.MethodGet, "/billing/keys?from="+today+"&to="+today, nil, http.StatusOK), "finance-1", "finance"))
	if top := decode[struct{ Data []struct{ KeyID string } }](t, body); len(top.Data) != 1 || top.Data[0].KeyID != created.ID {
		t.Fatalf("top keys %s", body)
	}
	g.do(g.bearer(jsonCall(http.MethodGet, "/billing/keys", nil, http.StatusForbidden), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, "/billing/keys?limit=0", nil, http.StatusBadRequest), "finance-1", "finance").invalid())
	g.do(g.bearer(jsonCall(http.MethodGet, "/billing/daily?format=xml", nil, http.StatusBadRequest), "finance-1", "finance").invalid())

	// Webhook endpoints and their deliveries.
	_, body = g.do(g.bearer(jsonCall(http.MethodPost, "/webhooks", map[string]any{"url": "https://hooks.example.com/mana",
		"events": []string{"credits.threshold"}, "thresholds": []int{80, 100}, "description": "contract"}, http.StatusCreated), owner, ""))
	hook := decode[struct{ ID, Secret string }](t, body)
	hookPath := "/webhooks/" + hook.ID
	g.do(g.bearer(jsonCall(http.MethodGet, "/webhooks", nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, hookPath, nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, hookPath, nil, http.StatusNotFound), "someone-else", ""))
	g.do(g.bearer(jsonCall(http.MethodPatch, hookPath, map[string]any{"enabled": false}, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodPatch, hookPath, map[string]any{"thresholds": []int{0}}, http.StatusUnprocessableEntity), owner, "").invalid())
	g.do(g.bearer(jsonCall(http.MethodPost, "/webhooks", map[string]any{"url": "ftp://x"}, http.StatusUnprocessableEntity), owner, ""))
	g.exec(`INSERT INTO api_gateway.webhook_events (id, owner_id, type, payload) VALUES ('msg_contract', $1, 'credits.threshold', '{}')`, owner)
	g.exec(`INSERT INTO api_gateway.webhook_deliveries (endpoint_id, event_id, status, attempts, last_status_code, last_attempt_at)
		VALUES ($1, 'msg_contract', 'failed', 8, 500, now())`, hook.ID)
	g.do(g.bearer(jsonCall(http.MethodPost, hookPath+"/deliveries/msg_contract/retry", nil, http.StatusConflict), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodPatch, hookPath, map[string]any{"enabled": true}, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodPost, hookPath+"/deliveries/msg_contract/retry", nil, http.StatusAccepted), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodPost, hookPath+"/deliveries/msg_other/retry", nil, http.StatusNotFound), owner, ""))
	g.exec(`INSERT INTO api_gateway.webhook_events (id, owner_id, type, payload) VALUES ('msg_leased', $1, 'credits.threshold', '{}')`, owner)
	g.exec(`INSERT INTO api_gateway.webhook_deliveries (endpoint_id, event_id, attempts, last_attempt_at, next_attempt_at, leased_until)
		VALUES ($1, 'msg_leased', 1, now(), now() + interval '1 minute', now() + interval '1 minute')`, hook.ID)
	g.do(g.bearer(jsonCall(http.MethodPost, hookPath+"/deliveries/msg_leased/retry", nil, http.StatusConflict), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, hookPath+"/deliveries", nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodDelete, hookPath, nil, http.StatusNoContent), owner, ""))

	// The audit trail of the changes above.
	g.do(g.bearer(jsonCall(http.MethodGet, "/audit", nil, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, "/audit?from="+today+"&to="+today+"&limit=5", nil, http.StatusOK), "admin-1", "admin"))
	g.do(g.bearer(jsonCall(http.MethodGet, "/audit?from=2026-03-02&to=2026-03-01", nil, http.StatusUnprocessableEntity), owner, ""))

	// Regenerate, then delete; the old secrets stop working.
	_, body = g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/regenerate", nil, http.StatusOK), owner, ""))
	regenerated := decode[struct{ Key string }](t, body)
	if regenerated.Key == "" || regenerated.Key == pro {
		t.Fatalf("regenerate answered %s", body)
	}
	g.do(jsonCall(http.MethodGet, "/v1/key", nil, http.StatusUnauthorized).key(pro))
	g.do(g.bearer(jsonCall(http.MethodPost, keyPath+"/regenerate", map[string]any{"gracePeriodSeconds": 60}, http.StatusOK), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodDelete, keyPath, nil, http.StatusNoContent), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodDelete, keyPath, nil, http.StatusNoContent), owner, ""))
	g.do(g.bearer(jsonCall(http.MethodGet, keyPath, nil, http.StatusNotFound), owner, ""))

	// Every operation was exercised with a success.
	for path, item := range g.doc.Paths.Map() {
		for method := range item.Operations() {
			ok := false
			for seen := range g.seen {
				if strings.HasPrefix(seen, method+" "+path+" 2") {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s %s: no 2xx exchange validated", method, path)
			}
		}
	}
	names := make([]string, 0, len(g.seen))
	for k := range g.seen {
		names = append(names, k)
	}
	sort.Strings(names)
	t.Logf("validated %d distinct (operation, status) pairs: %s", len(names), strings.Join(names, "; "))
}

// TestValidationBites shows that the checks above fail on what they must
// catch: each case is a response the gateway must never give.
func TestValidationBites(t *testing.T) {
	doc := loadSpec(t)
	doc.Servers = openapi3.Servers{{URL: "http://gw.test"}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	const id = "0195b6b4-7a1c-7cde-8f00-3b2a1c9d4e5f"
	keyJSON := `{"id":"` + id + `","name":"n","keyPrefix":"sk_live_abcd","tier":"pro","active":true,"rateLimitPerMinute":100,
		"monthlyCredits":5000,"creditsRemaining":5000,"createdAt":"2026-03-01T00:00:00Z","expiresAt":null,"lastUsedAt":null`
	problemJSON := `{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"slow down"}`
	quotaHeaders := func(extra ...string) http.Header {
		h := http.Header{"X-Request-Id": {"01HZ"}, "X-Ratelimit-Limit": {"10"}, "X-Ratelimit-Remaining": {"0"},
			"X-Ratelimit-Reset": {"1767225600"}, "X-Credits-Remaining": {"5"}, "Content-Type": {"application/json"}}
		for i := 0; i+1 < len(extra); i += 2 {
			if extra[i+1] == "" {
				h.Del(extra[i])
			} else {
				h.Set(extra[i], extra[i+1])
			}
		}
		return h
	}
	tests := []struct {
		name, method, path string
		status             int
		header             http.Header
		body               string
		withError          bool
	}{
		{name: "a valid list (control)", method: "GET", path: "/api-keys", status: 200,
			header: http.Header{"X-Request-Id": {"01HZ"}, "Content-Type": {"application/json"}}, body: `{"data":[` + keyJSON + `}],"nextCursor":null}`},
		{name: "X-Request-Id missing", method: "GET", path: "/api-keys", status: 200, withError: true,
			header: http.Header{"Content-Type": {"application/json"}}, body: `{"data":[],"nextCursor":null}`},
		{name: "a secret in a list", method: "GET", path: "/api-keys", status: 200, withError: true,
			header: http.Header{"X-Request-Id": {"01HZ"}, "Content-Type": {"application/json"}},
			body:   `{"data":[` + keyJSON + `,"key":"sk_live_0123456789abcdefghijABCDEFGHIJ012345"}],"nextCursor":null}`},
		{name: "an undocumented field", method: "GET", path: "/api-keys/" + id, status: 200, withError: true,
			header: http.Header{"X-Request-Id": {"01HZ"}, "Content-Type": {"application/json"}}, body: keyJSON + `,"ownerId":"u"}`},
		{name: "no secret on create", method: "POST", path: "/api-keys", status: 201, withError: true,
			header: http.Header{"X-Request-Id": {"01HZ"}, "Location": {"/api-keys/" + id}, "Cache-Control": {"no-store"}, "Content-Type": {"application/json"}},
			body:   keyJSON + `}`},
		{name: "an undocumented status", method: "POST", path: "/v1/search", status: 418, withError: true,
			header: quotaHeaders("Content-Type", "application/problem+json"), body: problemJSON},
		{name: "429 without Retry-After", method: "POST", path: "/v1/search", status: 429, withError: true,
			header: quotaHeaders("Content-Type", "application/problem+json"), body: problemJSON},
		{name: "429 with Retry-After (control)", method: "POST", path: "/v1/search", status: 429,
			header: quotaHeaders("Content-Type", "application/problem+json", "Retry-After", "3"), body: problemJSON},
		{name: "an error that is not problem+json", method: "POST", path: "/v1/search", status: 429, withError: true,
			header: quotaHeaders("Retry-After", "3"), body: problemJSON},
		{name: "a problem without detail", method: "GET", path: "/v1/key", status: 401, withError: true,
			header: http.Header{"X-Request-Id": {"01HZ"}, "Content-Type": {"application/problem+json"}}, body: `{"type":"about:blank","title":"Unauthorized","status":401}`},
		{name: "a reset that is not Unix seconds", method: "GET", path: "/v1/search/engines", status: 200, withError: true,
			header: quotaHeaders("X-Ratelimit-Reset", "soon"), body: `{"engines":[]}`},
		{name: "a served call without X-RateLimit-Limit", method: "GET", path: "/v1/search/engines", status: 200, withError: true,
			header: quotaHeaders("X-Ratelimit-Limit", ""), body: `{"engines":[]}`},
		{name: "a transcript without its duration", method: "POST", path: "/v1/stt/transcribe", status: 200, withError: true,
			header: quotaHeaders(), body: `{"text":"hello"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "http://gw.test"+tt.path, nil)
			route, reqErr, respErr := validate(t.Context(), router, req, false, tt.status, tt.header, []byte(tt.body))
			if route == nil {
				t.Fatalf("route not found: %v", reqErr)
			}
			if tt.withError != (respErr != nil) {
				t.Fatalf("error %v, want error: %v", respErr, tt.withError)
			}
		})
	}
}
