package search

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mana/apigw/services/httpjson"
)

func newTestServer(t *testing.T, cfg Config) *httptest.Server {
	t.Helper()
	h, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func postJSON(t *testing.T, url, body string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func checkProblem(t *testing.T, status int, h http.Header, body []byte) {
	t.Helper()
	if ct := h.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q for %d: %s", ct, status, body)
	}
	var p httpjson.Details
	if err := json.Unmarshal(body, &p); err != nil || p.Status != status || p.Type == "" || p.Title == "" || p.Detail == "" {
		t.Fatalf("problem %s (%v)", body, err)
	}
}

func TestSearchEndpoint(t *testing.T) {
	srv := newTestServer(t, Config{PublicURL: "http://search.test:3021/"})
	status, _, body := postJSON(t, srv.URL+"/search", `{"query":"quantum computing","limit":3}`)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var resp Response
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Query != "quantum computing" || len(resp.Results) != 3 || resp.Total < 5 {
		t.Fatalf("response %+v", resp)
	}
	top := resp.Results[0]
	if top.URL != "http://search.test:3021/pages/quantum-computing-introduction" || top.Score <= resp.Results[1].Score || top.Snippet == "" || top.Title == "" {
		t.Fatalf("top result %+v", top)
	}

	// No match is an empty list, not null.
	status, _, body = postJSON(t, srv.URL+"/search", `{"query":"xylophone"}`)
	if status != 200 || !bytes.Contains(body, []byte(`"results":[]`)) || !bytes.Contains(body, []byte(`"total":0`)) {
		t.Fatalf("no-match: %d %s", status, body)
	}
}

func TestSearchBadInput(t *testing.T) {
	srv := newTestServer(t, Config{})
	tests := []struct {
		name, contentType, body string
		want                    int
	}{
		{"empty query", "application/json", `{"query":"  "}`, 400},
		{"missing query", "application/json", `{}`, 400},
		{"not json", "application/json", `query=x`, 400},
		{"query wrong type", "application/json", `{"query":5}`, 400},
		{"trailing garbage", "application/json", `{"query":"x"}x`, 400},
		{"limit zero", "application/json", `{"query":"x","limit":0}`, 422},
		{"limit too big", "application/json", `{"query":"x","limit":51}`, 422},
		{"limit fractional", "application/json", `{"query":"x","limit":1.5}`, 400},
		{"query too long", "application/json", `{"query":"` + strings.Repeat("q", MaxQueryLength+1) + `"}`, 422},
		{"body too big", "application/json", `{"query":"` + strings.Repeat("q", maxRequestBody) + `"}`, 413},
		{"form", "application/x-www-form-urlencoded", `query=x`, 415},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := http.Post(srv.URL+"/search", tt.contentType, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			checkProblem(t, tt.want, resp.Header, body)
		})
	}
}

func TestEnginesPagesAndHealth(t *testing.T) {
	srv := newTestServer(t, Config{})
	tests := []struct {
		path, contentType, contains string
		status                      int
	}{
		{"/engines", "application/json", `"name":"bm25"`, 200},
		{"/health", "application/json", `"ok"`, 200},
		{"/pages/shors-algorithm", "text/html; charset=utf-8", "<h1>Shor&#39;s algorithm", 200},
		{"/pages", "text/html; charset=utf-8", `href="/pages/sourdough-bread"`, 200},
		{"/pages/no-such-page", "application/problem+json", `"status":404`, 404},
		{"/nowhere", "application/problem+json", `"status":404`, 404},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != tt.contentType || !strings.Contains(string(body), tt.contains) {
				t.Fatalf("%d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
		})
	}
}

func TestBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"bad public url", Config{PublicURL: "ftp://x"}},
		{"allow host without port", Config{ExtractAllowHosts: []string{"localhost"}}},
		{"allow host bad port", Config{ExtractAllowHosts: []string{"localhost:http"}}},
		{"bad slug", Config{Corpus: []Document{{Slug: "Bad Slug", Title: "t", Body: "b"}}}},
		{"duplicate slug", Config{Corpus: []Document{{Slug: "a", Title: "t", Body: "b"}, {Slug: "a", Title: "t", Body: "b"}}}},
		{"negative timeout", Config{ExtractTimeout: -1}},
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
