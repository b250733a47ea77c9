package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
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
// served. Of 1,100 connections from 127.0.0.1 held open at once at most
// 1,024 are kept, the rest answered 429 and closed, while 127.0.0.2 is
// served. (That slow-header connections are gone within 5 s is
// TestSlowClients.)
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

	// Open connections of one address. Each connection makes one complete
	// call and stays open, idle, as a keep-alive client leaves it: such a
	// connection lasts the idle timeout (minutes), so the cap stays full for
	// as long as the test holds them, however slowly a busy machine dials.
	const perAddr, conns = 1024, 1100
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	held, refusedConns := holdIdle(t, addr, conns)
	defer func() { closeAll(held) }()
	// Connections of the test's own from a moment before may have held a
	// slot while the others dialled; each slot they give back is taken by
	// one more idle connection, until the gateway refuses a new one.
	extra := 0
	eventually(t, "a new connection from 127.0.0.1 refused while the cap is full", func() (bool, string) {
		c, status, err := idleConn(addr)
		switch {
		case err != nil:
			return false, err.Error()
		case status == http.StatusTooManyRequests:
			return true, ""
		case status == http.StatusOK:
			held = append(held, c)
			extra++
			return false, fmt.Sprintf("served on connection %d", len(held))
		}
		return false, fmt.Sprintf("status %d", status)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if resp, body, err := other.Do(ctx, "GET", gw+"/health", nil, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("another address while 127.0.0.1 is at its cap: %v %v %s", resp, err, body)
	}
	kept := len(held)
	t.Logf("PER-ADDRESS CAP (%d): of %d idle connections from one address %d were kept and %d refused 429; %d more kept once earlier ones closed, then a new one refused",
		perAddr, conns, kept-extra, refusedConns, extra)
	if kept-extra+refusedConns != conns || kept > perAddr || kept < perAddr-8 {
		t.Fatalf("of %d connections %d were kept (%d more later) and %d refused 429; want at most %d (and nearly that many) kept, the rest refused",
			conns, kept-extra, extra, refusedConns, perAddr)
	}
	closeAll(held)
	backToIdle(t, s, gw, idle)
}

// holdIdle opens n connections to addr at once, each making one complete
// call. It returns those that were served and stay open, and the number
// refused with the cap's 429 problem+json (and then closed by the
// gateway). Any other outcome fails the test.
func holdIdle(t *testing.T, addr string, n int) ([]net.Conn, int) {
	t.Helper()
	type outcome struct {
		c      net.Conn
		status int
		err    error
	}
	out := make([]outcome, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, status, err := idleConn(addr)
			out[i] = outcome{c, status, err}
		})
	}
	wg.Wait()
	var held []net.Conn
	refused := 0
	for _, o := range out {
		switch {
		case o.err != nil:
			closeAll(held)
			t.Fatalf("idle connection: %v", o.err)
		case o.status == http.StatusOK:
			held = append(held, o.c)
		case o.status == http.StatusTooManyRequests:
			refused++
		default:
			closeAll(held)
			t.Fatalf("idle connection answered %d", o.status)
		}
	}
	return held, refused
}

// idleConn dials addr and makes one complete call on the connection. A
// 200 leaves the connection open and idle, returned to the caller. A 429
// must be the cap's problem+json with Retry-After, and the gateway must
// then close the connection.
func idleConn(addr string) (net.Conn, int, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")); err != nil {
		_ = c.Close()
		return nil, 0, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		_ = c.Close()
		return nil, 0, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		_ = c.Close()
		return nil, 0, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		_ = c.SetDeadline(time.Time{})
		return c, http.StatusOK, nil
	case http.StatusTooManyRequests:
		defer c.Close()
		if resp.Header.Get("Content-Type") != "application/problem+json" || resp.Header.Get("Retry-After") == "" {
			return nil, 0, fmt.Errorf("429 without problem+json or Retry-After: %v %s", resp.Header, body)
		}
		// Then the gateway closes it: EOF or a reset, not the deadline.
		if _, err := br.ReadByte(); err == nil {
			return nil, 0, fmt.Errorf("a refused connection stays open")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil, 0, fmt.Errorf("a refused connection still open after 30 s")
		}
		return nil, http.StatusTooManyRequests, nil
	}
	_ = c.Close()
	return nil, resp.StatusCode, nil
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		_ = c.Close()
	}
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
