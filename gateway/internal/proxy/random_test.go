package proxy_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/proxy"
)

// randomCall is one request of TestRandomInputNeverFailsTheGateway, kept
// whole so that a failure prints what to send again.
type randomCall struct {
	method, path string
	header       http.Header
	body         []byte
}

func (rc randomCall) String() string {
	b := rc.body
	if len(b) > 200 {
		b = append(b[:200:200], "…"...)
	}
	return fmt.Sprintf("%s %s %v body(%d) %q", rc.method, rc.path, rc.header, len(rc.body), b)
}

// hostile builds random requests to every public route: real and invented
// methods and paths, bodies valid for the route and mutated from valid
// ones, the wrong content types, odd encodings and headers.
type hostile struct {
	rnd    *rand.Rand
	secret string // a key in use
	other  string // a well-formed key nobody holds
}

func (h *hostile) pick(xs ...string) string { return xs[h.rnd.IntN(len(xs))] }

func (h *hostile) validBody(path string) (contentType string, body []byte) {
	switch path {
	case "/v1/search":
		return "application/json", fmt.Appendf(nil, `{"query":%q,"limit":%d}`, h.text(40), h.rnd.IntN(60)-5)
	case "/v1/extract":
		return "application/json", fmt.Appendf(nil, `{"url":%q}`, h.pick("https://example.com/a", "http://127.0.0.1:1/", "ftp://x", "https://"+h.text(30), "javascript:alert(1)", "https://[::1]/", ""))
	case "/v1/extract/bulk":
		urls := make([]string, h.rnd.IntN(24))
		for i := range urls {
			urls[i] = strconv.Quote("https://example.com/" + strconv.Itoa(i))
		}
		return "application/json", []byte(`{"urls":[` + strings.Join(urls, ",") + `]}`)
	case "/v1/tts/synthesize":
		return "application/json", fmt.Appendf(nil, `{"text":%q,"voice":%q}`, h.text(h.rnd.IntN(3000)), h.pick("en-US-1", "", "xx", "en-US-1\u0000"))
	case "/v1/stt/transcribe":
		return h.upload()
	}
	return "", nil
}

// text is up to n runes of letters, multi-byte runes, controls and quotes.
func (h *hostile) text(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString(h.pick("a", "Z", " ", "é", "漢", "😀", "\u200b", "\t", "\"", "\\", "<", "\u0000", "\ufffd"))
	}
	return b.String()
}

// upload is a multipart form with a WAV whose header fields are random.
func (h *hostile) upload() (string, []byte) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	field := h.pick("file", "file", "file", "audio", "File")
	fw, _ := mw.CreateFormFile(field, h.pick("a.wav", "", "../../etc/passwd", "a.mp3"))
	channels := uint16(h.rnd.IntN(4))
	rate := uint32(h.pick2(8000, 16000, 44100, 0, 1<<31))
	bits := uint16(h.pick2(8, 16, 24, 32, 0, 7))
	align := channels * bits / 8
	if h.rnd.IntN(4) == 0 {
		align = uint16(h.rnd.IntN(10))
	}
	format := uint16(h.pick2(1, 1, 3, 6, 7, 0xFFFE, 85, 0))
	data := h.rnd.IntN(20000)
	declared := uint32(data)
	if h.rnd.IntN(4) == 0 {
		declared = h.rnd.Uint32()
	}
	hdr := make([]byte, 44)
	copy(hdr[0:], "RIFF")
	binary.LittleEndian.PutUint32(hdr[4:], 36+declared)
	copy(hdr[8:], h.pick("WAVE", "WAVX", "AVI "))
	copy(hdr[12:], "fmt ")
	binary.LittleEndian.PutUint32(hdr[16:], uint32(h.pick2(16, 16, 18, 40, 0, 1<<30)))
	binary.LittleEndian.PutUint16(hdr[20:], format)
	binary.LittleEndian.PutUint16(hdr[22:], channels)
	binary.LittleEndian.PutUint32(hdr[24:], rate)
	binary.LittleEndian.PutUint32(hdr[28:], rate*uint32(align))
	binary.LittleEndian.PutUint16(hdr[32:], align)
	binary.LittleEndian.PutUint16(hdr[34:], bits)
	copy(hdr[36:], h.pick("data", "data", "LIST", "junk"))
	binary.LittleEndian.PutUint32(hdr[40:], declared)
	if h.rnd.IntN(5) == 0 {
		hdr = hdr[:h.rnd.IntN(len(hdr))]
	}
	_, _ = fw.Write(hdr)
	_, _ = fw.Write(bytes.Repeat([]byte{128}, data))
	if h.rnd.IntN(6) == 0 {
		fw2, _ := mw.CreateFormFile("file", "b.wav")
		_, _ = fw2.Write(hdr)
	}
	if h.rnd.IntN(8) != 0 {
		_ = mw.Close()
	}
	return mw.FormDataContentType(), b.Bytes()
}

func (h *hostile) pick2(xs ...int) int { return xs[h.rnd.IntN(len(xs))] }

