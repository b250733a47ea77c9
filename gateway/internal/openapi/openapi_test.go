package openapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/services/testenv"
)

// load parses b (YAML or JSON) with kin-openapi, resolving every $ref.
func load(t *testing.T, b []byte) *openapi3.T {
	t.Helper()
	l := openapi3.NewLoader()
	doc, err := l.LoadFromData(b)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return doc
}

func TestDocumentLoadsAndValidates(t *testing.T) {
	doc := load(t, Spec())
	if doc.OpenAPI != "3.1.0" || !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	// Validate checks the document's structure and, for 3.1, every schema
	// under JSON Schema 2020-12 rules, and the examples against their schemas.
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation()); err != nil {
		t.Fatalf("validate: %v", err)
	}
	for _, name := range []string{"apiKey", "bearerJWT"} {
		if doc.Components.SecuritySchemes[name] == nil {
			t.Errorf("security scheme %s missing", name)
		}
	}
	if s := doc.Components.SecuritySchemes["apiKey"].Value; s.Type != "apiKey" || s.In != "header" || s.Name != "X-API-Key" {
		t.Errorf("apiKey scheme %+v", s)
	}
	if s := doc.Components.SecuritySchemes["bearerJWT"].Value; s.Type != "http" || s.Scheme != "bearer" || s.BearerFormat != "JWT" {
		t.Errorf("bearerJWT scheme %+v", s)
	}
}

// TestEveryOperationIsComplete checks what a reader relies on for every
// operation: an ID, a security requirement (public: the API key; management
// and the session: the bearer JWT; system and the dashboard's files: none), a documented success, and every error as
// problem+json with X-Request-Id.
func TestEveryOperationIsComplete(t *testing.T) {
	doc := load(t, Spec())
	ids := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			name := method + " " + path
			if op.OperationID == "" || ids[op.OperationID] {
				t.Errorf("%s: operationId %q missing or repeated", name, op.OperationID)
			}
			ids[op.OperationID] = true
			want := ""
			switch {
			case strings.HasPrefix(path, "/v1/"):
				want = "apiKey"
			case strings.HasPrefix(path, "/api-keys"), strings.HasPrefix(path, "/billing/"), strings.HasPrefix(path, "/webhooks"), path == "/audit", path == "/me", path == "/tiers":
				want = "bearerJWT"
			}
			if op.Security == nil {
				t.Errorf("%s: no security requirement", name)
			} else if want == "" && len(*op.Security) != 0 {
				t.Errorf("%s: a system endpoint must not require authentication", name)
			} else if want != "" && (len(*op.Security) != 1 || (*op.Security)[0][want] == nil) {
				t.Errorf("%s: security %v, want %s", name, *op.Security, want)
			}
			ok := false
			for code, ref := range op.Responses.Map() {
				r := ref.Value
				if r.Headers["X-Request-Id"] == nil || !r.Headers["X-Request-Id"].Value.Required {
					t.Errorf("%s %s: X-Request-Id not documented as required", name, code)
				}
				if code[0] == '2' {
					ok = true
				}
				if code[0] == '4' || (code[0] == '5' && path != "/ready") {
					mt := r.Content.Get("application/problem+json")
					if mt == nil || mt.Schema == nil || mt.Schema.Ref != "#/components/schemas/Problem" || len(r.Content) != 1 {
						t.Errorf("%s %s: not application/problem+json with the Problem schema", name, code)
					}
				}
				if code == "429" || code == "402" || code == "503" {
					if h := r.Headers["Retry-After"]; h == nil || !h.Value.Required {
						t.Errorf("%s %s: Retry-After not required", name, code)
					}
				}
			}
			if !ok {
				t.Errorf("%s: no 2xx response", name)
			}
			if want == "bearerJWT" && op.Responses.Value("401") == nil {
				t.Errorf("%s: no 401", name)
			}
			if want == "apiKey" {
				for _, code := range []string{"401", "403", "429", "500"} {
					if op.Responses.Value(code) == nil {
						t.Errorf("%s: no %s", name, code)
					}
				}
				for code, ref := range op.Responses.Map() {
					if code[0] != '2' {
						continue
					}
					for _, h := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Credits-Remaining", "RateLimit", "RateLimit-Policy"} {
						if ref.Value.Headers[h] == nil {
							t.Errorf("%s %s: header %s not documented", name, code, h)
						}
					}
				}
			}
		}
	}
}

func TestJSONIsTheSameDocument(t *testing.T) {
	j, err := JSON()
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(j) {
		t.Fatal("JSON() is not valid JSON")
	}
	fromYAML, err := json.Marshal(load(t, Spec()))
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := json.Marshal(load(t, j))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fromYAML, fromJSON) {
		t.Fatal("the JSON document differs from the YAML one")
	}
	j[0] = 'x'
	if again, _ := JSON(); again[0] != '{' {
		t.Fatal("JSON() returns a shared buffer")
	}
}

