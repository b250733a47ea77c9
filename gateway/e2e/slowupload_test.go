package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/proxy"
)

// sttCall is what the STT stand-in saw of one call: the status it answered,
// how much of the upload it read, and how reading it ended.
type sttCall struct {
	status int
	read   int64
	err    error // nil: the body was read to its end
}

// sttCalls records the stand-in's calls by X-Request-Id once each has
// ended. Safe for concurrent use.
type sttCalls struct {
	mu sync.Mutex
	by map[string]sttCall
}

func (c *sttCalls) wrap(name string, h http.Handler) http.Handler {
	if name != "stt" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := &countedBody{ReadCloser: r.Body}
		r.Body = body
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.by[r.Header.Get("X-Request-Id")] = sttCall{status: sw.status, read: body.n, err: body.err}
	})
}

func (c *sttCalls) of(id string) (sttCall, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.by[id]
	return v, ok
}

type countedBody struct {
	io.ReadCloser
	n   int64
	err error
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) && b.err == nil {
		b.err = err
	}
	return n, err
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// pacedUpload is one STT upload sent at a set pace over a raw connection,
// the way a client without "Expect: 100-continue" sends it: initial bytes
// of the body at once, then rate bytes a second, until the body is sent or
// an answer arrives.
type pacedUpload struct {
	name    string
	initial int
	rate    int // bytes per second after the initial ones
	// What happened.
	status      int
	contentType string
	body        []byte
	after       time.Duration // from the headers sent to the answer or the close
	sent        int
	err         error
}

func (u *pacedUpload) run(addr, key, requestID, contentType string, body []byte) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		u.err = err
		return
	}
	defer c.Close()
	head := fmt.Sprintf("POST /v1/stt/transcribe HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\nX-Request-Id: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n",
		key, requestID, contentType, len(body))
	if _, err := c.Write([]byte(head)); err != nil {
		u.err = err
		return
	}
	start := time.Now()
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		_ = c.SetReadDeadline(start.Add(5 * time.Minute))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		u.after = time.Since(start)
		if err != nil {
			return // closed without an answer
		}
		u.status, u.contentType = resp.StatusCode, resp.Header.Get("Content-Type")
		u.body, _ = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for u.sent < len(body) {
		// The pace is kept from the start: a late tick sends what is due.
		due := min(len(body), u.initial+int(time.Since(start).Seconds()*float64(u.rate)))
		if due > u.sent {
			if _, err := c.Write(body[u.sent:due]); err != nil {
				break // cut off; the answer, if any, is read meanwhile
			}
			u.sent = due
		}
		select {
		case <-answered:
			return
		case <-tick.C:
		}
	}
	<-answered
}

