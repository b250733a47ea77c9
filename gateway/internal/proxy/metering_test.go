package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/services/search"
	"github.com/mana/apigw/services/stt"
	"github.com/mana/apigw/services/testenv"
	"github.com/mana/apigw/services/tts"
)

// standIn serves a stand-in backend and counts the requests it receives.
func standIn(t *testing.T, newHandler func() (http.Handler, error)) (string, *atomic.Int64) {
	t.Helper()
	h, err := newHandler()
	if err != nil {
		t.Fatal(err)
	}
	n := &atomic.Int64{}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s.URL, n
}

type standIns struct {
	search, stt, tts    string
	searchN, sttN, ttsN *atomic.Int64
}

// realBackends starts the three stand-ins, which decode bodies and audio
// the way the real services do, independently of the gateway.
func realBackends(t *testing.T) standIns {
	logger := testenv.Logger(t)
	var b standIns
	b.search, b.searchN = standIn(t, func() (http.Handler, error) { return search.New(search.Config{}, logger) })
	b.stt, b.sttN = standIn(t, func() (http.Handler, error) { return stt.New(stt.Config{}, logger) })
	b.tts, b.ttsN = standIn(t, func() (http.Handler, error) { return tts.New(tts.Config{Engine: tts.EngineTone}, logger) })
	return b
}

// TestGrantComesFromTheKey: the grant in the event and in /v1/key is the
// key's own (what Redis enforces), not the pricing file's for its tier — a
// key created before PRICING_FILE changed keeps the grant it was given.
func TestGrantComesFromTheKey(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("pro")
	if _, err := ev.db.ExecContext(context.Background(),
		`UPDATE api_gateway.api_keys SET monthly_credits = 777, rate_limit_per_minute = 42 WHERE id = $1`, k.ID); err != nil {
		t.Fatal(err)
	}
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-Credits-Remaining") != "776" || resp.Header.Get("X-RateLimit-Limit") != "42" {
		t.Fatalf("status %d, credits %q, limit %q: %s", resp.StatusCode, resp.Header.Get("X-Credits-Remaining"), resp.Header.Get("X-RateLimit-Limit"), b)
	}
	evs := ev.events()
	if len(evs) != 1 || evs[0].MonthlyCredits != 777 {
		t.Fatalf("events %+v, want one with monthly_credits 777", evs)
	}
	resp, b = ev.do("GET", "/v1/key", secret, "", "")
	var got struct {
		MonthlyCredits   int64 `json:"monthlyCredits"`
		RateLimit        int   `json:"rateLimitPerMinute"`
		CreditsRemaining int64 `json:"creditsRemaining"`
	}
	if err := json.Unmarshal(b, &got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s (%v)", resp.StatusCode, b, err)
	}
	t.Logf("/v1/key: %s", b)
	if got.MonthlyCredits != 777 || got.RateLimit != 42 || got.CreditsRemaining != 776 {
		t.Fatalf("/v1/key reports %+v, want the key's 777 credits and 42/min", got)
	}
}

// TestPeriodIsTheHolds: a gateway whose clock is a month behind Redis's
// publishes the event in the month its hold was taken in (Redis TIME), with
// a time inside that month.
func TestPeriodIsTheHolds(t *testing.T) {
	behind := func() time.Time { return time.Now().AddDate(0, -1, -3) }
	ev := newEnv(t, "capture", "capture", "capture", withClock(behind))
	secret, _ := ev.key("pro")
	resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	evs := ev.events()
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	want := time.Now().UTC().Format("2006-01")
	at := evs[0].OccurredAt.AsTime()
	t.Logf("gateway clock %s, event period %s, occurred_at %s", behind().UTC().Format("2006-01"), evs[0].Period, at)
	if evs[0].Period != want || at.Format("2006-01") != want {
		t.Fatalf("event period %s at %s, want the hold's period %s", evs[0].Period, at, want)
	}
}

