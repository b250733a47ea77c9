package httpjson_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mana/apigw/services/httpjson"
)

func TestBodyDecode(t *testing.T) {
	t.Parallel()
	body := httpjson.Body{Limit: 32, Name: "the request body", Shape: "a JSON object with text"}
	tests := []struct {
		name        string
		body        httpjson.Body
		contentType string
		payload     string
		status      int    // 0: decoded
		detail      string // substring of the problem's detail
	}{
		{name: "ok", body: body, contentType: "application/json; charset=utf-8", payload: `{"text":"hi"}`},
		{name: "no content type", body: body, payload: `{"text":"hi"}`},
		{name: "wrong content type", body: body, contentType: "text/plain", payload: `{"text":"hi"}`,
			status: 415, detail: "send the request body as application/json"},
		{name: "too big", body: body, payload: `{"text":"` + strings.Repeat("a", 40) + `"}`,
			status: 413, detail: "the body exceeds 32 bytes"},
		{name: "malformed", body: body, payload: `{"text":1}`,
			// The decoder words its error "cannot unmarshal" or "unable to
			// unmarshal" depending on the run; both name what was wrong.
			status: 400, detail: "unmarshal JSON number into Go string"},
		{name: "malformed, cause hidden", body: httpjson.Body{Limit: 32, Shape: "a login", HideCause: true}, payload: `{"text":1}`,
			status: 400, detail: "the body is not a login"},
		{name: "two values", body: body, payload: `{"text":"a"} {}`,
			status: 400, detail: "more than one JSON value"},
		// As Python's json and JavaScript's JSON.parse read an object.
		{name: "last duplicate wins", body: body, payload: `{"text":"a","text":"hi"}`},
		{name: "keys are case-sensitive", body: body, payload: `{"text":"hi","Text":"a"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tt.payload))
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			w := httptest.NewRecorder()
			var v struct {
				Text string `json:"text"`
			}
			ok := tt.body.Decode(w, r, &v)
			if tt.status == 0 {
				if !ok || v.Text != "hi" {
					t.Fatalf("Decode = %v, %+v; response %d %s", ok, v, w.Code, w.Body)
				}
				return
			}
			if ok || w.Code != tt.status || w.Header().Get("Content-Type") != "application/problem+json" {
				t.Fatalf("Decode = %v, response %d %s %s", ok, w.Code, w.Header().Get("Content-Type"), w.Body)
			}
			var p httpjson.Details
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			if p.Type != "about:blank" || p.Status != tt.status || !strings.Contains(p.Detail, tt.detail) {
				t.Errorf("problem = %+v, want detail containing %q", p, tt.detail)
			}
			if tt.body.HideCause && strings.Contains(p.Detail, "json:") {
				t.Errorf("detail %q shows the decoder's error", p.Detail)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	t.Parallel()
	w := httptest.NewRecorder()
	httpjson.Write(w, http.StatusCreated, map[string]string{"status": "ok"})
	if w.Code != 201 || w.Header().Get("Content-Type") != "application/json" || strings.TrimSpace(w.Body.String()) != `{"status":"ok"}` {
		t.Errorf("response %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
}
