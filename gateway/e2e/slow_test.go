package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowConn is one connection that sends the start of a request and then
// nothing: how long the gateway keeps it, and what it answered.
type slowConn struct {
	held   time.Duration // from the last byte sent to the close
	status int           // 0: closed without an answer
	err    error         // the probe itself failed (dial, write)
}

// holdSlow opens n connections to addr at once, sends each prefix and waits
// (up to probe) for the gateway to close it.
func holdSlow(addr string, n int, prefix string, probe time.Duration) []slowConn {
	out := make([]slowConn, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 30*time.Second)
			if err != nil {
				out[i].err = err
				return
			}
			defer c.Close()
			if _, err := c.Write([]byte(prefix)); err != nil {
				out[i].err = err
				return
			}
			sent := time.Now()
			_ = c.SetReadDeadline(sent.Add(probe))
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err == nil {
				out[i].status = resp.StatusCode
				_ = resp.Body.Close()
			}
			// Then the connection must end: EOF or a reset, not the probe's deadline.
			_, err = br.ReadByte()
			for err == nil {
				_, err = br.ReadByte()
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				out[i].err = fmt.Errorf("still open after %v", probe)
			}
			out[i].held = time.Since(sent)
		}()
	}
	wg.Wait()
	return out
}

// summary is the spread of the held times, and the statuses seen.
func summary(cs []slowConn) (p50, max time.Duration, statuses map[int]int, failed []error) {
	held := make([]time.Duration, 0, len(cs))
	statuses = map[int]int{}
	for _, c := range cs {
		if c.err != nil {
			failed = append(failed, c.err)
			continue
		}
		held = append(held, c.held)
		statuses[c.status]++
	}
	slices.Sort(held)
	if len(held) > 0 {
		p50, max = held[len(held)/2], held[len(held)-1]
	}
	return p50, max, statuses, failed
}

// TestSlowClients is the slow-client row of the fault matrix against the
// gateway binary: 1,000 connections that send half a request header are
// closed by the header deadline (5 s), 200 calls with a valid key that send
// their headers and 1 byte of a 1,000-byte JSON body by the JSON body
// deadline (10 s, answered 408), and the gateway's goroutines go back to
// their idle count afterwards. The bounds asserted are the product's
// (header 5 s; JSON body ≤ 15 s) plus room for a loaded machine to notice
// the close; the figures are printed.
func TestSlowClients(t *testing.T) {
	// The per-key cap would answer most of the 200 calls of one key at
	// once (429); here every one of them must wait for its body.
	s := newStack(t, stackOpts{pricing: testPricing, noWorkers: true, extraEnv: []string{"CONCURRENT_CALLS_PER_KEY=256"}})
	gw := s.gwURLs[0]
	addr := strings.TrimPrefix(gw, "http://")
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "slow", "tier": "soak"})
	for range 20 {
		if resp, b := s.do("POST", gw+"/v1/search", `{"query":"warm up"}`, map[string]string{"X-API-Key": k.Key}); resp.StatusCode != 200 {
			t.Fatalf("warm-up call: %d %s", resp.StatusCode, b)
		}
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	idle := s.metric(gw+"/metrics", "go_goroutines ")
	t.Logf("idle gateway: %.0f goroutines", idle)

	const probeRoom = 10 * time.Second
	headers := holdSlow(addr, 1000, "POST /v1/search HTTP/1.1\r\nHost: gw\r\nX-API-Key: "+k.Key+"\r\n", 5*time.Second+probeRoom)
	p50, max, statuses, failed := summary(headers)
	t.Logf("SLOW HEADERS: 1000 connections, closed after p50 %v, max %v (header deadline 5 s); statuses %v; probe failures %d",
		p50.Round(time.Millisecond), max.Round(time.Millisecond), statuses, len(failed))
	if len(failed) > 0 {
		t.Fatalf("%d slow-header connections: first %v", len(failed), failed[0])
	}
	if max > 5*time.Second+probeRoom {
		t.Fatalf("a slow-header connection stayed open %v", max)
	}

	body := "POST /v1/search HTTP/1.1\r\nHost: gw\r\nX-API-Key: " + k.Key +
		"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
	bodies := holdSlow(addr, 200, body, 15*time.Second+probeRoom)
	p50, max, statuses, failed = summary(bodies)
	t.Logf("SLOW JSON BODIES: 200 calls with 1 of 1000 bytes sent, closed after p50 %v, max %v (body deadline 10 s); statuses %v; probe failures %d",
		p50.Round(time.Millisecond), max.Round(time.Millisecond), statuses, len(failed))
	if len(failed) > 0 {
		t.Fatalf("%d slow-body connections: first %v", len(failed), failed[0])
	}
	if max > 15*time.Second+probeRoom || statuses[http.StatusRequestTimeout] != 200 {
		t.Fatalf("slow bodies: max %v, statuses %v; want all 200 answered 408 within 15 s", max, statuses)
	}

	// Every goroutine of those connections ends: the count returns to the
	// idle one (a few of the gateway's own may come and go).
	eventuallyWithin(t, 60*time.Second, "goroutines back to idle", func() (bool, string) {
		n := s.metric(gw+"/metrics", "go_goroutines ")
		return n <= idle+10, fmt.Sprintf("%.0f goroutines, idle %.0f", n, idle)
	})
	t.Logf("goroutines after: %.0f (idle %.0f)", s.metric(gw+"/metrics", "go_goroutines "), idle)
	if resp, b := s.do("POST", gw+"/v1/search", `{"query":"after"}`, map[string]string{"X-API-Key": k.Key}); resp.StatusCode != 200 {
		t.Fatalf("a call after the slow clients: %d %s", resp.StatusCode, b)
	}
}