// TestKeysMeanOneThing: a key that a case-sensitive backend reads and the
// gateway would not (a case variant, a duplicate) is refused with 400
// before anything is held, through the real stand-ins, which read such a
// body as Python and JavaScript do.
func TestKeysMeanOneThing(t *testing.T) {
	b := realBackends(t)
	ev := newEnv(t, b.search, b.stt, b.tts, withTimeoutCap(time.Minute))
	secret, k := ev.key("pro")
	long := strings.Repeat("a", 9000)
	for _, tc := range []struct{ path, body string }{
		{"/v1/tts/synthesize", `{"text":"` + long + `","Text":"a","voice":"en-US-1"}`},
		{"/v1/tts/synthesize", `{"Text":"` + long + `","text":"a","voice":"en-US-1"}`},
		{"/v1/tts/synthesize", `{"text":"a","text":"` + long + `","voice":"en-US-1"}`},
		{"/v1/extract/bulk", `{"urls":["http://127.0.0.1:1/a"],"URLS":["http://127.0.0.1:1/b","http://127.0.0.1:1/c","http://127.0.0.1:1/d"]}`},
		{"/v1/extract/bulk", `{"urls":["http://127.0.0.1:1/a"],"urls":["http://127.0.0.1:1/b","http://127.0.0.1:1/c"]}`},
		{"/v1/search", `{"query":"a","Query":"b"}`},
	} {
		resp, body := ev.do("POST", tc.path, secret, "application/json", tc.body)
		t.Logf("%s %.50s…: %d %s", tc.path, tc.body, resp.StatusCode, body)
		isProblem(t, resp, body, 400)
	}
	if n := b.ttsN.Load() + b.searchN.Load(); n != 0 {
		t.Fatalf("the backends were called %d times", n)
	}
	if got := ev.balance(k); got != 5000 {
		t.Fatalf("balance %d after refused bodies, want 5000", got)
	}
	// What is forwarded is the document as priced: 1,001 characters, 2 credits.
	resp, body := ev.do("POST", "/v1/tts/synthesize", secret, "application/json", "{ \"text\" : \""+strings.Repeat("b", 1001)+"\",\n \"voice\":\"en-US-1\" }")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "audio/wav" || resp.Header.Get("X-Credits-Remaining") != "4998" {
		t.Fatalf("synthesis: %d %s credits %q: %.100s", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("X-Credits-Remaining"), body)
	}
}

// TestInputLimitsAreTheBackends: every input limit the gateway checks is
// the backend's own; at the limit the real stand-in serves the call, one
// past it the gateway refuses it before holding anything.
func TestInputLimitsAreTheBackends(t *testing.T) {
	b := realBackends(t)
	ev := newEnv(t, b.search, b.stt, b.tts, withTimeoutCap(time.Minute))
	secret, k := ev.key("enterprise")
	if resp, body := ev.do("GET", "/v1/key", secret, "", ""); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	for _, tc := range []struct {
		name, path, atLimit, overLimit string
		calls                          *atomic.Int64
		credits                        int64
	}{
		{"tts characters", "/v1/tts/synthesize",
			`{"text":"` + strings.Repeat("—", proxy.MaxTTSCharacters) + `"}`, `{"text":"` + strings.Repeat("—", proxy.MaxTTSCharacters+1) + `"}`,
			b.ttsN, proxy.MaxTTSCharacters / 1000},
		{"search query", "/v1/search",
			`{"query":"` + strings.Repeat("q", proxy.MaxSearchQueryChars) + `"}`, `{"query":"` + strings.Repeat("q", proxy.MaxSearchQueryChars+1) + `"}`,
			b.searchN, 1},
		{"search limit", "/v1/search",
			fmt.Sprintf(`{"query":"go","limit":%d}`, proxy.MaxSearchLimit), fmt.Sprintf(`{"query":"go","limit":%d}`, proxy.MaxSearchLimit+1),
			b.searchN, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, calls := ev.balance(k), tc.calls.Load()
			resp, body := ev.do("POST", tc.path, secret, "application/json", tc.atLimit)
			if resp.StatusCode != 200 {
				t.Fatalf("at the limit: %d %.300s", resp.StatusCode, body)
			}
			if got := before - ev.balance(k); got != tc.credits {
				t.Fatalf("at the limit charged %d, want %d", got, tc.credits)
			}
			resp, body = ev.do("POST", tc.path, secret, "application/json", tc.overLimit)
			isProblem(t, resp, body, 400)
			if tc.calls.Load() != calls+1 {
				t.Fatalf("the backend saw %d calls, want only the one at the limit", tc.calls.Load()-calls)
			}
			if got := before - ev.balance(k); got != tc.credits {
				t.Fatalf("over the limit: %d charged in all", got)
			}
			t.Logf("at the limit: 200, %d credits; one past it: 400 at the gateway (%s)", tc.credits, body)
		})
	}
}

