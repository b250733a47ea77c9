package search

import (
	"math"
	"sort"
	"strings"
	"unicode"
)

// BM25 parameters: the usual defaults.
const (
	bm25K1 = 1.2
	bm25B  = 0.75
	// titleBoost counts title terms this many times, a cheap field weight.
	titleBoost = 2
)

// isStopword reports the function words dropped from documents and queries.
func isStopword(w string) bool {
	switch w {
	case "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "for", "from", "has", "have",
		"how", "in", "into", "is", "it", "its", "of", "on", "or", "so", "such", "than", "that", "the",
		"their", "them", "then", "there", "these", "they", "this", "to", "was", "were", "what", "when",
		"which", "who", "why", "will", "with", "without", "you", "your":
		return true
	}
	return false
}

// tokenize lower-cases text, splits it on anything that is not a letter or a
// digit, drops stopwords and applies a light plural stemmer.
func tokenize(text string) []string {
	fields := strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
	out := fields[:0]
	for _, f := range fields {
		if isStopword(f) {
			continue
		}
		out = append(out, stem(f))
	}
	return out
}

// stem strips common English plural endings so "qubits" matches "qubit".
func stem(w string) string {
	switch {
	case len(w) > 4 && strings.HasSuffix(w, "ies"):
		return w[:len(w)-3] + "y"
	case len(w) > 3 && strings.HasSuffix(w, "s") && !strings.HasSuffix(w, "ss") && !strings.HasSuffix(w, "us") && !strings.HasSuffix(w, "is"):
		return w[:len(w)-1]
	}
	return w
}

// index is an in-memory BM25 index over a fixed set of documents.
type index struct {
	docs     []Document
	lengths  []int
	avgLen   float64
	postings map[string][]posting // term -> documents containing it
}

type posting struct {
	doc  int
	freq int
}

// hit is one scored document.
type hit struct {
	doc   int
	score float64
}

func newIndex(docs []Document) *index {
	ix := &index{docs: docs, lengths: make([]int, len(docs)), postings: map[string][]posting{}}
	total := 0
	for i, d := range docs {
		terms := tokenize(d.Body)
		title := tokenize(d.Title)
		for range titleBoost {
			terms = append(terms, title...)
		}
		ix.lengths[i] = len(terms)
		total += len(terms)
		freq := map[string]int{}
		for _, t := range terms {
			freq[t]++
		}
		for t, f := range freq {
			ix.postings[t] = append(ix.postings[t], posting{doc: i, freq: f})
		}
	}
	if len(docs) > 0 {
		ix.avgLen = float64(total) / float64(len(docs))
	}
	return ix
}

// idf is the BM25 inverse document frequency with the +1 that keeps it
// positive for terms in more than half the documents.
func (ix *index) idf(term string) float64 {
	n := float64(len(ix.postings[term]))
	N := float64(len(ix.docs))
	return math.Log(1 + (N-n+0.5)/(n+0.5))
}

// search scores every document containing at least one query term and
// returns them best first; ties go to the earlier document.
func (ix *index) search(query string) []hit {
	scores := map[int]float64{}
	seen := map[string]bool{}
	for _, term := range tokenize(query) {
		if seen[term] {
			continue
		}
		seen[term] = true
		idf := ix.idf(term)
		for _, p := range ix.postings[term] {
			tf := float64(p.freq)
			norm := 1 - bm25B + bm25B*float64(ix.lengths[p.doc])/ix.avgLen
			scores[p.doc] += idf * tf * (bm25K1 + 1) / (tf + bm25K1*norm)
		}
	}
	hits := make([]hit, 0, len(scores))
	for d, s := range scores {
		hits = append(hits, hit{doc: d, score: s})
	}
	sort.Slice(hits, func(i, j int) bool {
		if hits[i].score != hits[j].score {
			return hits[i].score > hits[j].score
		}
		return hits[i].doc < hits[j].doc
	})
	return hits
}

// snippet picks the sentence of body that holds the most query terms and
// trims it to about maxLen characters.
func snippet(body, query string, maxLen int) string {
	want := map[string]bool{}
	for _, t := range tokenize(query) {
		want[t] = true
	}
	best, bestScore := "", -1
	for _, s := range splitSentences(body) {
		score := 0
		for _, t := range tokenize(s) {
			if want[t] {
				score++
			}
		}
		if score > bestScore {
			best, bestScore = s, score
		}
	}
	r := []rune(best)
	if len(r) <= maxLen {
		return best
	}
	cut := string(r[:maxLen])
	if i := strings.LastIndexByte(cut, ' '); i > maxLen/2 {
		cut = cut[:i]
	}
	return cut + "…"
}

func splitSentences(text string) []string {
	var out []string
	start := 0
	for i := 0; i < len(text); i++ {
		if (text[i] == '.' || text[i] == '!' || text[i] == '?') && (i+1 == len(text) || text[i+1] == ' ') {
			if s := strings.TrimSpace(text[start : i+1]); s != "" {
				out = append(out, s)
			}
			start = i + 1
		}
	}
	if s := strings.TrimSpace(text[start:]); s != "" {
		out = append(out, s)
	}
	return out
}
