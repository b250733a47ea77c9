package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// slowSTT delays the STT stand-in's transcriptions by delay once their
// upload is in, and tells arrived (without blocking) that one came.
func slowSTT(delay time.Duration, arrived chan<- struct{}) func(string, http.Handler) http.Handler {
	return func(name string, h http.Handler) http.Handler {
		if name != "stt" {
			return h
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				h.ServeHTTP(w, r)
				return
			}
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			select {
			case arrived <- struct{}{}:
			default:
			}
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			h.ServeHTTP(w, r)
		})
	}
}

type sttResult struct {
	status int
	body   string
	err    error
}

// transcribeAsync sends a 61-second upload (11 credits on the pro tier).
func (s *stack) transcribeAsync(gw, secret string) <-chan sttResult {
	ct, body := multipartBody(s.t, "file", "audio.wav", wavFile(s.t, 61))
	out := make(chan sttResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		resp, b, err := s.http.Do(ctx, "POST", gw+"/v1/stt/transcribe", body, map[string]string{"X-API-Key": secret, "Content-Type": ct})
		if err != nil {
			out <- sttResult{err: err}
			return
		}
		out <- sttResult{status: resp.StatusCode, body: string(b)}
	}()
	return out
}

// TestSIGTERMDuringALongSTTCall: SIGTERM arrives while an STT call waits
// 25 s for its backend (longer than a drain of 20 s would last). The
// gateway stops accepting connections at once, lets the call finish and
// answer 200, and only then exits; the balance is exact: the ledger holds
// the call's 11 credits, Redis and Postgres agree on grant − 11.
// With SHUTDOWN_TIMEOUT shorter than the call, the call is cancelled
// instead and its hold released: nothing charged, Redis = Postgres = grant.
func TestSIGTERMDuringALongSTTCall(t *testing.T) {
	const grant, charge = 5000, 11
	for _, tc := range []struct {
		name     string
		env      []string
		wantCall func(sttResult) bool
		charged  int64
	}{
		{"the call finishes", nil, func(r sttResult) bool { return r.err == nil && r.status == 200 }, charge},
		{"the drain ends first", []string{"SHUTDOWN_TIMEOUT=3s"}, func(r sttResult) bool { return r.err != nil || r.status >= 500 }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			s := newStack(t, stackOpts{backend: slowSTT(25*time.Second, arrived), extraEnv: tc.env})
			gw := s.gwURLs[0]
			tok := s.login("user@example.com")
			k := s.createKey(gw, tok, map[string]any{"name": "shutdown", "tier": "pro"})
			// A first free call gives the key its balance in Redis.
			if resp, b := s.do("GET", gw+"/v1/key", nil, map[string]string{"X-API-Key": k.Key}); resp.StatusCode != 200 {
				t.Fatalf("GET /v1/key: %d %s", resp.StatusCode, b)
			}
			res := s.transcribeAsync(gw, k.Key)
			select {
			case <-arrived:
			case r := <-res:
				t.Fatalf("the call ended before it reached the backend: %+v", r)
			case <-time.After(60 * time.Second):
				t.Fatal("the STT call never reached the backend")
			}
			sent := time.Now()
			exited := make(chan struct{})
			go func() { s.gateways[0].StopWithin(6 * time.Minute); close(exited) }()

			// No new connection is accepted while the call runs.
			addr := strings.TrimPrefix(gw, "http://")
			eventuallyWithin(t, 20*time.Second, "the listener closed", func() (bool, string) {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					return true, ""
				}
				_ = c.Close()
				return false, "a connection was accepted after SIGTERM"
			})
			var r sttResult
			select {
			case r = <-res:
			case <-time.After(3 * time.Minute):
				t.Fatal("the STT call never ended")
			}
			<-exited
			t.Logf("SIGTERM during an STT call (%s): the call ended %v after the signal with %d %v %.120s; the gateway exited after it",
				tc.name, time.Since(sent).Round(time.Millisecond), r.status, r.err, r.body)
			if !tc.wantCall(r) {
				t.Fatalf("the call in flight: %d %v %s", r.status, r.err, r.body)
			}

			eventuallyWithin(t, 60*time.Second, "the ledger has the call's charge", func() (bool, string) {
				_, credits := s.ledger(k.ID)
				return credits == tc.charged, fmt.Sprintf("ledger %d credits, want %d", credits, tc.charged)
			})
			// Nothing more arrives: the charge stays what it is.
			if _, credits := s.ledger(k.ID); credits != tc.charged {
				t.Fatalf("ledger %d credits, want %d", credits, tc.charged)
			}
			pg, rd := s.balances(k.ID, grant)
			t.Logf("balances after the shutdown: ledger %d, Postgres %d, Redis %d (grant %d)", tc.charged, pg, rd, grant)
			if pg != grant-tc.charged || rd != grant-tc.charged {
				t.Fatalf("balances: Postgres %d, Redis %d, want both %d", pg, rd, grant-tc.charged)
			}
		})
	}
}