// wavFile is a WAV header as a client may write it, with dataBytes of
// samples after it.
func wavFile(format, channels uint16, rate, byteRate uint32, align, bits uint16, declared uint32, dataBytes int, ext []byte) []byte {
	fmtChunk := binary.LittleEndian.AppendUint16(nil, format)
	fmtChunk = binary.LittleEndian.AppendUint16(fmtChunk, channels)
	fmtChunk = binary.LittleEndian.AppendUint32(fmtChunk, rate)
	fmtChunk = binary.LittleEndian.AppendUint32(fmtChunk, byteRate)
	fmtChunk = binary.LittleEndian.AppendUint16(fmtChunk, align)
	fmtChunk = binary.LittleEndian.AppendUint16(fmtChunk, bits)
	fmtChunk = append(fmtChunk, ext...)
	var b bytes.Buffer
	b.WriteString("RIFF")
	_ = binary.Write(&b, binary.LittleEndian, uint32(0xFFFFFFFF))
	b.WriteString("WAVEfmt ")
	_ = binary.Write(&b, binary.LittleEndian, uint32(len(fmtChunk)))
	b.Write(fmtChunk)
	b.WriteString("data")
	_ = binary.Write(&b, binary.LittleEndian, declared)
	b.Write(bytes.Repeat([]byte{0x3e}, dataBytes))
	return b.Bytes()
}

// extensibleFloat is WAVE_FORMAT_EXTENSIBLE's extension for IEEE float.
func extensibleFloat(bits uint16) []byte {
	ext := binary.LittleEndian.AppendUint16(nil, 22)
	ext = binary.LittleEndian.AppendUint16(ext, bits)
	ext = binary.LittleEndian.AppendUint32(ext, 0)
	ext = binary.LittleEndian.AppendUint16(ext, 3)
	return append(ext, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71)
}

func form(t *testing.T, files ...[]byte) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, f := range files {
		fw, err := mw.CreateFormFile("file", "a.wav")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fw.Write(f)
	}
	_ = mw.Close()
	return mw.FormDataContentType(), b.Bytes()
}

// TestSTTIsPricedFromFrames: an upload is priced from its frame size and
// the bytes it carries, as the real decoder behind the STT stand-in counts
// them, for every accepted encoding, whatever the header's byte rate says;
// what cannot be priced is refused before anything is held.
func TestSTTIsPricedFromFrames(t *testing.T) {
	b := realBackends(t)
	ev := newEnv(t, b.search, b.stt, b.tts, withTimeoutCap(time.Minute))
	secret, k := ev.key("pro")
	if resp, body := ev.do("GET", "/v1/key", secret, "", ""); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	const lie = 0xFFFFFFFF
	for _, tc := range []struct {
		name    string
		file    []byte
		credits int64
	}{
		{"float32, 3 min at 16 kHz, byte rate 0xFFFFFFFF", wavFile(3, 1, 16000, lie, 4, 32, 180*64000, 180*64000, nil), 30},
		{"extensible float32 stereo, 1 min", wavFile(0xFFFE, 2, 16000, 1, 8, 32, 60*128000, 60*128000, extensibleFloat(32)), 10},
		{"µ-law, 2 min at 8 kHz, byte rate 1", wavFile(7, 1, 8000, 1, 1, 8, 120*8000, 120*8000, nil), 20},
		{"A-law, 1 min", wavFile(6, 1, 8000, 1, 1, 8, 60*8000, 60*8000, nil), 10},
		{"PCM written to a pipe, 10 s, size 0x7FFFFFFF", wavFile(1, 1, 16000, 32000, 2, 16, 0x7FFFFFFF, 10*32000, nil), 2},
		{"PCM written to a pipe, 10 s, size 0", wavFile(1, 1, 16000, 32000, 2, 16, 0, 10*32000, nil), 2},
		{"1 byte of 8-bit data at byte rate 0xFFFFFFFF", wavFile(1, 1, 16000, lie, 1, 8, 1, 1, nil), 1},
		{"2 bytes of data at byte rate 0xFFFFFFFF", wavFile(1, 1, 16000, lie, 2, 16, 2, 2, nil), 1},
		{"3 bytes of data at byte rate 0xFFFFFFFF", wavFile(1, 1, 16000, lie, 2, 16, 3, 3, nil), 1},
		{"4 bytes of data at byte rate 0xFFFFFFFF", wavFile(1, 1, 16000, lie, 2, 16, 4, 4, nil), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ev.balance(k)
			ct, body := form(t, tc.file)
			resp, out := ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body))
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, out)
			}
			charged := before - ev.balance(k)
			t.Logf("%d bytes: %s; charged %d credits", len(body), out, charged)
			if charged != tc.credits {
				t.Fatalf("charged %d credits, want %d", charged, tc.credits)
			}
		})
	}
	calls := b.sttN.Load()
	pcm := wavFile(1, 1, 16000, 32000, 2, 16, 32000, 32000, nil)
	for _, tc := range []struct {
		name   string
		files  [][]byte
		status int
	}{
		{"IMA ADPCM", [][]byte{wavFile(0x11, 1, 16000, 4055, 256, 4, 1024, 1024, nil)}, 415},
		{"MP3 in a WAV", [][]byte{wavFile(0x55, 1, 16000, 4000, 1, 0, 1024, 1024, nil)}, 415},
		{"block align that is not the frame", [][]byte{wavFile(1, 2, 16000, 64000, 1, 16, 1024, 1024, nil)}, 422},
		{"float with 16-bit samples", [][]byte{wavFile(3, 1, 16000, 32000, 2, 16, 1024, 1024, nil)}, 422},
		{"two files", [][]byte{pcm, pcm}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct, body := form(t, tc.files...)
			resp, out := ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body))
			isProblem(t, resp, out, tc.status)
		})
	}
	if n := b.sttN.Load() - calls; n != 0 {
		t.Fatalf("the backend saw %d refused uploads", n)
	}
}

