package openapi_test

import (
	"net/url"
	"regexp"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	_ "github.com/lib/pq" // Postgres driver (never connected here)
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mana/apigw/gateway/internal/dashboard"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/mgmt"
	"github.com/mana/apigw/gateway/internal/openapi"
	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/server"
	"github.com/mana/apigw/services/testenv"
)

// loadSpec parses and validates the embedded document.
func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Spec())
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	if err := doc.Validate(t.Context()); err != nil {
		t.Fatalf("validate spec: %v", err)
	}
	return doc
}

// routerOnly builds the gateway's echo router the way server.NewApp does
// (system endpoints, the edge's route table, the management API and this
// package's document endpoints) without connecting to anything: the route
// table is all this test needs.
func routerOnly(t *testing.T) *echo.Echo {
	t.Helper()
	logger := testenv.Logger(t)
	p, err := pricing.Default()
	if err != nil {
		t.Fatal(err)
	}
	backend, _ := url.Parse("http://127.0.0.1:1")
	edge, err := proxy.New(proxy.Config{
		Backends:       map[string]*url.URL{proxy.BackendSearch: backend, proxy.BackendSTT: backend, proxy.BackendTTS: backend},
		GatewayID:      "routes",
		PublishTimeout: time.Second,
	}, p, nil, nil, nil, nil, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sqlx.Open("postgres", "postgres://nobody@127.0.0.1:1/none?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	h, err := mgmt.New(mgmt.Config{}, mgmt.Deps{
		Store: keys.NewStore(db), DB: db, Hasher: keys.NewHasher([]byte("pepper")), Tiers: p,
		State: quota.NewStore(rdb, quota.NewPGLoader(db, nil, nil, logger), nil),
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	e := server.NewEcho(logger, prometheus.NewRegistry(), nil, false)
	edge.Register(e)
	h.Register(e, func(next echo.HandlerFunc) echo.HandlerFunc { return next })
	openapi.Register(e)
	dash, err := dashboard.New(dashboard.Config{}, fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	dash.Register(e)
	return e
}

var echoParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// TestRouterAndSpecAgree walks the real router: every (method, path) it
// serves must be in the document, and every operation of the document must
// be served.
func TestRouterAndSpecAgree(t *testing.T) {
	doc := loadSpec(t)
	e := routerOnly(t)

	served := map[string]bool{}
	for _, r := range e.Routes() {
		if strings.Contains(r.Path, "*") {
			t.Errorf("wildcard route %s %s cannot be documented", r.Method, r.Path)
			continue
		}
		served[r.Method+" "+echoParam.ReplaceAllString(r.Path, "{$1}")] = true
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	if len(served) < 25 {
		t.Fatalf("only %d routes served; the router was not built fully", len(served))
	}
	for _, r := range sorted(served) {
		if !documented[r] {
			t.Errorf("served but not in the OpenAPI document: %s", r)
		}
	}
	for _, r := range sorted(documented) {
		if !served[r] {
			t.Errorf("in the OpenAPI document but not served: %s", r)
		}
	}
	// The edge's table is the source of the public API: each of its routes
	// must be there (guards against the router walk missing the edge).
	for _, rt := range proxy.Routes() {
		if !documented[rt.Method+" "+rt.Path] {
			t.Errorf("route table entry %s %s not documented", rt.Method, rt.Path)
		}
	}
}

func sorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
