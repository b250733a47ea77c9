package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/proto/wav"
)

// wavFile is a mono 8 kHz 8-bit WAV of the given length.
func wavFile(t *testing.T, seconds float64) []byte {
	t.Helper()
	n := uint32(seconds * 8000)
	var b bytes.Buffer
	if err := wav.Encode(&b, 1, 8000, 8, n); err != nil {
		t.Fatal(err)
	}
	b.Write(bytes.Repeat([]byte{128}, int(n)))
	return b.Bytes()
}

func multipartBody(t *testing.T, field, filename string, data []byte) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	fw, err := w.CreateFormFile(field, filename)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(data)
	_ = w.Close()
	return w.FormDataContentType(), b.Bytes()
}

// TestEveryPublicRouteIsMeteredExactly: each route once with a pro key; the
// ledger holds exactly the contract's charge per endpoint.
func TestEveryPublicRouteIsMeteredExactly(t *testing.T) {
	s := newStack(t, stackOpts{})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "all routes", "tier": "pro"})
	key := map[string]string{"X-API-Key": k.Key}

	resp, b := s.do("POST", gw+"/v1/search", `{"query":"quantum computing","limit":3}`, key)
	if resp.StatusCode != 200 {
		t.Fatalf("search %d %s", resp.StatusCode, b)
	}
	var sr struct {
		Results []struct{ URL string } `json:"results"`
	}
	if err := json.Unmarshal(b, &sr); err != nil || len(sr.Results) < 3 {
		t.Fatalf("search results %s", b)
	}
	urls := []string{sr.Results[0].URL, sr.Results[1].URL, sr.Results[2].URL}
	audioCT, audio := multipartBody(t, "file", "audio.wav", wavFile(t, 61))
	text := strings.Repeat("é", 1001) // 1,001 code points, 2,002 bytes
	calls := []struct {
		method, path, ct string
		body             []byte
		credits          int64
		units            int64
	}{
		{"POST", "/v1/extract", "application/json", []byte(fmt.Sprintf(`{"url":%q}`, urls[0])), 1, 1},
		{"POST", "/v1/extract/bulk", "application/json", []byte(fmt.Sprintf(`{"urls":[%q,%q,%q]}`, urls[0], urls[1], urls[2])), 3, 3},
		{"GET", "/v1/search/engines", "", nil, 0, 1},
		{"POST", "/v1/stt/transcribe", audioCT, audio, 11, 61},
		{"GET", "/v1/stt/models", "", nil, 0, 1},
		{"GET", "/v1/stt/languages", "", nil, 0, 1},
		{"POST", "/v1/tts/synthesize", "application/json", []byte(fmt.Sprintf(`{"text":%q,"voice":"en-US-1"}`, text)), 2, 1001},
		{"GET", "/v1/tts/voices", "", nil, 0, 1},
		{"GET", "/v1/tts/languages", "", nil, 0, 1},
	}
	want := map[string]int64{"/v1/search": 1}
	wantUnits := map[string]int64{"/v1/search": 1}
	for _, c := range calls {
		h := map[string]string{"X-API-Key": k.Key}
		if c.ct != "" {
			h["Content-Type"] = c.ct
		}
		var body any
		if c.body != nil {
			body = c.body
		}
		resp, b := s.do(c.method, gw+c.path, body, h)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", c.method, c.path, resp.StatusCode, b)
		}
		for _, hd := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Credits-Remaining", "X-Request-Id"} {
			if resp.Header.Get(hd) == "" {
				t.Errorf("%s %s: no %s", c.method, c.path, hd)
			}
		}
		if c.path == "/v1/tts/synthesize" && (resp.Header.Get("Content-Type") != "audio/wav" || len(b) < 1000) {
			t.Errorf("tts answer %q, %d bytes", resp.Header.Get("Content-Type"), len(b))
		}
		want[c.path] += c.credits
		wantUnits[c.path] += c.units
	}
	eventually(t, "ledger has every call", func() (bool, string) {
		rows, _ := s.ledger(k.ID)
		return rows == int64(len(calls)+1), fmt.Sprint(rows)
	})
	rows, err := s.db.Queryx(`SELECT endpoint, sum(credits) FROM api_gateway.credit_ledger WHERE key_id = $1 GROUP BY endpoint`, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for rows.Next() {
		var ep string
		var c int64
		if err := rows.Scan(&ep, &c); err != nil {
			t.Fatal(err)
		}
		got[ep] = c
	}
	for ep, c := range want {
		if got[ep] != c {
			t.Errorf("ledger %s = %d credits, want %d", ep, got[ep], c)
		}
	}
	eventually(t, "daily units", func() (bool, string) {
		var u int64
		err := s.db.Get(&u, `SELECT COALESCE(sum(units),0) FROM api_gateway.api_usage_daily WHERE key_id = $1 AND endpoint = '/v1/stt/transcribe'`, k.ID)
		return err == nil && u == 61, fmt.Sprint(u, err)
	})
	var ttsUnits int64
	if err := s.db.Get(&ttsUnits, `SELECT units FROM api_gateway.api_usage WHERE key_id = $1 AND endpoint = '/v1/tts/synthesize'`, k.ID); err != nil || ttsUnits != 1001 {
		t.Fatalf("tts units %d (%v)", ttsUnits, err)
	}
}