// mutate damages a body the way clients and attackers do.
func (h *hostile) mutate(b []byte) []byte {
	switch h.rnd.IntN(14) {
	case 0: // truncated
		if len(b) > 0 {
			return b[:h.rnd.IntN(len(b))]
		}
	case 1: // a byte flipped
		if len(b) > 0 {
			c := bytes.Clone(b)
			c[h.rnd.IntN(len(c))] ^= byte(1 + h.rnd.IntN(255))
			return c
		}
	case 2: // a duplicate or case-variant key
		if i := bytes.IndexByte(b, '{'); i >= 0 {
			return append(append(bytes.Clone(b[:i+1]), h.pick(`"query":"x",`, `"Query":"x",`, `"url":"https://a.example",`, `"text":"a",`, `"urls":[],`, `"Text":"a",`)...), b[i+1:]...)
		}
	case 3: // deeply nested
		d := 1 + h.rnd.IntN(20000)
		return []byte(`{"query":` + strings.Repeat("[", d) + strings.Repeat("]", d) + `}`)
	case 4: // numbers past every integer type
		return []byte(h.pick(`{"query":"a","limit":1e400}`, `{"query":"a","limit":-0}`, `{"query":"a","limit":99999999999999999999999}`, `{"query":"a","limit":1.5}`, `{"query":"a","limit":NaN}`))
	case 5: // invalid UTF-8 and lone surrogates
		return []byte(h.pick("{\"query\":\"\xff\xfe\"}", `{"query":"\ud800"}`, `{"text":"\udfff\ud800","voice":"en-US-1"}`, "{\"urls\":[\"https://a.example/\xc0\"]}"))
	case 6: // a byte-order mark, or trailing data
		if h.rnd.IntN(2) == 0 {
			return append([]byte("\xef\xbb\xbf"), b...)
		}
		return append(bytes.Clone(b), h.pick(` {}`, `garbage`, "\x00", `}`)...)
	case 7: // the wrong shape
		return []byte(h.pick(`null`, `[]`, `"query"`, `{"query":null}`, `{"query":{}}`, `{"urls":"https://a.example"}`, `{"urls":[1,2]}`, `{"text":["a"]}`, `true`, `{"__proto__":{}}`))
	case 8: // empty
		return nil
	case 9: // large
		return bytes.Repeat([]byte(h.pick("a", "{", "[", "\"")), h.pick2(64<<10, 256<<10+1, 1<<20))
	}
	return b
}

func (h *hostile) call() randomCall {
	routes := proxy.Routes()
	rt := routes[h.rnd.IntN(len(routes))]
	rc := randomCall{method: rt.Method, path: rt.Path, header: http.Header{}}
	switch h.rnd.IntN(10) {
	case 0:
		rc.method = h.pick("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND")
	case 1:
		rc.path = h.pick(rt.Path+"/", "/"+rt.Path, strings.ToUpper(rt.Path), rt.Path+"/..", rt.Path+"/%2e%2e/key",
			rt.Path+"?limit=-1&query=x&query=y", rt.Path+"%00", rt.Path+";x", rt.Path+"/"+h.text(3), "/v1/"+h.pick("", "nope", "..%2fkey", "search%2fengines"))
	}
	ct, body := h.validBody(rt.Path)
	if h.rnd.IntN(2) == 0 {
		body = h.mutate(body)
	}
	if rt.Body == proxy.BodyNone && h.rnd.IntN(4) != 0 {
		ct, body = "", nil
	}
	switch h.rnd.IntN(8) {
	case 0:
		ct = h.pick("", "text/plain", "application/json; charset=utf-16", "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=", "application/json;;", "application/problem+json", "APPLICATION/JSON", "*/*")
	case 1:
		rc.header.Set("Content-Encoding", h.pick("gzip", "br", "identity", "x"))
	}
	if ct != "" {
		rc.header.Set("Content-Type", ct)
	}
	switch h.rnd.IntN(10) {
	case 0:
	case 1:
		rc.header.Set("X-API-Key", h.other)
	case 2:
		rc.header.Set("X-API-Key", h.pick("", "sk_live_", "sk_test_"+strings.Repeat("a", 40), strings.Repeat("k", 8000), h.secret+" ", strings.ToUpper(h.secret)))
	case 3:
		rc.header["X-Api-Key"] = []string{h.secret, h.other}
	default:
		rc.header.Set("X-API-Key", h.secret)
	}
	for n := h.rnd.IntN(4); n > 0; n-- {
		switch h.rnd.IntN(9) {
		case 0:
			rc.header.Set("X-Request-Id", h.pick(strings.Repeat("r", 5000), "", "<script>", "a b", "\u00e9"))
		case 1:
			// Only 100-continue: net/http itself answers any other
			// expectation with a bare 417 before the gateway sees it.
			rc.header.Set("Expect", "100-continue")
		case 2:
			rc.header.Set("Accept", h.pick("application/xml", "*/*", "text/html;q=0"))
		case 3:
			rc.header.Set("Range", "bytes=0-1")
		case 4:
			rc.header.Set("X-Forwarded-For", h.pick("1.2.3.4", "::1, 10.0.0.1", strings.Repeat("9,", 2000)))
		case 5:
			rc.header.Set("Upgrade", h.pick("websocket", "h2c"))
			rc.header.Set("Connection", "Upgrade")
		case 6:
			rc.header.Set("Transfer-Encoding", "chunked") // the body is sent chunked below
		case 7:
			rc.header.Set("Authorization", "Bearer "+h.secret)
		case 8:
			rc.header.Set("X-Padding", strings.Repeat("p", h.pick2(100, 7000)))
		}
	}
	rc.body = body
	return rc
}

