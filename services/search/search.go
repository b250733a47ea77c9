// Package search is the local stand-in for mana-search, the web search and
// content extraction backend. It ranks a small corpus shipped in corpus/ with
// BM25, serves that corpus as HTML pages under /pages/{slug}, and extracts the
// readable text of web pages. The gateway reaches it at SEARCH_SERVICE_URL; a
// real search backend with the same routes replaces it there.
//
// Routes:
//
//	POST /search         {"query","limit"?} -> {"query","results":[{"title","url","snippet","score"}],"total"}
//	GET  /engines        the ranking engines on offer
//	POST /extract        {"url"} -> {"url","title","content","wordCount"}
//	POST /extract/bulk   {"urls":[...]} (at most 20) -> {"results":[...]}, "error" on a failed URL
//	GET  /pages/{slug}   a corpus document as HTML (what search results link to)
//	GET  /health         liveness
//
// Extraction only reaches public addresses: every connection, including those
// after a redirect or a fresh DNS answer, is checked at dial time
// (net.Dialer.Control) against private, loopback, link-local, CGNAT,
// unique-local, IPv4-mapped and reserved ranges. Config.ExtractAllowHosts
// names host:ports exempt from that check, so the local demo can extract the
// stand-in's own pages.
package search

import (
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Limits of the API.
const (
	DefaultLimit    = 10
	MaxLimit        = 50
	MaxQueryLength  = 1000
	MaxBulkURLs     = 20
	maxRequestBody  = 64 << 10
	snippetLength   = 200
	defaultTimeout  = 10 * time.Second
	defaultMaxBytes = 2 << 20
)

// Config configures the search stand-in. The zero value is usable.
type Config struct {
	// Corpus replaces the shipped documents when non-empty.
	Corpus []Document
	// PublicURL is the base URL of result links (PublicURL + "/pages/" +
	// slug); default http://localhost:3021.
	PublicURL string
	// ExtractAllowHosts are host:port pairs extraction may reach even though
	// they are not public (e.g. "localhost:3021"). Matched against the URL's
	// host and port as written, before DNS.
	ExtractAllowHosts []string
	// ExtractTimeout bounds one page fetch, redirects and body included;
	// default 10s.
	ExtractTimeout time.Duration
	// ExtractMaxBytes is how much of a page is read; a longer page is cut.
	// Default 2 MiB.
	ExtractMaxBytes int64
	// ExtractMaxRedirects is how many redirects a fetch follows; default 5.
	// Negative means none.
	ExtractMaxRedirects int
	// BulkConcurrency is how many pages of one bulk request are fetched at
	// once; default 4.
	BulkConcurrency int

	dialHook dialHook // tests only: see dialHook
}

func (c *Config) withDefaults() error {
	if len(c.Corpus) == 0 {
		docs, err := DefaultCorpus()
		if err != nil {
			return err
		}
		c.Corpus = docs
	}
	if c.PublicURL == "" {
		c.PublicURL = "http://localhost:3021"
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if c.ExtractTimeout == 0 {
		c.ExtractTimeout = defaultTimeout
	}
	if c.ExtractMaxBytes == 0 {
		c.ExtractMaxBytes = defaultMaxBytes
	}
	switch {
	case c.ExtractMaxRedirects == 0:
		c.ExtractMaxRedirects = 5
	case c.ExtractMaxRedirects < 0:
		c.ExtractMaxRedirects = 0
	}
	if c.BulkConcurrency == 0 {
		c.BulkConcurrency = 4
	}
	return nil
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if err := validateCorpus(c.Corpus); err != nil {
		errs = append(errs, fmt.Errorf("corpus: %w", err))
	}
	if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("public URL %q: want http(s)://host[:port]", c.PublicURL))
	}
	for _, hp := range c.ExtractAllowHosts {
		h, p, err := net.SplitHostPort(hp)
		if n, perr := strconv.Atoi(p); err != nil || h == "" || perr != nil || n < 1 || n > 65535 {
			errs = append(errs, fmt.Errorf("extract allow host %q: want host:port", hp))
		}
	}
	if c.ExtractTimeout < 0 {
		errs = append(errs, errors.New("extract timeout is negative"))
	}
	if c.ExtractMaxBytes < 0 {
		errs = append(errs, errors.New("extract max bytes is negative"))
	}
	if c.BulkConcurrency < 0 {
		errs = append(errs, errors.New("bulk concurrency is negative"))
	}
	return errors.Join(errs...)
}

// service holds the index and the extractor behind the handler.
type service struct {
	cfg       Config
	logger    *slog.Logger
	index     *index
	bySlug    map[string]int
	extractor *extractor
	pageTmpl  *template.Template
	indexTmpl *template.Template
}

// New validates cfg and returns the stand-in's HTTP handler.
func New(cfg Config, logger *slog.Logger) (http.Handler, error) {
	if logger == nil {
		return nil, errors.New("search: logger is required")
	}
	if err := cfg.withDefaults(); err != nil {
		return nil, fmt.Errorf("search config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("search config: %w", err)
	}
	s := &service{
		cfg:       cfg,
		logger:    logger,
		index:     newIndex(cfg.Corpus),
		bySlug:    map[string]int{},
		extractor: newExtractor(cfg),
	}
	var err error
	if s.pageTmpl, s.indexTmpl, err = parseTemplates(); err != nil {
		return nil, err
	}
	for i, d := range cfg.Corpus {
		s.bySlug[d.Slug] = i
	}
	return s.routes(), nil
}
