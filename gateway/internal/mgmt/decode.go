package mgmt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/apierr"
)

// The refusals of a request body.
var (
	errBodyTooLarge   = apierr.New(apierr.BodyTooLarge, "request body too large")
	errBodyUnreadable = apierr.New(apierr.Invalid, "could not read the request body")
	errBodyRequired   = apierr.New(apierr.Invalid, "a JSON body is required")
	errNotJSON        = apierr.New(apierr.UnsupportedMedia, "the body must be application/json")
	errNotUTF8        = apierr.New(apierr.Invalid, "the body is not valid UTF-8")
	errNotObject      = apierr.New(apierr.Invalid, "the body must be a JSON object")
	errMalformedJSON  = apierr.New(apierr.Invalid, "malformed JSON")
	errTrailingData   = apierr.New(apierr.Invalid, "malformed JSON: data after the object")
)

// decodeJSON reads one JSON object into dst: at most BodyLimit bytes (413),
// Content-Type application/json (415), valid UTF-8, no unknown fields, no
// trailing data (400). An empty body is allowed only if optional.
func (h *Handler) decodeJSON(c echo.Context, dst any, optional bool) error {
	r := c.Request()
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), r.Body, h.cfg.BodyLimit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return errBodyTooLarge.WithDetail(fmt.Sprintf("request body exceeds %d bytes", h.cfg.BodyLimit))
		}
		return errBodyUnreadable
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return nil
		}
		return errBodyRequired
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType)); err != nil || mt != echo.MIMEApplicationJSON {
		return errNotJSON
	}
	if !utf8.Valid(body) {
		return errNotUTF8
	}
	if body = bytes.TrimSpace(body); body[0] != '{' {
		return errNotObject
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return errMalformedJSON.WithDetail(describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errTrailingData
	}
	return nil
}

func describeJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("malformed JSON at byte %d", syntax.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: unexpected end of the body"
	case errors.As(err, &typ) && typ.Field != "":
		return fmt.Sprintf("field %q must be a JSON %s", typ.Field, jsonKind(typ.Type.Kind().String()))
	default:
		// Unknown fields ("json: unknown field \"x\""), time formats and
		// the like: the decoder's message names the problem.
		return "invalid JSON body: " + err.Error()
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "int", "int32", "int64", "float64":
		return "number"
	default:
		return "value of the documented type"
	}
}

// optional is a JSON field that distinguishes absent (Set false) from null
// (Null true) from a value, as PATCH needs.
type optional[T any] struct {
	Set, Null bool
	V         T
}

func (o *optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	return json.Unmarshal(b, &o.V)
}
