package search

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hostOf returns the host:port of a test server URL.
func hostOf(u string) string { return strings.TrimPrefix(u, "http://") }

// origin serves the pages extraction tests fetch.
func origin(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/article", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><html><head><title> The  Title </title>
<style>.x{color:red}</style><script>var secret = "do not extract";</script></head>
<body><nav>Home | About</nav><header>Site header</header>
<article><h1>Heading</h1><p>First   paragraph with <b>bold</b> text.</p>
<p>Second paragraph.</p><div hidden>hidden text</div><ul><li>one</li><li>two</li></ul></article>
<footer>Copyright footer</footer></body></html>`)
	})
	mux.HandleFunc("/plain", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "  just some plain words  ")
	})
	mux.HandleFunc("/image", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write([]byte("\x89PNG\r\n\x1a\n"))
	})
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/huge", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		for range 1000 {
			fmt.Fprint(w, strings.Repeat("word ", 200))
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Minute):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/loop", http.StatusFound)
	})
	mux.HandleFunc("/hop", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/article", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/to", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Query().Get("u"), http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestExtract(t *testing.T) {
	o := origin(t)
	// The timeout leaves every page room to be fetched on a busy machine;
	// the slow page answers only when the fetch gives up.
	srv := newTestServer(t, Config{ExtractAllowHosts: []string{hostOf(o.URL)}, ExtractTimeout: 3 * time.Second, ExtractMaxBytes: 10_000})
	tests := []struct {
		name      string
		path      string
		status    int
		title     string
		content   string
		words     int
		redirects string
	}{
		{name: "html article", path: "/article", status: 200, title: "The Title",
			content: "Heading\n\nFirst paragraph with bold text.\n\nSecond paragraph.\n\none\n\ntwo", words: 10},
		{name: "after a redirect", path: "/hop", status: 200, title: "The Title", words: 10, redirects: "/article"},
		{name: "plain text", path: "/plain", status: 200, content: "just some plain words", words: 4},
		{name: "body cut at the limit", path: "/huge", status: 200, words: 2000},
		{name: "image", path: "/image", status: 422},
		{name: "404 page", path: "/missing", status: 422},
		{name: "redirect loop", path: "/loop", status: 502},
		{name: "slow page", path: "/slow", status: 504},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, h, body := postJSON(t, srv.URL+"/extract", `{"url":"`+o.URL+tt.path+`"}`)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, body)
			}
			if status != 200 {
				checkProblem(t, status, h, body)
				return
			}
			var p Page
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatal(err)
			}
			if p.Title != tt.title || p.WordCount != tt.words || (tt.content != "" && p.Content != tt.content) {
				t.Fatalf("page %+v", p)
			}
			for _, junk := range []string{"secret", "Home", "header", "footer", "hidden", "color"} {
				if strings.Contains(p.Content, junk) {
					t.Fatalf("content keeps %q: %q", junk, p.Content)
				}
			}
			if tt.redirects != "" && p.URL != o.URL+tt.redirects {
				t.Fatalf("url %q, want the final URL", p.URL)
			}
		})
	}
}

// The demo flow: search, then extract a result's URL from the stand-in itself.
func TestExtractOwnPages(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	h, err := New(Config{PublicURL: base, ExtractAllowHosts: []string{ln.Addr().String()}}, slogDiscard())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)

	_, _, body := postJSON(t, base+"/search", `{"query":"shor factoring","limit":1}`)
	var resp Response
	if err := json.Unmarshal(body, &resp); err != nil || len(resp.Results) != 1 {
		t.Fatalf("search: %s", body)
	}
	status, _, body := postJSON(t, base+"/extract", `{"url":"`+resp.Results[0].URL+`"}`)
	var p Page
	if err := json.Unmarshal(body, &p); status != 200 || err != nil {
		t.Fatalf("extract %d: %s", status, body)
	}
	if p.Title != "Shor's algorithm and the future of cryptography" || !strings.Contains(p.Content, "factors large integers") || strings.Contains(p.Content, "stand-in") {
		t.Fatalf("page %+v", p)
	}
}

func TestExtractBulk(t *testing.T) {
	o := origin(t)
	srv := newTestServer(t, Config{ExtractAllowHosts: []string{hostOf(o.URL)}})
	body := fmt.Sprintf(`{"urls":[%q,%q,%q,%q]}`, o.URL+"/article", "http://10.0.0.1/", o.URL+"/missing", o.URL+"/plain")
	status, _, resp := postJSON(t, srv.URL+"/extract/bulk", body)
	if status != 200 {
		t.Fatalf("status %d: %s", status, resp)
	}
	var out struct{ Results []BulkResult }
	if err := json.Unmarshal(resp, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Results) != 4 {
		t.Fatalf("%d results", len(out.Results))
	}
	want := []struct{ ok bool }{{true}, {false}, {false}, {true}}
	for i, r := range out.Results {
		if (r.Error == "") != want[i].ok {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	if out.Results[0].Title != "The Title" || out.Results[3].Content != "just some plain words" || !strings.Contains(out.Results[1].Error, "forbidden") {
		t.Fatalf("results %+v", out.Results)
	}

	many := make([]string, MaxBulkURLs+1)
	for i := range many {
		many[i] = `"` + o.URL + `/plain"`
	}
	tests := []struct {
		name, body string
		want       int
	}{
		{"too many", `{"urls":[` + strings.Join(many, ",") + `]}`, 422},
		{"empty", `{"urls":[]}`, 400},
		{"missing", `{}`, 400},
		{"not strings", `{"urls":[1]}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, h, b := postJSON(t, srv.URL+"/extract/bulk", tt.body)
			if status != tt.want {
				t.Fatalf("status %d, want %d: %s", status, tt.want, b)
			}
			checkProblem(t, status, h, b)
		})
	}
}