func TestYAMLToJSON(t *testing.T) {
	tests := []struct {
		name, in, want string
		withError      bool
	}{
		{name: "scalars as written", in: "a: 2026-03-01\nb: '200'\nc: 200\nd: 1.5\ne: true\nf: null\ng: ~\nh: 3.1.0\ni: <&>",
			want: `{"a":"2026-03-01","b":"200","c":200,"d":1.5,"e":true,"f":null,"g":null,"h":"3.1.0","i":"<&>"}`},
		{name: "order kept", in: "z: 1\na: 2\nm: 3", want: `{"z":1,"a":2,"m":3}`},
		{name: "sequences", in: "a: [1, x, {b: c}]\nb: []\nc: {}", want: `{"a":[1,"x",{"b":"c"}],"b":[],"c":{}}`},
		{name: "alias", in: "a: &x {b: 1}\nc: *x", want: `{"a":{"b":1},"c":{"b":1}}`},
		{name: "merge, explicit wins", in: "a: &x {b: 1, c: 2}\nd:\n  c: 3\n  <<: *x\n  e: 4", want: `{"a":{"b":1,"c":2},"d":{"c":3,"b":1,"e":4}}`},
		{name: "merge of a list", in: "a: &x {b: 1}\nf: &y {b: 2, c: 3}\nd: {<<: [*x, *y]}", want: `{"a":{"b":1},"f":{"b":2,"c":3},"d":{"b":1,"c":3}}`},
		{name: "quoted << is a key", in: "'<<': 1", want: `{"<<":1}`},
		{name: "duplicate key", in: "a: 1\na: 2", withError: true},
		{name: "merge of a scalar", in: "a: {<<: 1}", withError: true},
		{name: "not a number", in: "a: .nan", withError: true},
		{name: "two documents", in: "a: 1\n---\nb: 2", withError: true},
		{name: "empty", in: "", withError: true},
		{name: "complex key", in: "? [a]\n: 1", withError: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := yamlToJSON([]byte(tt.in))
			if tt.withError {
				if err == nil {
					t.Fatalf("want an error, got %s", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// FuzzYAMLToJSON: whatever the input, the converter returns valid JSON or an
// error, and never panics or loops; and it is idempotent: JSON is YAML, and
// converting its own output gives that output back byte for byte (keys in
// order, every scalar as written).
func FuzzYAMLToJSON(f *testing.F) {
	f.Add(Spec())
	f.Add([]byte("a: &x [*x]"))
	f.Add([]byte("a: &x {<<: *x}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 1<<16 {
			return
		}
		out, err := yamlToJSON(in)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON %q from %q", out, in)
		}
		again, err := yamlToJSON(out)
		if err != nil {
			t.Fatalf("its own output %q (from %q) does not convert: %v", out, in, err)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q gives %q, which gives %q", in, out, again)
		}
	})
}

func TestRegisterServesBothForms(t *testing.T) {
	e := echo.New()
	Register(e)
	want, _ := JSON()
	for _, tt := range []struct {
		path, contentType string
		body              []byte
	}{
		{"/openapi.json", "application/json", want},
		{"/openapi.yaml", "application/yaml", Spec()},
	} {
		t.Run(tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != tt.contentType || !bytes.Equal(rec.Body.Bytes(), tt.body) {
				t.Fatalf("%d %q (%d bytes)", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
			}
		})
	}
}

// TestNoNullValues catches a YAML slip the schema checks may miss: an
// unquoted comma in a flow mapping ({description: a, b}) makes "b" a key
// with a null value. The document has no intended nulls.
func TestNoNullValues(t *testing.T) {
	j, err := JSON()
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(j, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case nil:
			t.Errorf("%s is null", path)
		case map[string]any:
			for k, x := range v {
				walk(path+"/"+k, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s/%d", path, i), x)
			}
		}
	}
	walk("", doc)
}

// TestDashboardFilesAreDocumented: GET /dashboard/{asset} lists exactly the
// files web/build.mjs puts beside the page (web/src without index.html, and
// Chart.js), and the page loads no file that is not among them.
func TestDashboardFilesAreDocumented(t *testing.T) {
	doc := load(t, Spec())
	op := doc.Paths.Find("/dashboard/{asset}").Get
	var documented []string
	for _, v := range op.Parameters.GetByInAndName("path", "asset").Schema.Value.Enum {
		documented = append(documented, v.(string))
	}
	src := filepath.Join(testenv.RepoRoot(t), "web", "src")
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	built := []string{"chart.umd.min.js"}
	for _, e := range entries {
		if e.Name() != "index.html" {
			built = append(built, e.Name())
		}
	}
	slices.Sort(documented)
	slices.Sort(built)
	if !slices.Equal(documented, built) {
		t.Fatalf("documented assets %v, built %v", documented, built)
	}
	page, err := os.ReadFile(filepath.Join(src, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(string(page), -1)
	if len(refs) < 3 {
		t.Fatalf("only %d references found in index.html", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		switch {
		case ref == "#", ref == "data:,": // the issuer link set by the script; an empty icon
		case strings.HasPrefix(ref, "/dashboard/") && slices.Contains(built, strings.TrimPrefix(ref, "/dashboard/")):
		default:
			t.Errorf("index.html loads %q, which the gateway does not serve", ref)
		}
	}
}
