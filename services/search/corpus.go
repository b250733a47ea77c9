package search

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

//go:embed corpus/*.json
var corpusFS embed.FS

// Document is one entry of the searchable corpus. Its page is served at
// /pages/{Slug}.
type Document struct {
	Slug  string `json:"slug"`
	Title string `json:"title"`
	Body  string `json:"body"`
}

// validSlug reports whether s is lower-case words joined by single dashes.
func validSlug(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
			return false
		}
	}
	return true
}

// DefaultCorpus returns the documents shipped in corpus/*.json.
func DefaultCorpus() ([]Document, error) {
	files, err := fs.Glob(corpusFS, "corpus/*.json")
	if err != nil {
		return nil, fmt.Errorf("list corpus: %w", err)
	}
	var docs []Document
	for _, f := range files {
		b, err := corpusFS.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read corpus %s: %w", f, err)
		}
		var part []Document
		if err := json.Unmarshal(b, &part); err != nil {
			return nil, fmt.Errorf("parse corpus %s: %w", path.Base(f), err)
		}
		docs = append(docs, part...)
	}
	return docs, validateCorpus(docs)
}

func validateCorpus(docs []Document) error {
	var errs []error
	if len(docs) == 0 {
		errs = append(errs, errors.New("corpus is empty"))
	}
	seen := map[string]bool{}
	for i, d := range docs {
		if !validSlug(d.Slug) {
			errs = append(errs, fmt.Errorf("document %d: slug %q is not lower-case-with-dashes", i, d.Slug))
		}
		if seen[d.Slug] {
			errs = append(errs, fmt.Errorf("document %d: duplicate slug %q", i, d.Slug))
		}
		seen[d.Slug] = true
		if strings.TrimSpace(d.Title) == "" || strings.TrimSpace(d.Body) == "" {
			errs = append(errs, fmt.Errorf("document %d (%s): title and body are required", i, d.Slug))
		}
	}
	return errors.Join(errs...)
}