// TestMalformedUploadIsBadInput: a chunked upload whose framing breaks
// after the first 64 KiB is the client's bad input: 400, nothing charged,
// and no backend failure recorded.
func TestMalformedUploadIsBadInput(t *testing.T) {
	b := realBackends(t)
	ev := newEnv(t, b.search, b.stt, b.tts, withTimeoutCap(time.Minute))
	secret, k := ev.key("pro")
	if resp, body := ev.do("GET", "/v1/key", secret, "", ""); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	ct, body := form(t, wavFile(1, 1, 16000, 32000, 2, 16, 10*32000, 10*32000, nil))
	conn, err := net.Dial("tcp", strings.TrimPrefix(ev.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/stt/transcribe HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n", secret, ct)
	first := body[:128<<10]
	fmt.Fprintf(conn, "%x\r\n%s\r\nzz-not-a-chunk-size\r\n", len(first), first)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	t.Logf("%d %s", resp.StatusCode, out)
	isProblem(t, resp, out, 400)
	if got := ev.balance(k); got != 5000 {
		t.Fatalf("balance %d, want 5000", got)
	}
	for _, e := range ev.events() {
		if e.Endpoint == "/v1/stt/transcribe" && (e.Status >= 500 || e.Credits != 0) {
			t.Fatalf("event %+v: a malformed upload recorded as a backend failure or charged", e)
		}
	}
}

// TestRefusedUploadIsReadable: a client that sends no "Expect:
// 100-continue" writes its whole upload before it reads; a 402 answered
// before the body is read still reaches it as the problem, not as a reset.
func TestRefusedUploadIsReadable(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("pro")
	ev.do("GET", "/v1/key", secret, "", "") // loads the key's state
	if err := ev.rdb.HSet(context.Background(), "gw:{"+k.ID+"}:s", "bal", 3).Err(); err != nil {
		t.Fatal(err)
	}
	// 8 minutes of 16 kHz 8-bit mono: 7.7 MB, 80 credits.
	ct, body := form(t, wavFile(1, 1, 16000, 16000, 1, 8, 480*16000, 480*16000, nil))
	resp, out := uploadWithoutExpect(t, ev.url, secret, ct, body)
	t.Logf("%d-byte upload without Expect: %d %s", len(body), resp.StatusCode, out)
	isProblem(t, resp, out, 402)
	if ev.capture.calls.Load() != 0 {
		t.Fatal("the backend was called")
	}
}

// TestSecondFileAfterTheFirst64KiBIsRefused: a form whose second `file`
// part starts after the 64 KiB the gateway looks at before pricing (and
// within the slack the declared size allows) is refused 400 while it
// streams, and nothing is charged: a backend that keeps the last of two
// fields would have transcribed audio nobody priced.
func TestSecondFileAfterTheFirst64KiBIsRefused(t *testing.T) {
	ev := newEnv(t, "capture", "capture", "capture", withTimeoutCap(time.Minute))
	secret, k := ev.key("pro")
	if resp, body := ev.do("GET", "/v1/key", secret, "", ""); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	// 10 s of 16 kHz 16-bit mono (320 kB), then 1 s of 8 kHz 8-bit.
	ct, body := form(t, wavFile(1, 1, 16000, 32000, 2, 16, 10*32000, 10*32000, nil), wavFile(1, 1, 8000, 8000, 1, 8, 8000, 8000, nil))
	resp, out := ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body))
	t.Logf("%d %s", resp.StatusCode, out)
	isProblem(t, resp, out, 400)
	if !strings.Contains(string(out), "more than one") {
		t.Fatalf("400 for another reason: %s", out)
	}
	if got := ev.balance(k); got != 5000 {
		t.Fatalf("balance %d, want 5000", got)
	}
	for _, e := range ev.events() {
		if e.Endpoint == "/v1/stt/transcribe" && e.Credits != 0 {
			t.Fatalf("event %+v: the refused upload was charged", e)
		}
	}
}
