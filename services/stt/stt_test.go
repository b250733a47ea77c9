package stt

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

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

// pcmHeader is a 44-byte header of 16-bit PCM declaring a data size,
// written here (not with the gateway's encoder) so that it may lie.
func pcmHeader(channels uint16, rate uint32, declared uint32) []byte {
	b := []byte("RIFF")
	b = binary.LittleEndian.AppendUint32(b, 36+declared)
	b = append(b, "WAVEfmt "...)
	b = binary.LittleEndian.AppendUint32(b, 16)
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = binary.LittleEndian.AppendUint16(b, channels)
	b = binary.LittleEndian.AppendUint32(b, rate)
	b = binary.LittleEndian.AppendUint32(b, rate*uint32(channels)*2)
	b = binary.LittleEndian.AppendUint16(b, channels*2)
	b = binary.LittleEndian.AppendUint16(b, 16)
	b = append(b, "data"...)
	return binary.LittleEndian.AppendUint32(b, declared)
}

func wavBytes(channels uint16, rate uint32, declared uint32, actual int) []byte {
	return append(pcmHeader(channels, rate, declared), make([]byte, actual)...)
}

type field struct{ name, value string }

// form builds a multipart body; file == nil leaves the file field out.
func form(t *testing.T, fields []field, fileField string, file []byte) (string, *bytes.Buffer) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, f := range fields {
		if err := mw.WriteField(f.name, f.value); err != nil {
			t.Fatal(err)
		}
	}
	if file != nil {
		fw, err := mw.CreateFormFile(fileField, "audio.wav")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fw.Write(file)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), &body
}

func TestTranscribe(t *testing.T) {
	srv := newServer(t, Config{MaxUploadBytes: 1 << 20})
	tests := []struct {
		name        string
		fields      []field
		fileField   string
		file        []byte
		contentType string // overrides the multipart type
		query       string
		status      int
		duration    float64
		language    string
	}{
		{name: "1 s mono 16 kHz", fileField: "file", file: wavBytes(1, 16000, 32000, 32000), status: 200, duration: 1, language: "en"},
		{name: "2.5 s stereo 44.1 kHz", fileField: "file", file: wavBytes(2, 44100, 441000, 441000), status: 200, duration: 2.5, language: "en"},
		{name: "language field", fields: []field{{"language", "de"}}, fileField: "file", file: wavBytes(1, 16000, 16000, 16000), status: 200, duration: 0.5, language: "de"},
		{name: "language query", query: "?language=FR", fileField: "file", file: wavBytes(1, 16000, 16000, 16000), status: 200, duration: 0.5, language: "fr"},
		{name: "other fields are skipped", fields: []field{{"note", "hi"}}, fileField: "file", file: wavBytes(1, 8000, 16000, 16000), status: 200, duration: 1, language: "en"},
		{name: "truncated upload counts what arrived", fileField: "file", file: wavBytes(1, 16000, 320000, 32000), status: 200, duration: 1, language: "en"},
		{name: "streaming placeholder size", fileField: "file", file: wavBytes(1, 16000, 0xFFFFFFFF-36, 64000), status: 200, duration: 2, language: "en"},
		{name: "no samples", fileField: "file", file: wavBytes(1, 16000, 0, 0), status: 200, duration: 0, language: "en"},
		{name: "empty file", fileField: "file", file: []byte{}, status: 400},
		{name: "missing file field", fields: []field{{"language", "en"}}, status: 400},
		{name: "file under another name", fileField: "audio", file: wavBytes(1, 16000, 10, 10), status: 400},
		{name: "mp3", fileField: "file", file: []byte("ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00"), status: 415},
		{name: "text", fileField: "file", file: []byte("hello, this is not audio"), status: 415},
		{name: "broken wav header", fileField: "file", file: []byte("RIFF\x24\x00\x00\x00WAVEdata\x00\x00\x00\x00"), status: 422},
		{name: "unknown language", fields: []field{{"language", "xx"}}, fileField: "file", file: wavBytes(1, 16000, 10, 10), status: 422},
		{name: "unknown model", fields: []field{{"model", "whisper-huge"}}, fileField: "file", file: wavBytes(1, 16000, 10, 10), status: 422},
		{name: "too large", fileField: "file", file: wavBytes(1, 16000, 2<<20, 2<<20), status: 413},
		{name: "json body", contentType: "application/json", status: 415},
		{name: "multipart without boundary", contentType: "multipart/form-data", status: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct, body := form(t, tt.fields, tt.fileField, tt.file)
			if tt.contentType != "" {
				ct = tt.contentType
			}
			resp, err := http.Post(srv.URL+"/transcribe"+tt.query, ct, body)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			if tt.status != 200 {
				var p httpjson.Details
				if resp.Header.Get("Content-Type") != "application/problem+json" || json.Unmarshal(b, &p) != nil || p.Status != tt.status || p.Detail == "" {
					t.Fatalf("problem %s %s", resp.Header.Get("Content-Type"), b)
				}
				return
			}
			var tr Transcript
			if err := json.Unmarshal(b, &tr); err != nil {
				t.Fatal(err)
			}
			if tr.DurationSeconds != tt.duration || tr.Language != tt.language || tr.Model != DefaultModel || (tt.duration > 0) != (tr.Text != "") {
				t.Fatalf("transcript %+v, want %v s in %s", tr, tt.duration, tt.language)
			}
		})
	}
}

// A long upload is streamed: the server's allocations stay far below the
// upload's size.
func TestTranscribeStreams(t *testing.T) {
	srv := newServer(t, Config{})
	const seconds = 30 * 60 // 30 minutes of 16 kHz mono: ~57 MiB
	dataSize := uint32(seconds * 32000)
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		fw, err := mw.CreateFormFile("file", "long.wav")
		if err == nil {
			_, err = fw.Write(pcmHeader(1, 16000, dataSize))
		}
		chunk := make([]byte, 64<<10)
		for left := int(dataSize); err == nil && left > 0; left -= len(chunk) {
			_, err = fw.Write(chunk[:min(len(chunk), left)])
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := http.Post(srv.URL+"/transcribe", mw.FormDataContentType(), pr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	runtime.ReadMemStats(&after)
	var tr Transcript
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v", resp.StatusCode, err)
	}
	if tr.DurationSeconds != seconds {
		t.Fatalf("duration %v, want %d", tr.DurationSeconds, seconds)
	}
	// Client and server share this process; both stream, so the total
	// allocated is a small fraction of the 57 MiB sent.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > uint64(dataSize)/4 {
		t.Fatalf("allocated %d bytes for a %d-byte upload", grew, dataSize)
	}
}

func TestCatalogues(t *testing.T) {
	srv := newServer(t, Config{})
	for path, want := range map[string]string{"/models": `"id":"standin-wav-1"`, "/languages": `"code":"en"`, "/health": `"ok"`} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
	}
}

func TestBadConfig(t *testing.T) {
	if _, err := New(Config{MaxUploadBytes: -1}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("accepted a negative cap")
	}
	if _, err := New(Config{}, nil); err == nil {
		t.Fatal("accepted a nil logger")
	}
}
