package server

import (
	"fmt"
	"strings"
	"testing"
)

func TestFramingTracker(t *testing.T) {
	ok1 := "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	ok2 := "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: y\r\n\r\n"
	get := "\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n"
	// A body that looks like a conflicting request must not be mistaken for one.
	decoy := "POST /d HTTP/1.1\r\nContent-Length: 64\r\n\r\n" + "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[:64]
	bad := "POST /e HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	for _, tc := range []struct {
		name     string
		stream   string
		conflict bool
	}{
		{"fixed", ok1, false},
		{"chunked", ok2, false},
		{"pipelined mix", ok1 + ok2 + get + ok1, false},
		{"decoy in a body", decoy + get, false},
		{"conflict", bad, true},
		{"conflict after good ones", ok1 + ok2 + get + bad, true},
	} {
		for _, step := range []int{1, 3, 7, 1 << 20} {
			c := &framingConn{}
			for s := tc.stream; len(s) > 0; {
				n := min(step, len(s))
				c.feed([]byte(s[:n]))
				s = s[n:]
			}
			if c.conflict.Load() != tc.conflict {
				t.Errorf("%s (reads of %d): conflict %v, want %v", tc.name, step, c.conflict.Load(), tc.conflict)
			}
			if !tc.conflict && c.state != stHeaders {
				t.Errorf("%s (reads of %d): ended in state %d, want between requests", tc.name, step, c.state)
			}
		}
	}
	// An oversized header block stops tracking instead of growing.
	c := &framingConn{}
	c.feed([]byte("GET / HTTP/1.1\r\nX: " + strings.Repeat("a", maxTrackedHeader+1)))
	if c.state != stOff || len(c.buf) > maxTrackedHeader+1<<20 {
		t.Fatalf("state %d, buffer %d", c.state, len(c.buf))
	}
}

func FuzzFramingTracker(f *testing.F) {
	f.Add([]byte("POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"))
	f.Add([]byte("POST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"))
	// The property: the verdict does not depend on how TCP cut the stream.
	// Fed whole, byte by byte, or in two reads split anywhere, the tracker
	// ends in the same state and flags a conflict the same way.
	f.Fuzz(func(t *testing.T, b []byte) {
		whole := &framingConn{}
		whole.feed(b)
		if len(whole.buf) > maxTrackedHeader+len(b) {
			t.Fatal("unbounded buffer")
		}
		verdict := func(c *framingConn) string {
			return fmt.Sprintf("conflict=%v state=%d remain=%d", c.conflict.Load(), c.state, c.remain)
		}
		bytewise := &framingConn{}
		for i := range b {
			bytewise.feed(b[i : i+1])
		}
		if got, want := verdict(bytewise), verdict(whole); got != want {
			t.Fatalf("byte by byte: %s, whole: %s, for %q", got, want, b)
		}
		cut := len(b) / 3
		split := &framingConn{}
		split.feed(b[:cut])
		split.feed(b[cut:])
		if got, want := verdict(split), verdict(whole); got != want {
			t.Fatalf("split at %d: %s, whole: %s, for %q", cut, got, want, b)
		}
	})
}
