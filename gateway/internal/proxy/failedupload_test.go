package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestAFailedUploadIsReadable: when the backend of an upload is down, or
// answers before it has read the body, the client — which sends no
// "Expect: 100-continue" and writes the whole 7.7 MB before it reads —
// reads the gateway's problem+json instead of a connection reset under its
// upload, and nothing is charged.
func TestAFailedUploadIsReadable(t *testing.T) {
	// Nothing listens on port 1, and no test is given it: a port picked
	// and closed could be taken by a parallel test's server.
	const down = "http://127.0.0.1:1"
	early := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
	}))
	t.Cleanup(early.Close)
	// 8 minutes of 16 kHz 8-bit mono: 7.7 MB, 80 credits.
	ct, body := form(t, wavFile(1, 1, 16000, 16000, 1, 8, 480*16000, 480*16000, nil))
	for _, tc := range []struct {
		name, backend string
		// problem: the gateway answers; otherwise the backend's own
		// answer is passed on.
		problem bool
	}{
		{"backend down", down, true},
		{"backend answers before reading", early.URL, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := newEnv(t, "capture", tc.backend, "capture")
			secret, k := ev.key("pro")
			ev.do("GET", "/v1/key", secret, "", "") // loads the key's state
			before := ev.balance(k)
			resp, out := uploadWithoutExpect(t, ev.url, secret, ct, body)
			t.Logf("%d-byte upload without Expect: %d %s", len(body), resp.StatusCode, out)
			if resp.StatusCode < 500 || (tc.problem && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json")) {
				t.Fatalf("answered %d %q, want a 5xx (problem+json: %v)", resp.StatusCode, resp.Header.Get("Content-Type"), tc.problem)
			}
			if got := ev.balance(k); got != before {
				t.Fatalf("balance %d after a failed upload, want %d", got, before)
			}
		})
	}
}

// uploadWithoutExpect posts an upload as most HTTP clients do: no "Expect:
// 100-continue", the whole body written before the answer is read.
func uploadWithoutExpect(t *testing.T, url, secret, ct string, body []byte) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := fmt.Fprintf(conn, "POST /v1/stt/transcribe HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", secret, ct, len(body)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(body); err != nil {
		t.Fatalf("writing the %d-byte upload: %v", len(body), err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer after the upload: %v", err)
	}
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer after the upload: %v", err)
	}
	return resp, out
}
