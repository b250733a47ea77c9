// Package httpjson is how the stand-ins speak JSON over HTTP: responses,
// RFC 9457 problem details (application/problem+json) for every refusal, and
// request bodies read as exactly one size-limited JSON value.
package httpjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
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
// false.
func (b Body) Decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			Problem(w, http.StatusUnsupportedMediaType, "Unsupported Media Type", "send "+b.Name+" as application/json")
			return false
		}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, b.Limit))
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			Problem(w, http.StatusRequestEntityTooLarge, "Request Too Large", fmt.Sprintf("the body exceeds %d bytes", b.Limit))
			return false
		}
		detail := "the body is not " + b.Shape
		if !b.HideCause {
			detail += ": " + err.Error()
		}
		Problem(w, http.StatusBadRequest, "Malformed Request", detail)
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		Problem(w, http.StatusBadRequest, "Malformed Request", "the body holds more than one JSON value")
		return false
	}
	return true
}