// TestRandomInputNeverFailsTheGateway sends seeded random requests (set
// EDGE_RANDOM_SEED to replay a run) to every public route of a gateway
// whose backends answer 200: every answer is below 500; an error is
// problem+json; a call the gateway refuses never reaches a backend, makes
// no event and costs nothing; and every event is one served call's.
func TestRandomInputNeverFailsTheGateway(t *testing.T) {
	seed := uint64(20261202)
	if s := os.Getenv("EDGE_RANDOM_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("EDGE_RANDOM_SEED %q: %v", s, err)
		}
	}
	t.Logf("EDGE_RANDOM_SEED=%d", seed)
	ev := newEnv(t, "capture", "capture", "capture")
	secret, k := ev.key("enterprise")
	other, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h := &hostile{rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), secret: secret, other: other}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableCompression: true}}
	const n = 1000
	served := map[string]randomCall{}
	statuses := map[int]int{}
	var charged int64
	for i := 0; i < n; i++ {
		rc := h.call()
		var body io.Reader = bytes.NewReader(rc.body)
		if rc.header.Get("Transfer-Encoding") != "" {
			rc.header.Del("Transfer-Encoding")
			body = io.MultiReader(bytes.NewReader(rc.body)) // unknown length: sent chunked
		}
		req, err := http.NewRequest(rc.method, ev.url+rc.path, body)
		if err != nil {
			continue // a request no client can send
		}
		req.Header = rc.header.Clone()
		before := ev.capture.calls.Load()
		resp, err := client.Do(req)
		if err != nil {
			// A server that answers before it has read a large body (a 404,
			// a 413) closes the connection after it; the client may then see
			// the reset instead of the answer. Refused all the same.
			if len(rc.body) < 64<<10 || !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Fatalf("call %d (seed %d): %v\n%s", i, seed, err, rc)
			}
			if ev.capture.calls.Load() != before {
				t.Fatalf("call %d (seed %d): the backend was called for a request cut off: %v\n%s", i, seed, err, rc)
			}
			statuses[0]++
			continue
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil && (len(rc.body) < 64<<10 || !errors.Is(err, syscall.ECONNRESET)) {
			// (The reset of a large unread body may also cut the answer's.)
			t.Fatalf("call %d (seed %d): %d, reading the answer: %v\n%s", i, seed, resp.StatusCode, err, rc)
		}
		statuses[resp.StatusCode]++
		reached := ev.capture.calls.Load() - before
		switch {
		case resp.StatusCode >= 500:
			t.Fatalf("call %d (seed %d): %d %s\n%s", i, seed, resp.StatusCode, b, rc)
		case resp.StatusCode >= 400:
			if rc.method != "HEAD" && resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("call %d (seed %d): %d as %q: %s\n%s", i, seed, resp.StatusCode, resp.Header.Get("Content-Type"), b, rc)
			}
			if reached != 0 {
				t.Fatalf("call %d (seed %d): refused with %d after reaching the backend\n%s", i, seed, resp.StatusCode, rc)
			}
			if c := resp.Header.Get("X-Credits-Remaining"); c != "" && c != strconv.FormatInt(50000-charged, 10) {
				t.Fatalf("call %d (seed %d): refused with %d, credits %s, want %d\n%s", i, seed, resp.StatusCode, c, 50000-charged, rc)
			}
		default:
			if reached > 0 {
				served[resp.Header.Get("X-Request-Id")] = rc
				if c := resp.Header.Get("X-Credits-Remaining"); c != "" {
					left, err := strconv.ParseInt(c, 10, 64)
					if err != nil {
						t.Fatalf("call %d: X-Credits-Remaining %q", i, c)
					}
					charged = 50000 - left
				}
			}
		}
	}
	t.Logf("%d random calls: statuses %v; %d reached a backend", n, statuses, len(served))
	evs := ev.events()
	if len(evs) != len(served) {
		t.Fatalf("%d events for %d calls served by a backend", len(evs), len(served))
	}
	var sum int64
	for _, e := range evs {
		if _, ok := served[e.RequestId]; !ok || e.KeyId != k.ID {
			t.Fatalf("event %+v is not one of a served call", e)
		}
		sum += e.Credits
	}
	if bal := ev.balance(k); sum != 50000-bal || charged != sum {
		t.Fatalf("events Σ %d credits, the last answer says %d were charged, Redis holds %d of 50000", sum, charged, bal)
	}
	if len(served) == 0 || statuses[400] == 0 {
		t.Fatalf("statuses %v: the generator no longer reaches both sides", statuses)
	}
}
