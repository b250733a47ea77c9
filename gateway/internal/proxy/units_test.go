package proxy

import (
	stdjson "encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mana/apigw/gateway/internal/quota"
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

// FuzzBodyUnits checks the units the gateway prices against an independent
// count of what a backend decodes: the standard library's encoding/json (as
// the backends' own parsers read a body) and utf8.RuneCountInString for TTS
// characters, len for bulk URLs. A body built from the fuzzed text must be
// priced at exactly its characters (or refused for being empty or too long);
// any raw body the gateway accepts must decode to the same count.
func FuzzBodyUnits(f *testing.F) {
	f.Add("Hello, world!", []byte(`{"text":"日本語","voice":"en-US-1"}`))
	f.Add("😀é\u0301", []byte(`{"urls":["https://a.example","http://b.example/x"]}`))
	f.Add("", []byte(`{"text":"a\u00e9\ud83d\ude00"}`))
	f.Fuzz(func(t *testing.T, text string, raw []byte) {
		body, err := stdjson.Marshal(map[string]string{"text": text, "voice": "en-US-1"})
		if err != nil {
			t.Fatal(err)
		}
		var sent struct{ Text string }
		if err := stdjson.Unmarshal(body, &sent); err != nil {
			t.Fatal(err)
		}
		want := int64(utf8.RuneCountInString(sent.Text))
		got, err := ttsUnits(body)
		switch {
		case err == nil && got != want:
			t.Fatalf("%s priced at %d characters; a backend reads %d", body, got, want)
		case err != nil && want > 0 && want <= MaxTTSCharacters:
			t.Fatalf("%s (%d characters) refused: %v", body, want, err)
		case err == nil && (want == 0 || want > MaxTTSCharacters):
			t.Fatalf("%s (%d characters) accepted", body, want)
		}

		if n, err := ttsUnits(raw); err == nil {
			var m map[string]any
			if err := stdjson.Unmarshal(raw, &m); err != nil {
				t.Fatalf("TTS body %q accepted at %d units, but a backend cannot decode it: %v", raw, n, err)
			}
			if s, ok := m["text"].(string); !ok || int64(utf8.RuneCountInString(s)) != n {
				t.Fatalf("TTS body %q priced at %d units; a backend reads text %q", raw, n, m["text"])
			}
		}
		if n, err := bulkUnits(raw); err == nil {
			var m map[string]any
			if err := stdjson.Unmarshal(raw, &m); err != nil {
				t.Fatalf("bulk body %q accepted at %d units, but a backend cannot decode it: %v", raw, n, err)
			}
			if urls, ok := m["urls"].([]any); !ok || int64(len(urls)) != n {
				t.Fatalf("bulk body %q priced at %d units; a backend reads urls %v", raw, n, m["urls"])
			}
		}
	})
}

func TestPeriodEndIsTheNextMonthInUTC(t *testing.T) {
	for _, tc := range []struct{ now, want string }{
		{"2026-12-31T23:59:59.999Z", "2027-01-01T00:00:00Z"},
		{"2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"},
		{"2027-01-31T12:00:00Z", "2027-02-01T00:00:00Z"},
		{"2028-02-29T23:00:00Z", "2028-03-01T00:00:00Z"},
		// Local midnight of 1 March east of UTC is still February in UTC.
		{"2027-03-01T00:30:00+01:00", "2027-03-01T00:00:00Z"},
		// Late on 31 May west of UTC is already June in UTC.
		{"2027-05-31T22:00:00-05:00", "2027-07-01T00:00:00Z"},
	} {
		now, err := time.Parse(time.RFC3339Nano, tc.now)
		if err != nil {
			t.Fatal(err)
		}
		got := quota.PeriodEnd(now)
		if got.Format(time.RFC3339) != tc.want || got.Location() != time.UTC {
			t.Errorf("periodEnd(%s) = %s, want %s", tc.now, got, tc.want)
		}
	}
}
