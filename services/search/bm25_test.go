package search

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestTokenize(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"Quantum Computing", []string{"quantum", "computing"}},
		{"The qubits, and the gates!", []string{"qubit", "gate"}},
		{"theories of bus class", []string{"theory", "bus", "class"}},
		{"RFC-9457 problem+json", []string{"rfc", "9457", "problem", "json"}},
		{"Über café", []string{"über", "café"}},
		{"", []string{}},
		{"the of and", []string{}},
	}
	for _, tt := range tests {
		got := tokenize(tt.in)
		if len(got) == 0 && len(tt.want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("tokenize(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestBM25Score checks the score against the formula computed by hand on a
// three-document corpus.
func TestBM25Score(t *testing.T) {
	docs := []Document{
		{Slug: "a", Title: "x", Body: "apple apple banana"},
		{Slug: "b", Title: "y", Body: "banana cherry"},
		{Slug: "c", Title: "z", Body: "cherry cherry cherry date"},
	}
	ix := newIndex(docs)
	// Lengths include the title twice: a=3+2, b=2+2, c=4+2; avg = 5.
	if ix.avgLen != 5 {
		t.Fatalf("avgLen = %v, want 5", ix.avgLen)
	}
	hits := ix.search("apple")
	if len(hits) != 1 || hits[0].doc != 0 {
		t.Fatalf("hits = %+v, want only doc a", hits)
	}
	idf := math.Log(1 + (3-1+0.5)/(1+0.5))
	tf, norm := 2.0, 1-bm25B+bm25B*5/5
	want := idf * tf * (bm25K1 + 1) / (tf + bm25K1*norm)
	if math.Abs(hits[0].score-want) > 1e-9 {
		t.Fatalf("score = %v, want %v", hits[0].score, want)
	}

	// "banana" is in a (len 5) and b (len 4): the shorter document wins.
	hits = ix.search("banana")
	if len(hits) != 2 || hits[0].doc != 1 || hits[1].doc != 0 {
		t.Fatalf("banana hits = %+v, want b before a", hits)
	}
	// A rare term outweighs a common one: "date" (1 doc) vs "banana" (2 docs).
	hits = ix.search("banana date")
	if hits[0].doc != 2 {
		t.Fatalf("banana date: top = %d, want c", hits[0].doc)
	}
	// Term frequency saturates: cherry x3 scores more than x1, less than 3x.
	hits = ix.search("cherry")
	if hits[0].doc != 2 || hits[0].score >= 3*hits[1].score {
		t.Fatalf("cherry hits = %+v", hits)
	}
	if got := ix.search("zebra"); len(got) != 0 {
		t.Fatalf("zebra hits = %+v, want none", got)
	}
}

func TestShippedCorpusRanking(t *testing.T) {
	docs, err := DefaultCorpus()
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) < 30 || len(docs) > 60 {
		t.Fatalf("corpus has %d documents, want 30-60", len(docs))
	}
	ix := newIndex(docs)
	tests := []struct {
		query   string
		top     string
		topNAll string // each of the first 2 results contains this word
	}{
		{"quantum computing", "quantum-computing-introduction", "quantum"},
		{"qubits error correction", "quantum-error-correction", ""},
		{"sourdough", "sourdough-bread", ""},
		{"rate limit sliding window", "rate-limiting-algorithms", ""},
		{"JWT signature", "jwt-explained", ""},
		{"169.254.169.254 metadata", "ssrf", ""},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			hits := ix.search(tt.query)
			if len(hits) == 0 {
				t.Fatal("no hits")
			}
			if got := docs[hits[0].doc].Slug; got != tt.top {
				t.Fatalf("top = %s, want %s", got, tt.top)
			}
			for i := 1; i < len(hits); i++ {
				if hits[i].score > hits[i-1].score {
					t.Fatalf("hits not sorted at %d", i)
				}
			}
			if tt.topNAll != "" {
				for _, h := range hits[:2] {
					d := docs[h.doc]
					if !strings.Contains(strings.ToLower(d.Title+d.Body), tt.topNAll) {
						t.Fatalf("%s in the top 2 lacks %q", d.Slug, tt.topNAll)
					}
				}
			}
		})
	}
}

func TestSnippet(t *testing.T) {
	body := "Cats sleep a lot. Quantum computers use qubits. Dogs bark."
	if got := snippet(body, "qubits", 200); got != "Quantum computers use qubits." {
		t.Fatalf("snippet = %q", got)
	}
	long := strings.Repeat("word ", 100)
	got := snippet(long, "word", 50)
	if len([]rune(got)) > 51 || !strings.HasSuffix(got, "…") {
		t.Fatalf("long snippet = %q", got)
	}
}
