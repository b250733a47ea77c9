package search

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/mana/apigw/services/httpjson"
)

func (s *service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /search", s.handleSearch)
	mux.HandleFunc("GET /engines", s.handleEngines)
	mux.HandleFunc("POST /extract", s.handleExtract)
	mux.HandleFunc("POST /extract/bulk", s.handleExtractBulk)
	mux.HandleFunc("GET /pages/{slug}", s.handlePage)
	mux.HandleFunc("GET /pages", s.handlePageIndex)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Problem(w, http.StatusNotFound, "Not Found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// Search.

type searchRequest struct {
	Query string `json:"query"`
	Limit *int   `json:"limit"`
}

// Result is one ranked document.
type Result struct {
	Title   string  `json:"title"`
	URL     string  `json:"url"`
	Snippet string  `json:"snippet"`
	Score   float64 `json:"score"`
}

// Response is the answer to POST /search.
type Response struct {
	Query   string   `json:"query"`
	Results []Result `json:"results"`
	Total   int      `json:"total"`
}

func (s *service) handleSearch(w http.ResponseWriter, r *http.Request) {
	var req searchRequest
	if !requestBody.Decode(w, r, &req) {
		return
	}
	q := strings.TrimSpace(req.Query)
	if q == "" {
		httpjson.Problem(w, http.StatusBadRequest, "Invalid Request", "query is required")
		return
	}
	if utf8.RuneCountInString(q) > MaxQueryLength {
		httpjson.Problem(w, http.StatusUnprocessableEntity, "Invalid Request", fmt.Sprintf("query is longer than %d characters", MaxQueryLength))
		return
	}
	limit := DefaultLimit
	if req.Limit != nil {
		limit = *req.Limit
		if limit < 1 || limit > MaxLimit {
			httpjson.Problem(w, http.StatusUnprocessableEntity, "Invalid Request", fmt.Sprintf("limit must be between 1 and %d", MaxLimit))
			return
		}
	}
	hits := s.index.search(q)
	resp := Response{Query: q, Results: make([]Result, 0, min(limit, len(hits))), Total: len(hits)}
	for _, h := range hits[:min(limit, len(hits))] {
		d := s.cfg.Corpus[h.doc]
		resp.Results = append(resp.Results, Result{
			Title:   d.Title,
			URL:     s.cfg.PublicURL + "/pages/" + d.Slug,
			Snippet: snippet(d.Body, q, snippetLength),
			Score:   math.Round(h.score*1e4) / 1e4,
		})
	}
	httpjson.Write(w, http.StatusOK, resp)
}

func (s *service) handleEngines(w http.ResponseWriter, _ *http.Request) {
	httpjson.Write(w, http.StatusOK, map[string]any{
		"engines": []map[string]any{{
			"name":        "bm25",
			"description": "Okapi BM25 (k1=1.2, b=0.75) over the stand-in's local corpus",
			"documents":   len(s.cfg.Corpus),
			"enabled":     true,
		}},
	})
}

// Extraction.

type extractRequest struct {
	URL string `json:"url"`
}

type bulkRequest struct {
	URLs []string `json:"urls"`
}

// BulkResult is one URL's outcome in /extract/bulk: a Page, or an Error.
type BulkResult struct {
	URL       string `json:"url"`
	Title     string `json:"title,omitempty"`
	Content   string `json:"content,omitempty"`
	WordCount int    `json:"wordCount"`
	Error     string `json:"error,omitempty"`
}

func (s *service) handleExtract(w http.ResponseWriter, r *http.Request) {
	var req extractRequest
	if !requestBody.Decode(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.URL) == "" {
		httpjson.Problem(w, http.StatusBadRequest, "Invalid Request", "url is required")
		return
	}
	page, err := s.extractor.extract(r.Context(), req.URL)
	if err != nil {
		status, title := extractStatus(err)
		s.logExtractFailure(r.Context(), req.URL, err)
		httpjson.Problem(w, status, title, err.Error())
		return
	}
	httpjson.Write(w, http.StatusOK, page)
}

func (s *service) handleExtractBulk(w http.ResponseWriter, r *http.Request) {
	var req bulkRequest
	if !requestBody.Decode(w, r, &req) {
		return
	}
	switch {
	case len(req.URLs) == 0:
		httpjson.Problem(w, http.StatusBadRequest, "Invalid Request", "urls must hold at least one URL")
		return
	case len(req.URLs) > MaxBulkURLs:
		httpjson.Problem(w, http.StatusUnprocessableEntity, "Invalid Request", fmt.Sprintf("at most %d urls per request, got %d", MaxBulkURLs, len(req.URLs)))
		return
	}
	results := make([]BulkResult, len(req.URLs))
	sem := make(chan struct{}, s.cfg.BulkConcurrency)
	var wg sync.WaitGroup
	for i, u := range req.URLs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-r.Context().Done():
				results[i] = BulkResult{URL: u, Error: r.Context().Err().Error()}
				return
			}
			page, err := s.extractor.extract(r.Context(), u)
			if err != nil {
				s.logExtractFailure(r.Context(), u, err)
				results[i] = BulkResult{URL: u, Error: err.Error()}
				return
			}
			results[i] = BulkResult{URL: page.URL, Title: page.Title, Content: page.Content, WordCount: page.WordCount}
		}()
	}
	wg.Wait()
	httpjson.Write(w, http.StatusOK, map[string]any{"results": results})
}

