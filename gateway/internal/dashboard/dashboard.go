// Package dashboard serves the usage dashboard at /dashboard: one page and
// its scripts and styles, embedded in the binary (built from web/ by
// web/build.mjs into dist/), under a strict Content-Security-Policy. The page
// calls only the management API of the same origin, plus the issuer's
// email+password login endpoint when one is configured.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/apierr"
)

// dist holds the built page. On a fresh clone it holds only its
// .gitignore (so that the pattern always matches and go build works); the
// build copies the page in.
//
//go:embed all:dist
var dist embed.FS

// Assets returns the embedded, built page.
func Assets() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil { // cannot happen: "dist" is a valid path
		return dist
	}
	return sub
}

// Config is what the page is told about signing in.
type Config struct {
	// PasswordLoginURL is the issuer's email+password endpoint the browser
	// posts to (the dev issuer's POST /api/v1/auth/login). Empty hides the
	// form; a pasted token always works.
	PasswordLoginURL *url.URL
	// IssuerLoginURL is the issuer's own sign-in page, linked from the page
	// (production); it may send the browser back with #access_token=….
	IssuerLoginURL *url.URL
}

// Handler serves the page.
type Handler struct {
	index  []byte // rendered index.html; nil when the page is not built
	assets map[string]asset
	csp    string
}

type asset struct {
	body        []byte
	contentType string
	etag        string
}

// indexName is the page's template; every other file of the assets is
// served as it is under /dashboard/<name>.
const indexName = "index.html"

// New reads the built page from assets (Assets() outside tests) and renders
// its template with cfg. Assets without index.html make a handler that
// answers 404 explaining how to build the page.
func New(cfg Config, assets fs.FS) (*Handler, error) {
	h := &Handler{assets: map[string]asset{}}
	connect := []string{"'self'"}
	if u := cfg.PasswordLoginURL; u != nil {
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errors.New("dashboard: PasswordLoginURL must be an http(s) URL")
		}
		connect = append(connect, u.Scheme+"://"+u.Host)
	}
	if u := cfg.IssuerLoginURL; u != nil && ((u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
		return nil, errors.New("dashboard: IssuerLoginURL must be an http(s) URL")
	}
	h.csp = strings.Join([]string{
		"default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
		"connect-src " + strings.Join(connect, " "), "base-uri 'none'", "form-action 'none'",
		"frame-ancestors 'none'",
	}, "; ")

	entries, err := fs.ReadDir(assets, ".")
	if err != nil {
		return nil, fmt.Errorf("dashboard: read assets: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") {
			continue
		}
		b, err := fs.ReadFile(assets, name)
		if err != nil {
			return nil, fmt.Errorf("dashboard: read %s: %w", name, err)
		}
		if name == indexName {
			if h.index, err = render(b, cfg); err != nil {
				return nil, err
			}
			continue
		}
		ct := mime.TypeByExtension(path.Ext(name))
		if ct == "" {
			ct = "application/octet-stream"
		}
		h.assets[name] = asset{body: b, contentType: ct, etag: etag(b)}
	}
	return h, nil
}

func etag(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`
}

// render fills the page's data attributes; html/template escapes them.
func render(page []byte, cfg Config) ([]byte, error) {
	t, err := template.New(indexName).Parse(string(page))
	if err != nil {
		return nil, fmt.Errorf("dashboard: parse %s: %w", indexName, err)
	}
	data := struct{ PasswordLoginURL, IssuerLoginURL string }{}
	if cfg.PasswordLoginURL != nil {
		data.PasswordLoginURL = cfg.PasswordLoginURL.String()
	}
	if cfg.IssuerLoginURL != nil {
		data.IssuerLoginURL = cfg.IssuerLoginURL.String()
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("dashboard: render %s: %w", indexName, err)
	}
	return buf.Bytes(), nil
}

// Register adds GET /dashboard (the page) and GET /dashboard/:asset.
func (h *Handler) Register(e *echo.Echo) {
	e.GET("/dashboard", h.page)
	e.GET("/dashboard/:asset", h.asset)
}

var errNotBuilt = apierr.New(apierr.NotFound,
	"the dashboard is not built into this binary: make build (or make run) runs npm ci in web/ and embeds it")

func (h *Handler) secure(c echo.Context) {
	hd := c.Response().Header()
	hd.Set("Content-Security-Policy", h.csp)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
}

func (h *Handler) page(c echo.Context) error {
	if h.index == nil {
		return errNotBuilt
	}
	h.secure(c)
	c.Response().Header().Set("Cache-Control", "no-cache")
	return c.Blob(http.StatusOK, "text/html; charset=utf-8", h.index)
}

func (h *Handler) asset(c echo.Context) error {
	a, ok := h.assets[c.Param("asset")]
	if !ok {
		if h.index == nil {
			return errNotBuilt
		}
		return apierr.New(apierr.NotFound, "no such dashboard file")
	}
	h.secure(c)
	hd := c.Response().Header()
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	hd.Set(echo.HeaderContentType, a.contentType)
	http.ServeContent(c.Response(), c.Request(), "", time.Time{}, bytes.NewReader(a.body))
	return nil
}
