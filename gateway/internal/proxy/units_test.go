package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestTTSUnitsCountCodePoints(t *testing.T) {
	for _, tc := range []struct {
		text string
		want int64
	}{
		{strings.Repeat("a", 999), 999},
		{strings.Repeat("a", 1000), 1000},
		{strings.Repeat("a", 1001), 1001},
		{strings.Repeat("é", 1000), 1000}, // 2 bytes each
		{strings.Repeat("😀", 1001), 1001}, // 4 bytes each
		{"日本語", 3},
	} {
		got, err := ttsUnits([]byte(`{"text":"` + tc.text + `","voice":"en-US-1"}`))
		if err != nil || got != tc.want {
			t.Errorf("%d bytes: %d units (%v), want %d", len(tc.text), got, err, tc.want)
		}
	}
	for _, bad := range []string{`{"text":""}`, `{"voice":"x"}`, `{"text":"a","voice":""}`, `{"text":1}`, `nope`} {
		if _, err := ttsUnits([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestSTTSettleRoundsUp(t *testing.T) {
	for _, tc := range []struct {
		body string
		want int64
		err  bool
	}{
		{`{"durationSeconds":0}`, 0, false},
		{`{"durationSeconds":59}`, 59, false},
		{`{"durationSeconds":59.01}`, 60, false},
		{`{"durationSeconds":61}`, 61, false},
		{`{"text":"x"}`, 0, true},
		{`{"durationSeconds":-1}`, 0, true},
		{`not json`, 0, true},
	} {
		resp := &http.Response{Body: io.NopCloser(strings.NewReader(tc.body)), Header: http.Header{}}
		got, err := sttSettle(resp)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s: %d (%v), want %d", tc.body, got, err, tc.want)
		}
		// The body is still there for the client.
		if b, _ := io.ReadAll(resp.Body); string(b) != tc.body {
			t.Errorf("body after settle: %q", b)
		}
	}
}

func TestBulkUnitsCountURLs(t *testing.T) {
	got, err := bulkUnits([]byte(`{"urls":["https://a.example/1","https://a.example/2","http://b.example"]}`))
	if err != nil || got != 3 {
		t.Fatalf("%d %v", got, err)
	}
	if _, err := bulkUnits([]byte(`{"urls":["gopher://x"]}`)); err == nil {
		t.Fatal("gopher accepted")
	}
}
