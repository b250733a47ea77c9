package search

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// Extraction errors, each mapped to one HTTP status by the handler.
var (
	ErrInvalidURL         = errors.New("invalid url")
	ErrUnsupportedContent = errors.New("unsupported content type")
	ErrUpstreamStatus     = errors.New("page answered with an error status")
	ErrFetch              = errors.New("page could not be fetched")
	ErrFetchTimeout       = errors.New("page fetch timed out")
)

// Page is the readable text of one fetched URL.
type Page struct {
	URL       string `json:"url"`
	Title     string `json:"title"`
	Content   string `json:"content"`
	WordCount int    `json:"wordCount"`
}

// extractor fetches pages through a client that can only reach public
// addresses (and the allow-listed host:ports).
type extractor struct {
	client   *http.Client
	policy   addrPolicy
	allow    map[string]bool
	maxBytes int64
}

// dialHook, when set (tests only), runs after the address policy has
// accepted an address and before connect(2); an error stops the dial.
type dialHook func(network, address string) error

func newExtractor(cfg Config) *extractor {
	e := &extractor{policy: newAddrPolicy(), allow: map[string]bool{}, maxBytes: cfg.ExtractMaxBytes}
	for _, hp := range cfg.ExtractAllowHosts {
		h, p, _ := net.SplitHostPort(hp)
		e.allow[net.JoinHostPort(strings.ToLower(h), p)] = true
	}
	guarded := &net.Dialer{
		Timeout:   5 * time.Second,
		KeepAlive: 30 * time.Second,
		Control: func(network, address string, c syscall.RawConn) error {
			if err := e.policy.control(network, address, c); err != nil {
				return err
			}
			if cfg.dialHook != nil {
				return cfg.dialHook(network, address)
			}
			return nil
		},
	}
	plain := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy: nil, // a proxy would dial on our behalf, past the guard
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if e.allowed(addr) {
				return plain.DialContext(ctx, network, addr)
			}
			return guarded.DialContext(ctx, network, addr)
		},
		TLSHandshakeTimeout:    5 * time.Second,
		ResponseHeaderTimeout:  cfg.ExtractTimeout,
		MaxIdleConns:           16,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        30 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	e.client = &http.Client{
		Transport: transport,
		Timeout:   cfg.ExtractTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > cfg.ExtractMaxRedirects {
				return fmt.Errorf("%w: more than %d redirects", ErrFetch, cfg.ExtractMaxRedirects)
			}
			return e.checkURL(req.URL)
		},
	}
	return e
}

func (e *extractor) allowed(hostport string) bool {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	return e.allow[net.JoinHostPort(strings.ToLower(h), p)]
}

// checkURL is the check before any dial: scheme, credentials, host form.
// The address check proper happens at dial time.
func (e *extractor) checkURL(u *url.URL) error {
	switch u.Scheme {
	case "http", "https":
	default:
		return fmt.Errorf("%w: scheme %q (only http and https)", ErrForbiddenDestination, u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%w: credentials in the URL", ErrInvalidURL)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%w: no host", ErrInvalidURL)
	}
	if e.allowed(hostPort(u.Scheme, u.Host)) {
		return nil
	}
	return e.policy.checkHostLiteral(u.Hostname())
}

// parseURL validates a URL given by a client.
func (e *extractor) parseURL(raw string) (*url.URL, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidURL)
	}
	if len(raw) > 2048 {
		return nil, fmt.Errorf("%w: longer than 2048 characters", ErrInvalidURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidURL, err)
	}
	if !u.IsAbs() {
		return nil, fmt.Errorf("%w: not absolute", ErrInvalidURL)
	}
	if err := e.checkURL(u); err != nil {
		return nil, err
	}
	return u, nil
}

// extract fetches rawURL and returns its readable text.
func (e *extractor) extract(ctx context.Context, rawURL string) (Page, error) {
	u, err := e.parseURL(rawURL)
	if err != nil {
		return Page{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return Page{}, fmt.Errorf("%w: %v", ErrInvalidURL, err)
	}
	req.Header.Set("User-Agent", "mana-search-standin/1.0 (+extract)")
	req.Header.Set("Accept", "text/html,application/xhtml+xml,text/plain;q=0.8")
	resp, err := e.client.Do(req)
	if err != nil {
		return Page{}, classifyFetchError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return Page{}, fmt.Errorf("%w: %s", ErrUpstreamStatus, resp.Status)
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		mt = ""
	}
	// Read at most maxBytes: a longer page is cut, not refused.
	body, err := io.ReadAll(io.LimitReader(resp.Body, e.maxBytes))
	if err != nil {
		return Page{}, classifyFetchError(err)
	}
	body = bytes.ToValidUTF8(body, []byte("\uFFFD"))
	page := Page{URL: resp.Request.URL.String()}
	switch {
	case mt == "text/html" || mt == "application/xhtml+xml" || (mt == "" && looksLikeHTML(body)):
		title, content, err := readable(bytes.NewReader(body))
		if err != nil {
			return Page{}, fmt.Errorf("%w: unparsable HTML: %v", ErrUnsupportedContent, err)
		}
		page.Title, page.Content = title, content
	case mt == "text/plain" || (mt == "" && utf8.Valid(body)):
		page.Content = strings.TrimSpace(string(body))
	default:
		return Page{}, fmt.Errorf("%w: %s", ErrUnsupportedContent, mt)
	}
	page.WordCount = len(strings.Fields(page.Content))
	return page, nil
}

func looksLikeHTML(b []byte) bool {
	head := strings.ToLower(string(b[:min(len(b), 512)]))
	return strings.Contains(head, "<html") || strings.Contains(head, "<!doctype html")
}

// classifyFetchError keeps the policy's refusal recognizable through the
// url.Error / net.OpError wrapping and sorts the rest into timeouts and
// other failures.
func classifyFetchError(err error) error {
	switch {
	case errors.Is(err, ErrForbiddenDestination), errors.Is(err, ErrInvalidURL), errors.Is(err, ErrFetch):
		return err
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %v", ErrFetchTimeout, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %v", ErrFetchTimeout, err)
	}
	return fmt.Errorf("%w: %v", ErrFetch, err)
}
