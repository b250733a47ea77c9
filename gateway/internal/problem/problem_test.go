package problem

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/quota"
	"github.com/mana/apigw/gateway/internal/usage"
	"github.com/mana/apigw/services/testenv"
)

// TestErrorHandler checks that every exported sentinel is written with its
// status, title, detail and headers, and that an error without a code is a
// 500 that does not tell its cause.
func TestErrorHandler(t *testing.T) {
	now := time.Date(2026, 3, 31, 23, 59, 58, 500e6, time.UTC)
	tests := []struct {
		name   string
		err    error
		status int
		detail string
		header http.Header
	}{
		{"malformed key", keys.ErrMalformed, 401, "malformed API key", nil},
		{"throttled lookups", fmt.Errorf("resolve: %w", &keys.ThrottledError{RetryAfter: 1500 * time.Millisecond}), 429,
			"too many unknown API keys from this address; retry later", http.Header{"Retry-After": {"2"}}},
		{"revoked", quota.ErrRevoked, 401, "API key revoked or unknown", nil},
		{"expired", quota.ErrExpired, 401, "API key expired", nil},
		{"inactive", quota.ErrInactive, 403, "API key is deactivated", nil},
		{"forbidden", quota.ErrForbidden, 403, "this endpoint is not included in the key's tier", nil},
		{"rate limited", quota.Decision{Outcome: quota.RateLimited, Limit: 60, RetryAfter: 2100 * time.Millisecond}.Err(), 429,
			"rate limit of 60 requests per minute exceeded", http.Header{"Retry-After": {"3"}}},
		{"rate limited now", quota.Decision{Outcome: quota.RateLimited, Limit: 60}.Err(), 429,
			"rate limit of 60 requests per minute exceeded", http.Header{"Retry-After": {"0"}}},
		{"insufficient", quota.Decision{Outcome: quota.Insufficient, Credits: 3, Now: now}.Err(), 402,
			"not enough credits for this call (3 remaining)", http.Header{"Retry-After": {"2"}}},
		{"credits unavailable", quota.ErrUnavailable, 503, "credit accounting is unavailable; try again shortly", http.Header{"Retry-After": {"5"}}},
		{"not durable", fmt.Errorf("publish: %w: nats down", usage.ErrNotDurable), 503,
			"usage cannot be recorded right now; nothing was charged", http.Header{"Retry-After": {"5"}}},
		{"uncertain", usage.ErrUncertain, 503,
			"usage could not be confirmed in time; the call may still be charged if its record arrives", http.Header{"Retry-After": {"5"}}},
		{"instance", apierr.New(apierr.Unprocessable, "name must not be empty"), 422, "name must not be empty", nil},
		{"fixed headers", apierr.New(apierr.TokenRefused, "invalid bearer token"), 401, "invalid bearer token",
			http.Header{"Www-Authenticate": {`Bearer error="invalid_token"`}}},
		{"echo error", echo.NewHTTPError(http.StatusUnauthorized, "invalid bearer token"), 401, "invalid bearer token", nil},
		{"echo not found", echo.ErrNotFound, 404, "Not Found", nil},
		{"echo no message", &echo.HTTPError{Code: http.StatusTooManyRequests}, 429, "Too Many Requests", nil},
		{"plain error hides cause", errors.New("pq: password=secret"), 500, "internal error", nil},
		{"unknown outcome", quota.Decision{Outcome: 42}.Err(), 500, "internal error", nil},
		{"echo error without an error status", &echo.HTTPError{Code: 200, Message: "secret"}, 500, "internal error", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := echo.New()
			rec := httptest.NewRecorder()
			c := e.NewContext(httptest.NewRequest(http.MethodGet, "/", nil), rec)
			ErrorHandler(testenv.Logger(t))(tt.err, c)
			if rec.Code != tt.status || rec.Header().Get("Content-Type") != ContentType || rec.Header().Get("Cache-Control") != "no-store" {
				t.Fatalf("%d %q", rec.Code, rec.Header())
			}
			for k := range tt.header {
				if got := rec.Header().Values(k); fmt.Sprint(got) != fmt.Sprint(tt.header[k]) {
					t.Fatalf("%s: %q, want %q", k, got, tt.header[k])
				}
			}
			for _, k := range []string{"Retry-After", "Www-Authenticate", "Connection"} {
				if _, ok := tt.header[k]; !ok && rec.Header().Get(k) != "" {
					t.Fatalf("unexpected %s: %q", k, rec.Header().Get(k))
				}
			}
			var p Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			if p.Status != tt.status || p.Detail != tt.detail || p.Type != "about:blank" || p.Title != http.StatusText(tt.status) {
				t.Fatalf("problem %+v", p)
			}
			if strings.Contains(rec.Body.String(), "secret") {
				t.Fatalf("the body tells the cause: %s", rec.Body)
			}
		})
	}
}

func TestMembersAndHead(t *testing.T) {
	err := apierr.New(apierr.Unavailable, "a dependency is unavailable").RetryIn(time.Second).
		WithMembers(map[string]any{"checks": map[string]string{"redis": "down"}})
	e := echo.New()
	rec := httptest.NewRecorder()
	if werr := Write(e.NewContext(httptest.NewRequest(http.MethodGet, "/ready", nil), rec), err); werr != nil {
		t.Fatal(werr)
	}
	want := `{"checks":{"redis":"down"},"detail":"a dependency is unavailable","status":503,"title":"Service Unavailable","type":"about:blank"}`
	if rec.Code != 503 || rec.Body.String() != want || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("%d %q %s", rec.Code, rec.Header(), rec.Body)
	}

	rec = httptest.NewRecorder()
	ErrorHandler(testenv.Logger(t))(quota.ErrUnavailable, e.NewContext(httptest.NewRequest(http.MethodHead, "/", nil), rec))
	if rec.Code != 503 || rec.Body.Len() != 0 || rec.Header().Get("Retry-After") != "5" {
		t.Fatalf("HEAD: %d %q %q", rec.Code, rec.Header(), rec.Body)
	}
}