// canary counts connections to a loopback port that extraction must never
// reach.
type canary struct {
	accepts atomic.Int64
	port    string
}

func startCanary(t *testing.T, network, addr string) *canary {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("canary listen %s: %v", addr, err)
	}
	c := &canary{}
	_, c.port, _ = net.SplitHostPort(ln.Addr().String())
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.accepts.Add(1)
			conn.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return c
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestSSRFRefused sends every private-address trick we know through
// /extract and /extract/bulk. Each must be refused as a forbidden
// destination, the canaries on loopback must see no connection, and no
// address may ever pass the policy (the dial hook, which runs after the
// policy and before connect, must never fire).
func TestSSRFRefused(t *testing.T) {
	c4 := startCanary(t, "tcp4", "127.0.0.1:0")
	c6 := startCanary(t, "tcp6", "[::1]:0")
	var passed atomic.Int64
	hook := func(network, address string) error {
		passed.Add(1)
		t.Errorf("address %s passed the policy", address)
		return errors.New("test safety net: no connection leaves this test")
	}
	// The redirector is allow-listed, so the request reaches it; where it
	// points must still be refused.
	o := origin(t)
	srv := newTestServer(t, Config{ExtractAllowHosts: []string{hostOf(o.URL)}, ExtractTimeout: 2 * time.Second, dialHook: hook})
	p4, p6 := c4.port, c6.port
	redirect := func(to string) string { return o.URL + "/to?u=" + to }
	urls := []string{
		"http://127.0.0.1:" + p4 + "/",
		"http://127.1:" + p4 + "/",
		"http://0x7f.1:" + p4 + "/",
		"http://0x7f000001:" + p4 + "/",
		"http://2130706433:" + p4 + "/",
		"http://0177.0.0.1:" + p4 + "/",
		"http://127.0.0.1.:" + p4 + "/",
		"http://localhost:" + p4 + "/",
		"http://LOCALHOST:" + p4 + "/",
		"http://[::1]:" + p6 + "/",
		"http://[::ffff:127.0.0.1]:" + p4 + "/",
		"http://[::ffff:7f00:1]:" + p4 + "/",
		"http://[0:0:0:0:0:ffff:127.0.0.1]:" + p4 + "/",
		"http://0.0.0.0:" + p4 + "/",
		"http://[::]:" + p6 + "/",
		"http://169.254.169.254/latest/meta-data/",
		"http://10.0.0.1/",
		"http://100.64.0.1/",
		"http://172.16.0.1/",
		"http://192.168.1.1/",
		"http://[fd00::1]/",
		"http://[fe80::1]/",
		"http://[64:ff9b::7f00:1]/",
		"https://127.0.0.1:" + p4 + "/",
		redirect("http://127.0.0.1:" + p4 + "/"),
		redirect("http://localhost:" + p4 + "/"),
		redirect("http://[::1]:" + p6 + "/"),
		redirect("http://169.254.169.254/"),
		redirect("file:///etc/passwd"),
		"file:///etc/passwd",
		"gopher://127.0.0.1:" + p4 + "/_GET",
		"ftp://127.0.0.1:" + p4 + "/",
		"dict://127.0.0.1:" + p4 + "/",
	}
	for _, u := range urls {
		t.Run(u, func(t *testing.T) {
			status, h, body := postJSON(t, srv.URL+"/extract", fmt.Sprintf(`{"url":%q}`, u))
			if status != 422 {
				t.Fatalf("status %d, want 422: %s", status, body)
			}
			checkProblem(t, status, h, body)
			if !strings.Contains(string(body), "forbidden destination") {
				t.Fatalf("not refused as a forbidden destination: %s", body)
			}
		})
	}
	// The same list through bulk, twenty at a time.
	for i := 0; i < len(urls); i += MaxBulkURLs {
		sent := urls[i:min(i+MaxBulkURLs, len(urls))]
		batch, err := json.Marshal(map[string][]string{"urls": sent})
		if err != nil {
			t.Fatal(err)
		}
		status, _, body := postJSON(t, srv.URL+"/extract/bulk", string(batch))
		var out struct{ Results []BulkResult }
		if err := json.Unmarshal(body, &out); status != 200 || err != nil {
			t.Fatalf("bulk %d: %s", status, body)
		}
		if len(out.Results) != len(sent) {
			t.Fatalf("bulk of %d URLs answered %d results: %s", len(sent), len(out.Results), body)
		}
		for _, r := range out.Results {
			if !strings.Contains(r.Error, "forbidden destination") {
				t.Errorf("bulk %s: %+v", r.URL, r)
			}
		}
	}
	if n := c4.accepts.Load() + c6.accepts.Load(); n != 0 {
		t.Fatalf("canaries saw %d connections", n)
	}
	if n := passed.Load(); n != 0 {
		t.Fatalf("%d addresses passed the policy", n)
	}
}

