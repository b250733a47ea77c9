package server

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/apierr"
)

// Go's HTTP server resolves a request that carries both Transfer-Encoding
// and Content-Length the way RFC 9112 allows (the chunked framing wins and
// Content-Length is dropped), so no desynchronisation reaches a backend.
// The gateway goes further and refuses such a request, as the RFC suggests
// ("ought to be handled as an error"): the listener below follows the
// framing of every request on a connection and flags the connection when
// the two headers meet; the middleware answers 400 and closes it.

// framingListener wraps accepted connections in a framing tracker.
type framingListener struct{ net.Listener }

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c}, nil
}

type framingKey struct{}

// ConnContext stores the framing tracker in the request context; servers
// that serve a Listen listener set it as http.Server.ConnContext.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*framingConn); ok {
		return context.WithValue(ctx, framingKey{}, fc)
	}
	return ctx
}

// errConflictingFraming refuses a request that declares its body's length
// twice; the connection is closed after the answer.
var errConflictingFraming = apierr.New(apierr.BadFraming, "Transfer-Encoding and Content-Length must not both be present")

// refuseConflictingFraming is the middleware half.
func refuseConflictingFraming(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if fc, ok := c.Request().Context().Value(framingKey{}).(*framingConn); ok && fc.conflict.Load() {
			return errConflictingFraming
		}
		return next(c)
	}
}

const maxTrackedHeader = 64 << 10

type framingState int

const (
	stHeaders   framingState = iota
	stBody                   // fixed-length body
	stChunkSize              // reading a chunk-size line
	stChunkData              // inside a chunk
	stChunkCRLF              // the CRLF after a chunk
	stTrailers               // trailer block after the last chunk
	stOff                    // tracking given up (framing the server rejects anyway)
)

type framingConn struct {
	net.Conn
	conflict atomic.Bool
	state    framingState
	buf      []byte // current header block or line
	remain   int64  // bytes left in a body or chunk
}

func (c *framingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.state != stOff {
		c.feed(p[:n])
	}
	return n, err
}

func (c *framingConn) feed(b []byte) {
	for len(b) > 0 && c.state != stOff {
		switch c.state {
		case stBody, stChunkData:
			k := min(int64(len(b)), c.remain)
			b = b[k:]
			c.remain -= k
			if c.remain == 0 {
				if c.state == stBody {
					c.state = stHeaders
				} else {
					c.state = stChunkCRLF
				}
			}
		case stChunkCRLF:
			c.buf = append(c.buf, b[0])
			b = b[1:]
			if len(c.buf) == 2 {
				if string(c.buf) != "\r\n" {
					c.state = stOff
					break
				}
				c.buf, c.state = c.buf[:0], stChunkSize
			}
		default: // headers, chunk-size line, trailers: read up to a terminator
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				c.buf = append(c.buf, b...)
				b = nil
			} else {
				c.buf = append(c.buf, b[:i+1]...)
				b = b[i+1:]
				c.line()
			}
			if len(c.buf) > maxTrackedHeader {
				c.state = stOff
			}
		}
	}
}

// line handles a completed line in the header, chunk-size or trailer states.
func (c *framingConn) line() {
	switch c.state {
	case stChunkSize:
		s := strings.TrimSpace(string(c.buf))
		if i := strings.IndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		c.buf = c.buf[:0]
		n, err := strconv.ParseInt(strings.TrimSpace(s), 16, 64)
		switch {
		case err != nil || n < 0:
			c.state = stOff
		case n == 0:
			c.state = stTrailers
		default:
			c.state, c.remain = stChunkData, n
		}
	case stTrailers:
		if bytes.Equal(c.buf, []byte("\r\n")) || bytes.Equal(c.buf, []byte("\n")) {
			c.state = stHeaders
		}
		c.buf = c.buf[:0]
	case stHeaders:
		// A header block ends with an empty line; empty lines before a
		// request line are allowed.
		if !bytes.HasSuffix(c.buf, []byte("\r\n\r\n")) && !bytes.HasSuffix(c.buf, []byte("\n\n")) {
			if trimmed := bytes.TrimLeft(c.buf, "\r\n"); len(trimmed) == 0 {
				c.buf = c.buf[:0]
			}
			return
		}
		c.headerBlock(c.buf)
		c.buf = c.buf[:0]
	}
}

func (c *framingConn) headerBlock(block []byte) {
	lines := strings.Split(strings.ReplaceAll(string(block), "\r\n", "\n"), "\n")
	var cl []string
	var te []string
	for _, l := range lines[1:] {
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			cl = append(cl, strings.TrimSpace(value))
		case "transfer-encoding":
			te = append(te, strings.TrimSpace(value))
		}
	}
	switch {
	case len(te) > 0 && len(cl) > 0:
		c.conflict.Store(true)
		c.state = stOff
	case len(te) > 0:
		if len(te) == 1 && strings.EqualFold(te[0], "chunked") {
			c.state = stChunkSize
		} else {
			c.state = stOff
		}
	case len(cl) > 0:
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 {
			c.state = stOff
		} else if n > 0 {
			c.state, c.remain = stBody, n
		}
	}
}
