package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/pricing"
)

// TestConcurrentCallsPerKeyAreCapped: a key cannot hold more calls in
// flight than its tier's concurrentCalls (free: 10). Of eleven calls that
// send their headers and 1 byte of their body, ten wait for it (and end 408
// at the body deadline) and one is refused 429 problem+json with
// Retry-After; nothing is charged; another key is served meanwhile, and the
// key itself once the ten have ended.
func TestConcurrentCallsPerKeyAreCapped(t *testing.T) {
	ev := newEnv(t, searchStandIn(t), "capture", "capture")
	p, _ := pricing.Default()
	capFree := p.Tiers["free"].ConcurrentCalls
	if capFree <= 0 {
		t.Fatal("the free tier has no concurrentCalls")
	}
	secret, k := ev.key("free")
	other, _ := ev.key("free")
	if resp, body := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"q"}`); resp.StatusCode != 200 {
		t.Fatalf("first call: %d %s", resp.StatusCode, body)
	}
	before := ev.balance(k)
	addr := strings.TrimPrefix(ev.url, "http://")
	// One call more than the cap, each sending its headers and 1 byte of
	// its body: the cap's worth wait for their bodies, one is refused.
	type answer struct {
		i    int
		resp *http.Response
		body []byte
	}
	answers := make(chan answer, capFree+1)
	var held []net.Conn
	for i := range capFree + 1 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		fmt.Fprintf(c, "POST /v1/search HTTP/1.1\r\nHost: gw\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", secret)
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				return // closed by the test
			}
			b, _ := io.ReadAll(resp.Body)
			answers <- answer{i, resp, b}
		}()
	}
	if resp, body := ev.do("POST", "/v1/search", other, "application/json", `{"query":"q"}`); resp.StatusCode != 200 {
		t.Fatalf("another key while the first is at its cap: %d %s", resp.StatusCode, body)
	}
	// Go's server reads what is left of a body before it answers, so the
	// refused call is answered when its body's deadline has passed too,
	// with the others.
	statuses := map[int]int{}
	for range capFree + 1 {
		select {
		case a := <-answers:
			statuses[a.resp.StatusCode]++
			if a.resp.StatusCode == http.StatusTooManyRequests {
				isProblem(t, a.resp, a.body, http.StatusTooManyRequests)
				if a.resp.Header.Get("Retry-After") == "" || !strings.Contains(string(a.body), "in flight") {
					t.Fatalf("429 without Retry-After or the reason: %v %s", a.resp.Header, a.body)
				}
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("answers so far %v", statuses)
		}
	}
	if statuses[http.StatusTooManyRequests] != 1 || statuses[http.StatusRequestTimeout] != capFree {
		t.Fatalf("statuses %v, want one 429 and %d × 408", statuses, capFree)
	}
	if got := ev.balance(k); got != before {
		t.Fatalf("balance %d after the refused calls, want %d", got, before)
	}
	for _, c := range held {
		_ = c.Close()
	}
	deadline := time.Now().Add(20 * time.Second)
	var resp *http.Response
	var body []byte
	for {
		resp, body = ev.do("POST", "/v1/search", secret, "application/json", `{"query":"q"}`)
		if resp.StatusCode != http.StatusTooManyRequests || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("after the held calls ended: %d %s", resp.StatusCode, body)
	}
}