// TestDialTimeGuard skips the URL check and dials names directly, as a
// redirect or a DNS answer that changed since the URL check would: the
// address the name resolves to is refused at connect time.
func TestDialTimeGuard(t *testing.T) {
	c4 := startCanary(t, "tcp4", "127.0.0.1:0")
	var passed atomic.Int64
	cfg := Config{dialHook: func(string, string) error { passed.Add(1); return errors.New("safety net") }}
	if err := cfg.withDefaults(); err != nil {
		t.Fatal(err)
	}
	e := newExtractor(cfg)
	dial := e.client.Transport.(*http.Transport).DialContext
	for _, addr := range []string{"localhost:" + c4.port, "127.0.0.1:" + c4.port, "[::ffff:127.0.0.1]:" + c4.port} {
		conn, err := dial(context.Background(), "tcp", addr)
		if err == nil {
			conn.Close()
			t.Fatalf("dial %s succeeded", addr)
		}
		if !errors.Is(err, ErrForbiddenDestination) {
			t.Fatalf("dial %s: %v, want ErrForbiddenDestination", addr, err)
		}
	}
	if c4.accepts.Load() != 0 || passed.Load() != 0 {
		t.Fatalf("accepts %d, passed %d", c4.accepts.Load(), passed.Load())
	}
}

func TestAddrPolicy(t *testing.T) {
	p := newAddrPolicy()
	tests := []struct {
		addr string
		ok   bool
	}{
		{"8.8.8.8", true},
		{"93.184.215.14", true},
		{"2606:4700:4700::1111", true},
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"10.1.2.3", false},
		{"172.31.255.255", false},
		{"192.168.0.1", false},
		{"169.254.169.254", false},
		{"100.64.0.1", false},
		{"100.127.255.255", false},
		{"0.0.0.0", false},
		{"255.255.255.255", false},
		{"224.0.0.1", false},
		{"198.18.0.1", false},
		{"::1", false},
		{"::", false},
		{"fd00::1", false},
		{"fc00::1", false},
		{"fe80::1", false},
		{"ff02::1", false},
		{"::ffff:8.8.8.8", false},
		{"::ffff:127.0.0.1", false},
		{"64:ff9b::a00:1", false},
		{"2002:7f00:1::", false},
		{"2001:db8::1", false},
	}
	for _, tt := range tests {
		err := p.check(netip.MustParseAddr(tt.addr))
		if (err == nil) != tt.ok {
			t.Errorf("check(%s) = %v, want ok=%v", tt.addr, err, tt.ok)
		}
	}
}

func TestParseInetAton(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"127.0.0.1", "127.0.0.1"},
		{"127.1", "127.0.0.1"},
		{"0x7f.1", "127.0.0.1"},
		{"0x7f000001", "127.0.0.1"},
		{"2130706433", "127.0.0.1"},
		{"0177.0.0.1", "127.0.0.1"},
		{"10.1.65535", "10.1.255.255"},
		{"0", "0.0.0.0"},
		{"example.com", ""},
		{"1.2.3.4.5", ""},
		{"256.1.1.1", ""},
		{"1.2.65536", ""},
		{"4294967296", ""},
		{"0x", ""},
		{"08.1.1.1", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, ok := parseInetAton(tt.in)
		if (tt.want == "") == ok || (ok && got.String() != tt.want) {
			t.Errorf("parseInetAton(%q) = %v, %v; want %q", tt.in, got, ok, tt.want)
		}
	}
}