// TestSlowUploadIsCut: an STT upload must keep up proxy.MinBodyRate once
// its route's grace (proxy.UploadBodyTimeout) is used up. Against the
// gateway binary with the STT stand-in: an upload that sends its first
// 70 KiB (so the call is priced, held and its backend call started) and
// then trickles at 1/32 of the rate is cut when its earned time runs out,
// answered 408 problem+json, its hold released and the backend call
// aborted before the stand-in read all of it; one that trickles from the
// start is cut before the backend is called; and one sent at 1.25 times
// the rate, for longer than the grace, is served and charged. Nothing is
// charged for the cut ones, and the gateway's goroutines return to idle.
func TestSlowUploadIsCut(t *testing.T) {
	calls := &sttCalls{by: map[string]sttCall{}}
	s := newStack(t, stackOpts{pricing: testPricing, noWorkers: true, backend: calls.wrap})
	gw := s.gwURLs[0]
	addr := strings.TrimPrefix(gw, "http://")
	tok := s.login("user@example.com")
	// 24 s of 8 kHz 8-bit audio: 192,000 bytes, 4 credits.
	contentType, body := multipartBody(t, "file", "slow.wav", wavFile(t, 24))
	const credits = 4
	uploads := []*pacedUpload{
		{name: "stalls after the first 70 KiB", initial: 70 << 10, rate: proxy.MinBodyRate / 32},
		{name: "trickles from the start", initial: 1 << 10, rate: proxy.MinBodyRate / 32},
		{name: "just above the minimum rate", initial: 0, rate: proxy.MinBodyRate * 5 / 4},
	}
	if d := time.Duration(len(body)/uploads[2].rate) * time.Second; d <= proxy.UploadBodyTimeout {
		t.Fatalf("the served upload takes %v, not longer than the grace %v", d, proxy.UploadBodyTimeout)
	}
	keys := make([]keyObject, len(uploads))
	before := make([]int64, len(uploads))
	events := make([]int, len(uploads))
	for i := range uploads {
		keys[i] = s.createKey(gw, tok, map[string]any{"name": fmt.Sprintf("upload-%d", i), "tier": "soak"})
		if resp, b := s.do("GET", gw+"/v1/stt/models", nil, map[string]string{"X-API-Key": keys[i].Key}); resp.StatusCode != 200 {
			t.Fatalf("warm-up call: %d %s", resp.StatusCode, b)
		}
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	// Every served call's event is durable before its answer.
	for i := range keys {
		before[i], events[i] = s.redisBalance(keys[i].ID), s.eventsOf(keys[i].ID)
	}
	idle := s.metric(gw+"/metrics", "go_goroutines ")

	var wg sync.WaitGroup
	for i, u := range uploads {
		wg.Add(1)
		go func() { defer wg.Done(); u.run(addr, keys[i].Key, fmt.Sprintf("slow-upload-%d", i), contentType, body) }()
	}
	wg.Wait()

	for i, u := range uploads {
		if u.err != nil {
			t.Fatalf("%s: %v", u.name, u.err)
		}
		backend, called := calls.of(fmt.Sprintf("slow-upload-%d", i))
		t.Logf("SLOW UPLOAD %s (%d B at once, then %d B/s; minimum %d B/s after %v): answered %d after %v with %d of %d bytes sent; backend called %v (answered %d, read %d bytes, %v)",
			u.name, u.initial, u.rate, proxy.MinBodyRate, proxy.UploadBodyTimeout, u.status, u.after.Round(time.Millisecond), u.sent, len(body),
			called, backend.status, backend.read, backend.err)
	}
	for i, u := range uploads[:2] {
		// The earned time runs out when initial+rate·T bytes have earned
		// less than T − grace seconds; the deadline moves in whole seconds.
		grace := proxy.UploadBodyTimeout.Seconds()
		expect := time.Duration((grace + float64(u.initial)/proxy.MinBodyRate) / (1 - float64(u.rate)/proxy.MinBodyRate) * float64(time.Second))
		switch {
		case u.status != 0 && u.status != http.StatusRequestTimeout:
			t.Fatalf("%s: answered %d %s, want 408", u.name, u.status, u.body)
		case u.status == http.StatusRequestTimeout:
			var p struct{ Status int }
			if u.contentType != "application/problem+json" || json.Unmarshal(u.body, &p) != nil || p.Status != 408 {
				t.Fatalf("%s: 408 as %q: %s", u.name, u.contentType, u.body)
			}
		}
		if u.after < proxy.UploadBodyTimeout || u.after > expect+slowAllowance {
			t.Fatalf("%s: cut after %v; want after the grace %v and by %v (+ %v)", u.name, u.after, proxy.UploadBodyTimeout, expect, slowAllowance)
		}
		if got := s.redisBalance(keys[i].ID); got != before[i] {
			t.Fatalf("%s: balance %d, was %d: the cut call was charged", u.name, got, before[i])
		}
		if n := s.eventsOf(keys[i].ID); n != events[i] {
			t.Fatalf("%s: %d events on the stream, were %d", u.name, n, events[i])
		}
	}
	// The stalled upload's backend call started and was aborted before the
	// stand-in had read the upload; the trickling one never reached it.
	eventually(t, "the stalled upload's backend call ended", func() (bool, string) {
		_, ok := calls.of("slow-upload-0")
		return ok, "the stand-in is still handling it"
	})
	if b, _ := calls.of("slow-upload-0"); b.err == nil || b.status/100 == 2 || b.read >= int64(len(body)) {
		t.Fatalf("the stalled upload's backend call: answered %d after reading %d of %d bytes (%v); want it aborted", b.status, b.read, len(body), b.err)
	}
	if n := s.hits.of("stt", "POST", "/transcribe"); n != 2 {
		t.Fatalf("the STT stand-in got %d uploads, want 2 (the stalled one and the served one)", n)
	}
	if _, ok := calls.of("slow-upload-1"); ok {
		t.Fatal("the upload that trickled from the start reached the backend")
	}
	served := uploads[2]
	if served.status != 200 || served.sent != len(body) {
		t.Fatalf("%s: answered %d after %d of %d bytes: %s", served.name, served.status, served.sent, len(body), served.body)
	}
	if got := s.redisBalance(keys[2].ID); got != before[2]-credits {
		t.Fatalf("%s: balance %d, was %d; want %d credits charged", served.name, got, before[2], credits)
	}
	if n := s.eventsOf(keys[2].ID); n != events[2]+1 {
		t.Fatalf("%s: %d events on the stream, were %d", served.name, n, events[2])
	}
	backToIdle(t, s, gw, idle)
}

// redisBalance is the key's balance as the gateways enforce it.
func (s *stack) redisBalance(keyID string) int64 {
	s.t.Helper()
	v, err := s.rdb.HGet(context.Background(), "gw:{"+keyID+"}:s", "bal").Int64()
	if err != nil {
		s.t.Fatalf("redis balance of %s: %v", keyID, err)
	}
	return v
}