// TestBadInputPerRoute: every route's bad input is a 4xx problem and free.
func TestBadInputPerRoute(t *testing.T) {
	s := newStack(t, stackOpts{})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	pro := s.createKey(gw, tok, map[string]any{"name": "pro", "tier": "pro"})
	free := s.createKey(gw, tok, map[string]any{"name": "free", "tier": "free"})
	emptyCT, empty := multipartBody(t, "file", "a.wav", nil)
	mp3CT, mp3 := multipartBody(t, "file", "a.mp3", []byte("ID3\x03\x00\x00\x00\x00\x00\x00not a wav"))
	otherCT, other := multipartBody(t, "audio", "a.wav", wavFile(t, 1))
	cases := []struct {
		name, key, method, path, ct string
		body                        []byte
		status                      int
	}{
		{"search malformed", pro.Key, "POST", "/v1/search", "application/json", []byte(`{"query":`), 400},
		{"search missing query", pro.Key, "POST", "/v1/search", "application/json", []byte(`{"limit":3}`), 400},
		{"extract missing url", pro.Key, "POST", "/v1/extract", "application/json", []byte(`{}`), 400},
		{"bulk not a list", pro.Key, "POST", "/v1/extract/bulk", "application/json", []byte(`{"urls":"x"}`), 400},
		{"bulk too many", pro.Key, "POST", "/v1/extract/bulk", "application/json", []byte(`{"urls":[` + strings.Repeat(`"https://a.example",`, 20) + `"https://a.example"]}`), 400},
		{"tts missing text", pro.Key, "POST", "/v1/tts/synthesize", "application/json", []byte(`{"voice":"en-US-1"}`), 400},
		{"tts wrong type", pro.Key, "POST", "/v1/tts/synthesize", "application/json", []byte(`{"text":5}`), 400},
		{"tts over limit", pro.Key, "POST", "/v1/tts/synthesize", "application/json", []byte(`{"text":"` + strings.Repeat("a", 300<<10) + `"}`), 413},
		{"tts wrong content type", pro.Key, "POST", "/v1/tts/synthesize", "text/plain", []byte(`hello`), 415},
		{"stt empty file", pro.Key, "POST", "/v1/stt/transcribe", emptyCT, empty, 400},
		{"stt not wav", pro.Key, "POST", "/v1/stt/transcribe", mp3CT, mp3, 415},
		{"stt missing field", pro.Key, "POST", "/v1/stt/transcribe", otherCT, other, 400},
		{"stt not multipart", pro.Key, "POST", "/v1/stt/transcribe", "application/json", []byte(`{}`), 415},
		{"free on stt", free.Key, "POST", "/v1/stt/transcribe", otherCT, other, 403},
		{"free on tts", free.Key, "POST", "/v1/tts/synthesize", "application/json", []byte(`{"text":"hi","voice":"en-US-1"}`), 403},
		{"free on tts voices", free.Key, "GET", "/v1/tts/voices", "", nil, 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := map[string]string{"X-API-Key": c.key}
			if c.ct != "" {
				h["Content-Type"] = c.ct
			}
			var body any
			if c.body != nil {
				body = c.body
			}
			resp, b := s.do(c.method, gw+c.path, body, h)
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %q %s, want %d problem+json", resp.StatusCode, resp.Header.Get("Content-Type"), b, c.status)
			}
		})
	}
	for _, k := range []keyObject{pro, free} {
		if n := s.eventsOf(k.ID); n != 0 {
			t.Errorf("key %s: %d events for refused calls", k.Name, n)
		}
	}
}

// TestUploadStreamsThroughTheGateway: a 100 MB upload passes with the
// gateway's RSS growing by less than 16 MB.
func TestUploadStreamsThroughTheGateway(t *testing.T) {
	s := newStack(t, stackOpts{noWorkers: true})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "big", "tier": "enterprise"})
	const size = 100 << 20
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		fw, err := mw.CreateFormFile("file", "big.wav")
		if err == nil {
			// 16 kHz, 16-bit mono: 32,000 bytes a second.
			err = wav.Encode(fw, 1, 16000, 16, size)
		}
		chunk := make([]byte, 64<<10)
		for sent := 0; err == nil && sent < size; sent += len(chunk) {
			_, err = fw.Write(chunk)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	before, _ := s.gateways[0].RSS()
	req, _ := http.NewRequestWithContext(context.Background(), "POST", gw+"/v1/stt/transcribe", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("X-API-Key", k.Key)
	stop := make(chan struct{})
	sampled := make(chan int64)
	go func() {
		var peak int64
		for {
			select {
			case <-stop:
				sampled <- peak
				return
			case <-time.After(20 * time.Millisecond):
				if r, _ := s.gateways[0].RSS(); r > peak {
					peak = r
				}
			}
		}
	}()
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	close(stop)
	peakDuring := <-sampled
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s (%v)", resp.StatusCode, b, err)
	}
	growth := peakDuring - before
	msg := fmt.Sprintf("STREAMING 100 MiB upload: gateway RSS %.1f MiB before, peak %.1f MiB during, growth %.1f MiB (limit 16 MiB)",
		float64(before)/(1<<20), float64(peakDuring)/(1<<20), float64(growth)/(1<<20))
	t.Log(msg)
	fmt.Println(msg)
	if growth > 16<<20 {
		t.Fatalf("gateway RSS grew by %.1f MiB", float64(growth)/(1<<20))
	}
	if got := resp.Header.Get("X-Credits-Remaining"); got != fmt.Sprint(50000-547) {
		t.Fatalf("credits remaining %s, want %d (3,277 s of audio = 547 credits)", got, 50000-547)
	}
}
