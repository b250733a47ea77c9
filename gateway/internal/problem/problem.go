// Package problem writes the gateway's error body: RFC 9457 problem details
// (application/problem+json). What an error is written as — status, title,
// type, headers — is looked up in package apierr's table; the Echo error
// handler here, the reverse proxy's error handler and /ready all write
// through Write, so the status of an error is decided in one place.
package problem

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/apierr"
)

// ContentType is the media type of a problem body.
const ContentType = "application/problem+json"

// Problem is an RFC 9457 problem details object, as written.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// Header is set on the response with the body.
	Header http.Header `json:"-"`
	// Members are extension members, written beside the standard ones.
	Members map[string]any `json:"-"`
}

// From maps any handler error to its problem: an error that carries an
// apierr code by the table; an *echo.HTTPError (Echo's own: no route, wrong
// method) by its code and message; anything else as 500 with a generic
// detail (the cause is for the log, never for the client).
func From(err error) Problem {
	var coded apierr.Coded
	if errors.As(err, &coded) {
		ae := coded.APIError()
		en := apierr.Lookup(ae.Code())
		p := Problem{Type: en.Type, Title: en.Title, Status: en.Status, Detail: ae.Detail(), Header: en.Header, Members: ae.Members()}
		if d, ok := ae.RetryAfter(); ok {
			if p.Header == nil {
				p.Header = http.Header{}
			}
			p.Header.Set("Retry-After", strconv.FormatInt(ceilSeconds(d.Seconds()), 10))
		}
		return p
	}
	var he *echo.HTTPError
	if errors.As(err, &he) && he.Code >= 400 && he.Code <= 599 {
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
		title := http.StatusText(he.Code)
		if title == "" {
			title = "Error"
		}
		if detail == "" {
			detail = title
		}
		return Problem{Type: "about:blank", Title: title, Status: he.Code, Detail: detail}
	}
	en := apierr.Lookup(apierr.Internal)
	return Problem{Type: en.Type, Title: en.Title, Status: en.Status, Detail: apierr.InternalDetail, Header: en.Header}
}

// Write writes err as application/problem+json, with the status, title and
// headers From gives it.
func Write(c echo.Context, err error) error {
	p := From(err)
	setHeader(c, p)
	body, merr := p.marshal()
	if merr != nil {
		return fmt.Errorf("marshal problem: %w", merr)
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.Blob(p.Status, ContentType, body)
}

func setHeader(c echo.Context, p Problem) {
	h := c.Response().Header()
	for k, v := range p.Header {
		h[k] = v
	}
}

func (p Problem) marshal() ([]byte, error) {
	if len(p.Members) == 0 {
		return json.Marshal(p)
	}
	m := make(map[string]any, len(p.Members)+4)
	for k, v := range p.Members {
		m[k] = v
	}
	m["type"], m["title"], m["status"], m["detail"] = p.Type, p.Title, p.Status, p.Detail
	return json.Marshal(m)
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
			setHeader(c, p)
			_ = c.NoContent(p.Status)
			return
		}
		if werr := Write(c, err); werr != nil {
			logger.ErrorContext(c.Request().Context(), "write problem", "err", werr)
		}
	}
}

func ceilSeconds(s float64) int64 {
	if s <= 0 {
		return 0
	}
	return int64(math.Ceil(s))
}
