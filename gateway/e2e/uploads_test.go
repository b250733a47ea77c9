package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/proto/wav"
)

// TestConcurrentRefusedUploadsAreReadable: N clients (20, or
// CONCURRENT_UPLOADS; 70 is the case this reproduces) upload an 8-minute
// WAV (16 kHz 8-bit mono, 7.7 MB, 80 credits) at once on a key whose
// balance covers 62 in 70 of them (4,960 credits for 70). Like most HTTP
// clients they send no "Expect: 100-continue" and write the whole body
// before reading. Exactly the covered ones are served; every refused one
// reads its 402 problem+json instead of a connection reset; the ledger
// holds exactly covered × 80 credits, and Redis and Postgres agree on the
// balance once the billing worker has it.
func TestConcurrentRefusedUploadsAreReadable(t *testing.T) {
	uploads := 20
	if v := os.Getenv("CONCURRENT_UPLOADS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CONCURRENT_UPLOADS=%q: want a count", v)
		}
		uploads = n
	}
	covered, price := uploads*62/70, int64(80)
	// Every upload is in flight at once, so the per-key cap on calls in
	// flight is raised above their number.
	s := newStack(t, stackOpts{pricing: string(pricing.WithTiers(
		fmt.Sprintf(`uploads: {rateLimitPerMinute: 1000, monthlyCredits: %d, endpoints: ["*"]}`, int64(covered)*price))),
		extraEnv: []string{fmt.Sprintf("CONCURRENT_CALLS_PER_KEY=%d", 2*uploads)}})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "uploads", "tier": "uploads"})

	// One body for every client: 480 s of 16,000 one-byte frames a second.
	var audio bytes.Buffer
	const frames = 480 * 16000
	if err := wav.Encode(&audio, 1, 16000, 8, frames); err != nil {
		t.Fatal(err)
	}
	audio.Write(bytes.Repeat([]byte{128}, frames))
	ct, body := multipartBody(t, "file", "meeting.wav", audio.Bytes())
	head := fmt.Sprintf("POST /v1/stt/transcribe HTTP/1.1\r\nHost: gateway\r\nX-API-Key: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", k.Key, ct, len(body))
	addr := strings.TrimPrefix(gw, "http://")

	type answer struct {
		status int
		ct     string
		body   []byte
		err    error
	}
	answers := make([]answer, uploads)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &answers[i]
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				a.err = err
				return
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
			if _, err := io.WriteString(conn, head); err != nil {
				a.err = fmt.Errorf("writing the headers: %w", err)
				return
			}
			if _, err := conn.Write(body); err != nil {
				a.err = fmt.Errorf("writing the %d-byte upload: %w", len(body), err)
				return
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				a.err = fmt.Errorf("reading the answer after the upload: %w", err)
				return
			}
			a.status, a.ct = resp.StatusCode, resp.Header.Get("Content-Type")
			a.body, a.err = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var served, refused int
	for i, a := range answers {
		switch {
		case a.err != nil:
			t.Errorf("upload %d: %v", i, a.err)
		case a.status == 200:
			served++
		case a.status == 402 && strings.HasPrefix(a.ct, "application/problem+json") && bytes.Contains(a.body, []byte(`"status":402`)):
			refused++
		default:
			t.Errorf("upload %d: %d %q %s", i, a.status, a.ct, a.body)
		}
	}
	t.Logf("%d concurrent %d-byte uploads without Expect in %s: %d served, %d refused with a readable 402",
		uploads, len(body), elapsed.Round(time.Millisecond), served, refused)
	if served != covered || refused != uploads-covered {
		t.Fatalf("%d served and %d refused, want %d and %d", served, refused, covered, uploads-covered)
	}
	if got := s.hits.of("stt", "POST", "/transcribe"); got != int64(covered) {
		t.Errorf("the backend got %d uploads, want %d", got, covered)
	}
	eventually(t, "the ledger holds every served upload", func() (bool, string) {
		rows, credits := s.ledger(k.ID)
		return rows == int64(covered) && credits == int64(covered)*price, fmt.Sprintf("%d rows, %d credits", rows, credits)
	})
	rows, credits := s.ledger(k.ID)
	eventually(t, "Redis and Postgres agree on the balance", func() (bool, string) {
		pg, rd := s.balances(k.ID, int64(covered)*price)
		return pg == 0 && rd == 0, fmt.Sprintf("Postgres %d, Redis %d", pg, rd)
	})
	t.Logf("ledger: %d rows, %d credits charged (%d × %d); balance 0 in Redis and in Postgres", rows, credits, served, price)
}
