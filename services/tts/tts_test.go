package tts

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/services/wavinfo"

	"github.com/mana/apigw/services/httpjson"
)

func newServer(t *testing.T, cfg Config) *httptest.Server {
	t.Helper()
	h, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func synthesize(t *testing.T, srv *httptest.Server, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(srv.URL+"/synthesize", contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// checkWAV parses a WAV answer and checks that its header tells the truth
// about its length.
func checkWAV(t *testing.T, resp *http.Response, body []byte) wavinfo.Info {
	t.Helper()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "audio/wav" {
		t.Fatalf("%d %s: %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Fatalf("Content-Length %s, body %d bytes", cl, len(body))
	}
	h, _, err := wavinfo.Read(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("answer is not WAV: %v", err)
	}
	if int64(h.DataSize) != int64(len(body))-h.DataOffset {
		t.Fatalf("header declares %d data bytes, %d follow", h.DataSize, int64(len(body))-h.DataOffset)
	}
	return h
}

func TestToneSynthesis(t *testing.T) {
	srv := newServer(t, Config{Engine: EngineTone, MaxChars: 2000})
	tests := []struct {
		name, text, voice string
	}{
		{"seed example", "Hello, world!", "en-US-1"},
		{"default voice", "Hello, world!", ""},
		{"german", "Grüße aus Köln", "de-DE-1"},
		{"long", strings.Repeat("The quick brown fox. ", 90), "en-GB-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := json.Marshal(synthesizeRequest{Text: tt.text, Voice: tt.voice})
			if err != nil {
				t.Fatal(err)
			}
			resp, b := synthesize(t, srv, "application/json", string(body))
			h := checkWAV(t, resp, b)
			if h.SampleRate != toneRate || h.Channels != 1 || h.BitDepth != 16 {
				t.Fatalf("format %+v", h)
			}
			runes := len([]rune(tt.text))
			want := time.Duration(2*edgeFrames+runes*charFrames) * time.Second / toneRate
			if h.Duration(int64(h.DataSize)) != want {
				t.Fatalf("duration %v, want %v for %d characters", h.Duration(int64(h.DataSize)), want, runes)
			}
			if got := resp.Header.Get("X-Audio-Duration-Seconds"); got != strconv.FormatFloat(want.Seconds(), 'f', 3, 64) {
				t.Fatalf("X-Audio-Duration-Seconds %s", got)
			}
			// Not silence: letters make sound.
			if bytes.Count(b[h.DataOffset:], []byte{0}) == len(b)-int(h.DataOffset) {
				t.Fatal("all samples are zero")
			}
		})
	}
}

func TestSynthesizeBadInput(t *testing.T) {
	srv := newServer(t, Config{Engine: EngineTone, MaxChars: 20})
	tests := []struct {
		name, contentType, body string
		want                    int
	}{
		{"empty text", "application/json", `{"text":"","voice":"en-US-1"}`, 400},
		{"blank text", "application/json", `{"text":"   ","voice":"en-US-1"}`, 400},
		{"missing text", "application/json", `{"voice":"en-US-1"}`, 400},
		{"unknown voice", "application/json", `{"text":"hi","voice":"xx-XX-9"}`, 400},
		{"not json", "application/json", `text=hi`, 400},
		{"text not a string", "application/json", `{"text":1}`, 400},
		{"too long", "application/json", `{"text":"` + strings.Repeat("ä", 21) + `"}`, 422},
		{"body too big", "application/json", `{"text":"` + strings.Repeat("a", maxRequestBody) + `"}`, 413},
		{"form", "application/x-www-form-urlencoded", `text=hi`, 415},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := synthesize(t, srv, tt.contentType, tt.body)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, b)
			}
			var p httpjson.Details
			if resp.Header.Get("Content-Type") != "application/problem+json" || json.Unmarshal(b, &p) != nil || p.Status != tt.want || p.Detail == "" {
				t.Fatalf("problem %s %s", resp.Header.Get("Content-Type"), b)
			}
		})
	}
	// Exactly at the limit is fine.
	resp, b := synthesize(t, srv, "application/json", `{"text":"`+strings.Repeat("ä", 20)+`"}`)
	checkWAV(t, resp, b)
}

