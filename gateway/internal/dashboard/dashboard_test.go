package dashboard

import (
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/problem"
)

func serve(t *testing.T, cfg Config, assets fs.FS) *echo.Echo {
	t.Helper()
	h, err := New(cfg, assets)
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.HTTPErrorHandler = problem.ErrorHandler(slog.New(slog.DiscardHandler))
	h.Register(e)
	return e
}

func get(e *echo.Echo, path string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

var page = fstest.MapFS{
	"index.html":       {Data: []byte(`<body data-login="{{.PasswordLoginURL}}" data-issuer="{{.IssuerLoginURL}}">`)},
	"app.js":           {Data: []byte("console.log('hi')\n")},
	"app.css":          {Data: []byte("body { margin: 0 }\n")},
	".gitignore":       {Data: []byte("*\n")},
	"sub/ignored.html": {Data: []byte("x")},
}

func TestThePageAndItsFilesAreServedUnderAStrictPolicy(t *testing.T) {
	e := serve(t, Config{PasswordLoginURL: mustURL(t, "http://127.0.0.1:3001/api/v1/auth/login"),
		IssuerLoginURL: mustURL(t, `https://auth.example.com/login?x="><script>`)}, page)

	rec := get(e, "/dashboard")
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	csp := rec.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'",
		"connect-src 'self' http://127.0.0.1:3001", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") || strings.Contains(csp, "*") {
		t.Errorf("CSP allows too much: %q", csp)
	}
	if rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("X-Frame-Options") != "DENY" {
		t.Errorf("headers %v", rec.Header())
	}
	body := rec.Body.String()
	if !strings.Contains(body, `data-login="http://127.0.0.1:3001/api/v1/auth/login"`) {
		t.Errorf("login URL not rendered: %s", body)
	}
	if strings.Contains(body, "<script>") || strings.Contains(body, `"><`) {
		t.Errorf("the issuer URL was not escaped: %s", body)
	}

	rec = get(e, "/dashboard/app.js")
	if rec.Code != http.StatusOK || rec.Body.String() != "console.log('hi')\n" ||
		!strings.HasPrefix(rec.Header().Get("Content-Type"), "text/javascript") || rec.Header().Get("Content-Security-Policy") != csp {
		t.Fatalf("app.js: %d %v %q", rec.Code, rec.Header(), rec.Body)
	}
	etag := rec.Header().Get("ETag")
	if rec = get(e, "/dashboard/app.js", "If-None-Match", etag); rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Fatalf("revalidation: %d", rec.Code)
	}
	if rec = get(e, "/dashboard/app.css"); rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/css") {
		t.Fatalf("app.css: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	if rec.Header().Get("ETag") == etag {
		t.Error("two files share an ETag")
	}
	for _, path := range []string{"/dashboard/.gitignore", "/dashboard/index.html", "/dashboard/nope.js", "/dashboard/sub", "/dashboard/..%2Fdashboard.go"} {
		if rec := get(e, path); rec.Code != http.StatusNotFound || rec.Header().Get("Content-Type") != problem.ContentType {
			t.Errorf("%s: %d %q, want a 404 problem", path, rec.Code, rec.Header().Get("Content-Type"))
		}
	}
}

func TestWithoutLoginURLOnlyThisOriginIsReached(t *testing.T) {
	rec := get(serve(t, Config{}, page), "/dashboard")
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self';") {
		t.Fatalf("CSP %q", csp)
	}
	if !strings.Contains(rec.Body.String(), `data-login=""`) {
		t.Fatalf("page %s", rec.Body)
	}
}

func TestAnUnbuiltPageSaysHowToBuildIt(t *testing.T) {
	e := serve(t, Config{}, fstest.MapFS{".gitignore": {Data: []byte("*\n")}})
	for _, path := range []string{"/dashboard", "/dashboard/app.js"} {
		rec := get(e, path)
		if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "make build") {
			t.Errorf("%s: %d %s", path, rec.Code, rec.Body)
		}
	}
}

func TestBadConfigIsRefused(t *testing.T) {
	for _, cfg := range []Config{
		{PasswordLoginURL: mustURL(t, "ftp://x/login")},
		{PasswordLoginURL: mustURL(t, "/relative")},
		{IssuerLoginURL: mustURL(t, "javascript:alert(1)")},
	} {
		if _, err := New(cfg, page); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if _, err := New(Config{}, fstest.MapFS{"index.html": {Data: []byte("{{.Nope")}}); err == nil {
		t.Error("a broken template accepted")
	}
}
