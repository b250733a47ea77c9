package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func ttsUnits(b []byte) (int64, error)  { n, _, err := parseJSON[ttsBody](b); return n, err }
func bulkUnits(b []byte) (int64, error) { n, _, err := parseJSON[bulkBody](b); return n, err }

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
	for _, bad := range []string{`{"text":""}`, `{"voice":"x"}`, `{"text":"a","voice":""}`, `{"text":1}`, `nope`, `null`,
		`{"text":"` + strings.Repeat("a", MaxTTSCharacters+1) + `"}`, "{\"text\":\"\xff\"}", `{"text":"\ud800"}`} {
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

// TestJSONBodiesAreForwardedAsValidated: the forwarded document is the
// parsed one re-encoded, and a key that could mean one thing here and
// another to a backend (duplicate, case variant, unknown) is refused.
func TestJSONBodiesAreForwardedAsValidated(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		parse          func([]byte) (int64, []byte, error)
	}{
		{"compacted", "{ \"query\" : \"a\\u0062\" ,\n \"limit\": 5 }", `{"query":"ab","limit":5}`, parseJSON[searchBody]},
		{"absent fields stay absent", `{"query":"a"}`, `{"query":"a"}`, parseJSON[searchBody]},
		{"options passed through", `{"url":"https://a.example","options":{ "x" : [1, 2] }}`, `{"url":"https://a.example","options":{"x":[1,2]}}`, parseJSON[extractBody]},
		{"tts", `{"text":"hi","voice":"en-US-1","speed":1.5}`, `{"text":"hi","voice":"en-US-1","speed":1.5}`, parseJSON[ttsBody]},
	} {
		_, out, err := tc.parse([]byte(tc.in))
		if err != nil || string(out) != tc.want {
			t.Errorf("%s: forwards %s (%v), want %s", tc.name, out, err, tc.want)
		}
	}
	long := strings.Repeat("a", 9000)
	for _, tc := range []struct {
		in, detail string
		parse      func([]byte) (int64, []byte, error)
	}{
		{`{"text":"` + long + `","Text":"a","voice":"en-US-1"}`, `unknown key "Text"`, parseJSON[ttsBody]},
		{`{"Text":"a","text":"` + long + `"}`, `unknown key "Text"`, parseJSON[ttsBody]},
		{`{"text":"a","text":"` + long + `"}`, `duplicate key "text"`, parseJSON[ttsBody]},
		{`{"urls":["https://a.example"],"URLS":["https://b.example","https://c.example"]}`, `unknown key "URLS"`, parseJSON[bulkBody]},
		{`{"urls":["https://a.example"],"urls":["https://b.example","https://c.example"]}`, `duplicate key "urls"`, parseJSON[bulkBody]},
		{`{"url":"https://a.example","options":{"a":1,"a":2}}`, `duplicate key "a"`, parseJSON[extractBody]},
		{`{"query":"a"} {"query":"b"}`, `syntax error`, parseJSON[searchBody]},
		{`{"query":"a","limit":"5"}`, `"limit" must not be a JSON string`, parseJSON[searchBody]},
		{`{"query":"a","limit":51}`, `"limit" must be between 1 and 50`, parseJSON[searchBody]},
	} {
		_, out, err := tc.parse([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.detail) {
			t.Errorf("%.60s: forwards %.60s (%v), want an error with %q", tc.in, out, err, tc.detail)
		}
	}
}
