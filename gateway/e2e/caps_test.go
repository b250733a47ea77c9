package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/services/testenv"
)

// TestDefaultCapsHold: against the gateway binary with its default
// settings, one key cannot hold more than CONCURRENT_CALLS_PER_KEY (64)
// calls in flight, and one client address no more than
// CONNECTIONS_PER_ADDRESS (1024) open connections. Of 100 slow calls of
// one key at most 64 wait for their bodies (408 at the body deadline), the
// others are refused 429; a complete call of the key meanwhile is refused
// at once with 429 problem+json and Retry-After, while another key is
// served. Of 1,100 slow-header connections from 127.0.0.1 at most 1,024 are
// kept, the rest answered 429 and closed, while 127.0.0.2 is served.
func TestDefaultCapsHold(t *testing.T) {
	s := newStack(t, stackOpts{pricing: testPricing, noWorkers: true})
	gw := s.gwURLs[0]
	addr := strings.TrimPrefix(gw, "http://")
	tok := s.login("user@example.com")
	a := s.createKey(gw, tok, map[string]any{"name": "capped", "tier": "soak"})
	b := s.createKey(gw, tok, map[string]any{"name": "other", "tier": "soak"})
	other := testenv.HTTP{Client: fromOtherAddress()}
	call := func(key string) (*http.Response, []byte) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, body, err := other.Do(ctx, "POST", gw+"/v1/search", []byte(`{"query":"q"}`), map[string]string{"X-API-Key": key, "Content-Type": "application/json"})
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}
	for _, k := range []keyObject{a, b} {
		if resp, body := call(k.Key); resp.StatusCode != 200 {
			t.Fatalf("warm-up call: %d %s", resp.StatusCode, body)
		}
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	idle := s.metric(gw+"/metrics", "go_goroutines ")

	// Calls of one key in flight.
	const perKey, slowCalls = proxy.DefaultCallsPerKey, 100
	done := make(chan []slowConn, 1)
	results := make(chan []slowConn, 1000)
	launched, total := 0, 0
	launch := func(n int) {
		var sent sync.WaitGroup
		sent.Add(n)
		go func() {
			results <- holdSlowNotify(addr, n, func(int) string {
				return "POST /v1/search HTTP/1.1\r\nHost: gw\r\nX-API-Key: " + a.Key +
					"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
			}, 15*time.Second+2*slowAllowance, sent.Done)
		}()
		sent.Wait()
		launched, total = launched+1, total+n
	}
	launch(slowCalls)
	// Once the key's slots are all held, a complete call of it is refused
	// at once. A complete call served before that held a slot for a moment,
	// in which a slow call may have been refused; each such one is
	// replaced by another slow call.
	served, last := 0, ""
	var refusedIn time.Duration
	for deadline := time.Now().Add(proxy.JSONBodyTimeout); refusedIn == 0 && time.Now().Before(deadline); {
		start := time.Now()
		resp, body := call(a.Key)
		switch resp.StatusCode {
		case http.StatusTooManyRequests:
			refusedIn = time.Since(start)
			if resp.Header.Get("Content-Type") != "application/problem+json" || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "in flight") {
				t.Fatalf("429 without problem+json, Retry-After or the reason: %v %s", resp.Header, body)
			}
		case http.StatusOK:
			served++
			launch(1)
		}
		last = fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
	go func() {
		var all []slowConn
		for range launched {
			all = append(all, <-results...)
		}
		done <- all
	}()
	if refusedIn == 0 {
		t.Fatalf("no complete call of the key refused while its slow calls waited (%d served, last %s); the slow calls: %v", served, last, summary(<-done))
	}
	if resp, body := call(b.Key); resp.StatusCode != 200 {
		t.Fatalf("another key while the first is at its cap: %d %s", resp.StatusCode, body)
	}
	calls := summary(<-done)
	t.Logf("PER-KEY CAP (%d): %d slow calls of one key (%d of them replacing one refused while a complete call was served): %v; a complete call refused 429 in %v",
		perKey, total, total-slowCalls, calls, refusedIn.Round(time.Millisecond))
	if len(calls.failed) > 0 {
		t.Fatalf("slow calls: %v", calls)
	}
	waited, refused := calls.statuses[http.StatusRequestTimeout], calls.statuses[http.StatusTooManyRequests]
	if waited+refused != total || waited > perKey {
		t.Fatalf("of %d slow calls %d waited for their body (408) and %d were refused (429); want at most %d waiting, the rest refused",
			total, waited, refused, perKey)
	}
	if resp, body := call(a.Key); resp.StatusCode != 200 {
		t.Fatalf("the key once its slow calls ended: %d %s", resp.StatusCode, body)
	}

	// Open connections of one address.
	const perAddr, conns = 1024, 1100
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	go func() {
		done <- holdSlow(addr, conns, func(int) string { return "GET /v1/search/engines HTTP/1.1\r\nHost: gw\r\n" }, 5*time.Second+2*slowAllowance)
	}()
	eventually(t, "a new connection from 127.0.0.1 refused while the cap is full", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, body, err := s.http.Do(ctx, "GET", gw+"/health", nil, map[string]string{"Connection": "close"})
		if err != nil {
			return false, err.Error()
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			if resp.Header.Get("Content-Type") != "application/problem+json" || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("429 without problem+json or Retry-After: %v %s", resp.Header, body)
			}
			return true, ""
		}
		return false, fmt.Sprintf("%d %s", resp.StatusCode, body)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if resp, body, err := other.Do(ctx, "GET", gw+"/health", nil, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("another address while 127.0.0.1 is at its cap: %v %v %s", resp, err, body)
	}
	open := summary(<-done)
	t.Logf("PER-ADDRESS CAP (%d): %d slow-header connections from one address: %v", perAddr, conns, open)
	if len(open.failed) > 0 {
		t.Fatalf("slow-header connections: %v", open)
	}
	kept, turned := open.statuses[0], open.statuses[http.StatusTooManyRequests]
	// A few of the cap's slots may still be held by the test's own
	// connections of a moment before (closed, not yet noticed).
	if kept+turned != conns || kept > perAddr || kept < perAddr-8 {
		t.Fatalf("of %d connections %d were kept and %d refused 429; want at most %d (and nearly that many) kept, the rest refused",
			conns, kept, turned, perAddr)
	}
	backToIdle(t, s, gw, idle)
}

// fromOtherAddress is an HTTP client whose connections come from 127.0.0.2,
// so that they do not count against the caps of 127.0.0.1's connections.
func fromOtherAddress() *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 10 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
}
