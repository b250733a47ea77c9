// Package httpjson is how the stand-ins speak JSON over HTTP: responses,
// RFC 9457 problem details (application/problem+json) for every refusal, and
// request bodies read as exactly one size-limited JSON value.
package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Write writes v as a JSON response with status.
func Write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Details is an RFC 9457 problem details body.
type Details struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// Problem writes a problem+json response (type about:blank).
func Problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Details{Type: "about:blank", Title: title, Status: status, Detail: detail})
}

// Body is the JSON request body a handler expects.
type Body struct {
	Limit int64  // bytes; a larger body is refused with 413
	Name  string // names the body in a wrong Content-Type's problem, e.g. "the request body"
	Shape string // what a malformed body must be, e.g. "a JSON object with text and voice"
	// HideCause leaves the decoder's error out of a malformed body's problem,
	// for bodies that carry secrets.
	HideCause bool
}

// Decode reads the request body into v: a Content-Type, when given, must be
// application/json, and the body exactly one JSON value of at most Limit
// bytes. Otherwise Decode writes the problem (415, 413 or 400) and returns
// false. Keys are matched as the real services' Python and JavaScript
// parsers match them: case-sensitively, the last of duplicate keys winning,
// unknown keys ignored.
func (b Body) Decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			Problem(w, http.StatusUnsupportedMediaType, "Unsupported Media Type", "send "+b.Name+" as application/json")
			return false
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, b.Limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			Problem(w, http.StatusRequestEntityTooLarge, "Request Too Large", fmt.Sprintf("the body exceeds %d bytes", b.Limit))
		} else {
			Problem(w, http.StatusBadRequest, "Malformed Request", "the body could not be read")
		}
		return false
	}
	dec := jsontext.NewDecoder(bytes.NewReader(data), jsontext.AllowDuplicateNames(true))
	if err := jsonv2.UnmarshalDecode(dec, v); err != nil {
		detail := "the body is not " + b.Shape
		if !b.HideCause {
			detail += ": " + err.Error()
		}
		Problem(w, http.StatusBadRequest, "Malformed Request", detail)
		return false
	}
	if _, err := dec.ReadToken(); !errors.Is(err, io.EOF) {
		Problem(w, http.StatusBadRequest, "Malformed Request", "the body holds more than one JSON value")
		return false
	}
	return true
}
