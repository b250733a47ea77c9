package problem

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/services/testenv"
)

func TestErrorHandler(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		detail string
	}{
		{"problem", New(http.StatusPaymentRequired, "not enough credits"), 402, "not enough credits"},
		{"wrapped problem", fmt.Errorf("ctx: %w", New(http.StatusNotFound, "API key not found")), 404, "API key not found"},
		{"echo error", echo.NewHTTPError(http.StatusUnauthorized, "invalid bearer token"), 401, "invalid bearer token"},
		{"echo not found", echo.ErrNotFound, 404, "Not Found"},
		{"echo no message", &echo.HTTPError{Code: http.StatusTooManyRequests}, 429, "Too Many Requests"},
		{"plain error hides cause", errors.New("pq: password=secret"), 500, "internal error"},
		{"bad status", Problem{Status: 200, Detail: "x"}, 500, "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := echo.New()
			rec := httptest.NewRecorder()
			c := e.NewContext(httptest.NewRequest(http.MethodGet, "/", nil), rec)
			ErrorHandler(testenv.Logger(t))(tt.err, c)
			if rec.Code != tt.status || rec.Header().Get("Content-Type") != ContentType {
				t.Fatalf("%d %q", rec.Code, rec.Header().Get("Content-Type"))
			}
			var p Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			if p.Status != tt.status || p.Detail != tt.detail || p.Type != "about:blank" || p.Title != http.StatusText(tt.status) {
				t.Fatalf("problem %+v", p)
			}
		})
	}
}
