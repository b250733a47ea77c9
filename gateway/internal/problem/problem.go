// Package problem owns the gateway's error body: RFC 9457 problem details
// (application/problem+json) and the Echo error handler that writes them, so
// that the HTTP status of an error is decided in one place.
package problem

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"
)

// ContentType is the media type of a problem body.
const ContentType = "application/problem+json"

// Problem is an RFC 9457 problem details object. It implements error so that
// handlers can return it; Write and ErrorHandler turn it into a response.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// New returns a problem for status with the standard title and the given
// detail. Type is "about:blank" as RFC 9457 prescribes when no more specific
// type exists.
func New(status int, detail string) Problem {
	return Problem{Type: "about:blank", Title: title(status), Status: status, Detail: detail}
}

// Error implements error.
func (p Problem) Error() string {
	return fmt.Sprintf("%d %s: %s", p.Status, p.Title, p.Detail)
}

// Write writes p as application/problem+json with p.Status. Missing Type and
// Title are filled in; a status outside 400-599 is written as 500.
func Write(c echo.Context, p Problem) error {
	if p.Status < 400 || p.Status > 599 {
		p.Status = http.StatusInternalServerError
	}
	if p.Type == "" {
		p.Type = "about:blank"
	}
	if p.Title == "" {
		p.Title = title(p.Status)
	}
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("marshal problem: %w", err)
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.Blob(p.Status, ContentType, body)
}

// From maps any handler error to a problem: a Problem as is, an
// *echo.HTTPError by its code and message, anything else as 500 with a
// generic detail (the cause is for the log, never for the client).
func From(err error) Problem {
	var p Problem
	if errors.As(err, &p) {
		return p
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		detail := ""
		switch m := he.Message.(type) {
		case string:
			detail = m
		case error:
			detail = m.Error()
		case nil:
		default:
			detail = fmt.Sprint(m)
		}
		if detail == "" {
			detail = title(he.Code)
		}
		return New(he.Code, detail)
	}
	return New(http.StatusInternalServerError, "internal error")
}

// ErrorHandler returns an Echo HTTPErrorHandler that writes every error as
// problem+json and logs server errors (status >= 500) with their cause.
func ErrorHandler(logger *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		p := From(err)
		if p.Status >= 500 {
			logger.ErrorContext(c.Request().Context(), "request failed",
				"status", p.Status, "method", c.Request().Method, "path", c.Path(), "err", err)
		}
		if c.Request().Method == http.MethodHead {
			_ = c.NoContent(p.Status)
			return
		}
		if werr := Write(c, p); werr != nil {
			logger.ErrorContext(c.Request().Context(), "write problem", "err", werr)
		}
	}
}

func title(status int) string {
	if t := http.StatusText(status); t != "" {
		return t
	}
	return "Error"
}
