package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
)

// A client that opens a call and then sends its body slowly holds a
// connection, a goroutine and (with a valid key) a slot of its key for as
// long as the server waits. The HTTP server's own read timeout is long,
// for uploads; each route bounds its body instead: it must start arriving
// within the route's BodyTimeout and keep up a minimum rate after that,
// the way Apache's mod_reqtimeout does ("body=10,MinRate=…"). The deadline
// is the connection's read deadline, so a client that sends nothing at all
// is cut off too.

// MinBodyRate is the slowest a request body may arrive once its route's
// BodyTimeout has been used up: every MinBodyRate bytes received give the
// client one more second. 4 KiB/s is 32 kbit/s, below a phone on a poor
// link and below real-time 8 kHz audio.
const MinBodyRate = 4 << 10

// deadlineBody moves the connection's read deadline forward as the body
// arrives, and clears it once the body is read: after the body the server
// keeps reading the connection in the background to notice a client that
// goes away, and a deadline left behind would end the call.
type deadlineBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	start   time.Time
	initial time.Duration
	until   time.Time // at most this (the request's whole read budget)
	n       int64
	set     time.Time // the deadline last set
	done    bool
}

// bodyDeadline wraps the request's body; the deadline starts now. The
// request is copied, not changed: the server looks at its own request's
// body after the handler, and a body it does not know it reads to the end
// (answering "100 Continue" to a client that asked) before it answers.
func bodyDeadline(c echo.Context, initial, max time.Duration) *deadlineBody {
	now := time.Now()
	req := c.Request().WithContext(c.Request().Context()) // a shallow copy
	b := &deadlineBody{ReadCloser: req.Body, rc: http.NewResponseController(c.Response().Writer), start: now, initial: initial, until: now.Add(max)}
	b.extend()
	req.Body = b
	c.SetRequest(req)
	return b
}

func (b *deadlineBody) deadline() time.Time {
	earned := b.n / MinBodyRate // seconds; compared before the multiplication can overflow
	if limit := int64(b.until.Sub(b.start) / time.Second); earned > limit {
		return b.until
	}
	if d := b.start.Add(b.initial + time.Duration(earned)*time.Second); d.Before(b.until) {
		return d
	}
	return b.until
}

func (b *deadlineBody) extend() {
	if b.done {
		return
	}
	// Setting the deadline is cheap, but not free: move it in steps of at
	// least a second.
	if d := b.deadline(); d.Sub(b.set) >= time.Second || d.Before(b.set) {
		b.set = d
		_ = b.rc.SetReadDeadline(d) // not supported by test recorders: no deadline then
	}
}

// finish clears the deadline: the body is read (or given up on by the
// handler, which answers and ends the call).
func (b *deadlineBody) finish() {
	if !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	switch {
	case errors.Is(err, io.EOF):
		b.finish()
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		return n, errBodyTooSlow
	case err == nil:
		b.extend()
	}
	return n, err
}

// callSlots caps the calls in flight per key on this gateway, so that one
// key cannot hold an unbounded number of connections and backend calls.
// Safe for concurrent use.
type callSlots struct {
	mu     sync.Mutex
	inUse  map[string]int
	perKey int
}

func newCallSlots(perKey int) *callSlots { return &callSlots{inUse: map[string]int{}, perKey: perKey} }

// acquire takes one of the key's limit slots (perKey when limit is 0); false
// when all are in use. Every true is matched by one release.
func (s *callSlots) acquire(keyID string, limit int) bool {
	if limit <= 0 {
		limit = s.perKey
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inUse[keyID] >= limit {
		return false
	}
	s.inUse[keyID]++
	return true
}

func (s *callSlots) release(keyID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inUse[keyID] <= 1 {
		delete(s.inUse, keyID)
		return
	}
	s.inUse[keyID]--
}