func TestCatalogues(t *testing.T) {
	srv := newServer(t, Config{Engine: EngineTone})
	for path, want := range map[string]string{"/voices": `"id":"en-US-1"`, "/languages": `"code":"en-US"`, "/health": `"engine":"tone"`} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
	}
}

// TestAutoEngine checks the engine the machine gives: espeak-ng where it is
// installed (its answer must carry a true data size, not the placeholder
// espeak-ng writes on a pipe), the tone generator where it is not.
func TestAutoEngine(t *testing.T) {
	srv := newServer(t, Config{})
	resp, err := http.Get(srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var health struct{ Engine string }
	err = json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("health body: %v", err)
	}
	want := EngineTone
	if _, err := exec.LookPath("espeak-ng"); err == nil {
		want = EngineEspeak
	}
	if health.Engine != want {
		t.Fatalf("engine %q, want %q", health.Engine, want)
	}
	resp, b := synthesize(t, srv, "application/json", `{"text":"Hello, world! This is a test.","voice":"en-US-1"}`)
	h := checkWAV(t, resp, b)
	if d := h.Duration(int64(h.DataSize)); d < 500*time.Millisecond || d > 10*time.Second {
		t.Fatalf("duration %v for one short sentence", d)
	}
}

// TestEspeakSynthesis speaks with espeak-ng, which `make test` installs:
// every voice answers a WAV file whose header tells its true length (not the
// placeholder espeak-ng writes on a pipe), with sound in it, and more text
// gives more audio.
func TestEspeakSynthesis(t *testing.T) {
	if _, err := exec.LookPath("espeak-ng"); err != nil {
		t.Fatal("espeak-ng not found: run the tests with `make test`, which installs it")
	}
	srv := newServer(t, Config{Engine: EngineEspeak})
	short, long := "Hello, world!", strings.Repeat("The quick brown fox jumps over the lazy dog. ", 6)
	for _, v := range voices() {
		t.Run(v.ID, func(t *testing.T) {
			var durations []time.Duration
			for _, text := range []string{short, long} {
				body, err := json.Marshal(synthesizeRequest{Text: text, Voice: v.ID})
				if err != nil {
					t.Fatal(err)
				}
				resp, b := synthesize(t, srv, "application/json", string(body))
				h := checkWAV(t, resp, b)
				if h.SampleRate == toneRate {
					t.Fatalf("a %d Hz answer is the tone generator's, not espeak-ng's (22050 Hz): %+v", toneRate, h)
				}
				if got, want := resp.Header.Get("X-Audio-Duration-Seconds"), strconv.FormatFloat(h.Duration(int64(h.DataSize)).Seconds(), 'f', 3, 64); got != want {
					t.Fatalf("X-Audio-Duration-Seconds %s, the header says %s", got, want)
				}
				if bytes.Count(b[h.DataOffset:], []byte{0}) == len(b)-int(h.DataOffset) {
					t.Fatal("all samples are zero")
				}
				durations = append(durations, h.Duration(int64(h.DataSize)))
			}
			if durations[0] < 300*time.Millisecond || durations[0] > 10*time.Second || durations[1] < 3*durations[0] {
				t.Fatalf("durations %v for %d and %d characters", durations, len(short), len(long))
			}
		})
	}
}

func TestBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"unknown engine", Config{Engine: "festival"}},
		{"espeak missing", Config{Engine: EngineEspeak, EspeakPath: "/nonexistent/espeak-ng"}},
		{"negative limit", Config{MaxChars: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg, slog.New(slog.DiscardHandler)); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	if _, err := New(Config{}, nil); err == nil {
		t.Fatal("New accepted a nil logger")
	}
}
