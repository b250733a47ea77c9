// Package apierr owns what a failure means to a client. Each package declares
// its failures as sentinel errors that carry a Code (as nats.go's jetstream
// errors carry their API code); the one table here gives every code its HTTP
// status, title, problem type and fixed headers. Handlers return errors and
// never pick a status: the Echo error handler, the reverse proxy's error
// handler and /ready look the error up here (see package problem, which
// writes the body).
package apierr

import (
	"maps"
	"net/http"
	"time"
)

// Code is the class of a failure, as the client is told of it. The zero
// value is Internal: an error that carries no code is the server's fault.
type Code uint8

// The codes. Each names what went wrong, not the status it is written with;
// the table gives the status.
const (
	Internal         Code = iota // the server's fault; the cause is logged, never shown
	Invalid                      // the request is malformed (bad JSON, bad parameter)
	BadFraming                   // the request's framing is ambiguous; the connection is closed
	Unprocessable                // well-formed, but a field's value is refused
	BodyTooLarge                 // the body is over the route's limit, or the route takes none
	UnsupportedMedia             // the body is not of the route's media type
	LengthRequired               // the body needs a Content-Length
	BodyTimeout                  // the body did not arrive in time
	KeyRefused                   // the X-API-Key is missing, malformed, unknown, revoked or expired
	TokenRefused                 // the bearer token is missing, invalid or expired
	Unauthenticated              // the route was reached without an authenticated caller
	Forbidden                    // the caller may not do this
	NotFound                     // no such resource (or not the caller's)
	Conflict                     // the resource's state does not allow it now
	CreditsExhausted             // the key's credits do not cover the call
	RateLimited                  // too many calls; Retry-After says when to try again
	Unavailable                  // a dependency is down; retry later
	Stopping                     // the gateway is shutting down; the connection is closed
	BadGateway                   // the backend failed or answered unusably
	GatewayTimeout               // the backend did not answer in time
	numCodes
)

// Entry is what a code is written as.
type Entry struct {
	Status int
	Title  string
	// Type is the problem type URI (RFC 9457); "about:blank" says the
	// status is all there is to know.
	Type string
	// Header holds the fixed headers of the code; a Retry-After comes from
	// the error itself (RetryIn).
	Header http.Header
}

func entry(status int, header ...string) Entry {
	e := Entry{Status: status, Title: http.StatusText(status), Type: "about:blank"}
	if len(header) > 0 {
		e.Header = http.Header{}
		for i := 0; i+1 < len(header); i += 2 {
			e.Header.Set(header[i], header[i+1])
		}
	}
	return e
}

// table is the one place where a failure's status is decided.
var table = [numCodes]Entry{
	Internal:         entry(http.StatusInternalServerError),
	Invalid:          entry(http.StatusBadRequest),
	BadFraming:       entry(http.StatusBadRequest, "Connection", "close"),
	Unprocessable:    entry(http.StatusUnprocessableEntity),
	BodyTooLarge:     entry(http.StatusRequestEntityTooLarge),
	UnsupportedMedia: entry(http.StatusUnsupportedMediaType),
	LengthRequired:   entry(http.StatusLengthRequired),
	BodyTimeout:      entry(http.StatusRequestTimeout),
	KeyRefused:       entry(http.StatusUnauthorized),
	TokenRefused:     entry(http.StatusUnauthorized, "WWW-Authenticate", `Bearer error="invalid_token"`),
	Unauthenticated:  entry(http.StatusUnauthorized),
	Forbidden:        entry(http.StatusForbidden),
	NotFound:         entry(http.StatusNotFound),
	Conflict:         entry(http.StatusConflict),
	CreditsExhausted: entry(http.StatusPaymentRequired),
	RateLimited:      entry(http.StatusTooManyRequests),
	Unavailable:      entry(http.StatusServiceUnavailable),
	Stopping:         entry(http.StatusServiceUnavailable, "Connection", "close"),
	BadGateway:       entry(http.StatusBadGateway),
	GatewayTimeout:   entry(http.StatusGatewayTimeout),
}

// Lookup returns the entry of c; an unknown code is Internal's. The entry's
// Header is the caller's to keep (a copy).
func Lookup(c Code) Entry {
	if c >= numCodes {
		c = Internal
	}
	e := table[c]
	e.Header = e.Header.Clone()
	return e
}

// InternalDetail is what the client is told of an error without a code.
const InternalDetail = "internal error"

// Coded is an error that knows what it means to the client; *Error is one,
// and a package's typed errors implement it to carry their own data (as
// keys.ThrottledError carries its wait).
type Coded interface {
	error
	APIError() *Error
}

// Error is a failure with its code and the detail the client is told. A
// package declares its failures with New; an instance made with WithDetail,
// RetryIn or WithMembers still matches its sentinel with errors.Is. An Error
// is immutable once declared.
type Error struct {
	code       Code
	detail     string
	retryAfter time.Duration
	retry      bool
	members    map[string]any
	kind       *Error // what this is an instance of; nil for a sentinel
}

// New declares a failure of code with the detail the client is told.
func New(code Code, detail string) *Error { return &Error{code: code, detail: detail} }

// Error is the detail.
func (e *Error) Error() string { return e.detail }

// APIError implements Coded.
func (e *Error) APIError() *Error { return e }

// Code is the failure's class.
func (e *Error) Code() Code { return e.code }

// Detail is what the client is told.
func (e *Error) Detail() string { return e.detail }

// RetryAfter is the Retry-After of the failure, and whether it has one.
func (e *Error) RetryAfter() (time.Duration, bool) { return e.retryAfter, e.retry }

// Members are the problem's extension members (RFC 9457 §3.2), nil if none.
func (e *Error) Members() map[string]any { return e.members }

// Is reports whether e is an instance of target (or of an instance of it).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	for k := e.kind; k != nil; k = k.kind {
		if k == t {
			return true
		}
	}
	return false
}

func (e *Error) instance() *Error {
	c := *e
	c.kind = e
	return &c
}

// WithDetail is an instance of e that tells the client detail instead.
func (e *Error) WithDetail(detail string) *Error {
	c := e.instance()
	c.detail = detail
	return c
}

// RetryIn is an instance of e answered with Retry-After: d in whole seconds,
// rounded up (0 if d is not positive).
func (e *Error) RetryIn(d time.Duration) *Error {
	c := e.instance()
	c.retryAfter, c.retry = d, true
	return c
}

// WithMembers is an instance of e whose problem body also holds members.
func (e *Error) WithMembers(members map[string]any) *Error {
	c := e.instance()
	c.members = maps.Clone(members)
	return c
}