// extractStatus is the one place an extraction error becomes a status.
func extractStatus(err error) (int, string) {
	switch {
	case errors.Is(err, ErrForbiddenDestination):
		return http.StatusUnprocessableEntity, "Forbidden Destination"
	case errors.Is(err, ErrInvalidURL):
		return http.StatusUnprocessableEntity, "Invalid URL"
	case errors.Is(err, ErrUnsupportedContent):
		return http.StatusUnprocessableEntity, "Unsupported Content"
	case errors.Is(err, ErrUpstreamStatus):
		return http.StatusUnprocessableEntity, "Page Not Available"
	case errors.Is(err, ErrFetchTimeout):
		return http.StatusGatewayTimeout, "Page Fetch Timed Out"
	default:
		return http.StatusBadGateway, "Page Fetch Failed"
	}
}

// logExtractFailure logs the host only: a URL's path or query may carry
// someone's token.
func (s *service) logExtractFailure(ctx context.Context, raw string, err error) {
	host := ""
	if u, perr := url.Parse(raw); perr == nil {
		host = u.Host
	}
	s.logger.InfoContext(ctx, "extract failed", "host", host, "err", err)
}

// Pages.

// pageHTML renders one corpus document; the header, nav, aside, footer and
// script are there for extraction to strip.
const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Title}}</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}</style>
<script>window.standin = true;</script>
</head>
<body>
<header><a href="/pages">Mana search stand-in</a> · local corpus</header>
<nav><a href="/pages">All pages</a></nav>
<main>
<article>
<h1>{{.Title}}</h1>
{{range .Paragraphs}}<p>{{.}}</p>
{{end}}</article>
</main>
<aside>Related: see the other pages of the corpus.</aside>
<footer>Served by the mana-search stand-in. Not a real web page.</footer>
</body>
</html>
`

const indexHTML = `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Mana search stand-in: pages</title></head>
<body>
<h1>Pages of the local corpus</h1>
<ul>
{{range .}}<li><a href="/pages/{{.Slug}}">{{.Title}}</a></li>
{{end}}</ul>
</body>
</html>
`

func parseTemplates() (page, index *template.Template, err error) {
	page, err = template.New("page").Parse(pageHTML)
	if err != nil {
		return nil, nil, fmt.Errorf("page template: %w", err)
	}
	index, err = template.New("index").Parse(indexHTML)
	if err != nil {
		return nil, nil, fmt.Errorf("index template: %w", err)
	}
	return page, index, nil
}

func (s *service) handlePage(w http.ResponseWriter, r *http.Request) {
	i, ok := s.bySlug[r.PathValue("slug")]
	if !ok {
		httpjson.Problem(w, http.StatusNotFound, "Not Found", "no page with that slug")
		return
	}
	d := s.cfg.Corpus[i]
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = s.pageTmpl.Execute(w, struct {
		Title      string
		Paragraphs []string
	}{d.Title, splitSentences(d.Body)})
}

func (s *service) handlePageIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = s.indexTmpl.Execute(w, s.cfg.Corpus)
}

// JSON in and out.

// requestBody is every JSON request body of the search stand-in.
var requestBody = httpjson.Body{Limit: maxRequestBody, Name: "the request body", Shape: "a valid JSON object for this endpoint"}
