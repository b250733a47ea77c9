package keys

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

func TestGenerateParse(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		s, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != SecretLen || !strings.HasPrefix(s, SecretPrefix) {
			t.Fatalf("bad shape %q", s)
		}
		if err := Parse(s); err != nil {
			t.Fatalf("Parse(Generate()) = %v", err)
		}
		if p := Prefix(s); p != s[:12] {
			t.Fatalf("Prefix = %q", p)
		}
		if seen[s] {
			t.Fatalf("duplicate secret")
		}
		seen[s] = true
	}
}

func TestParseRejects(t *testing.T) {
	good, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	body := good[len(SecretPrefix):]
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"prefix only", SecretPrefix},
		{"test prefix", "sk_test_" + body},
		{"upper prefix", "SK_LIVE_" + body},
		{"missing char", good[:len(good)-1]},
		{"extra char", good + "0"},
		{"space", good[:20] + " " + good[21:]},
		{"underscore in body", good[:20] + "_" + good[21:]},
		{"non ascii", good[:20] + "é" + good[22:]},
		{"nul", good[:20] + "\x00" + good[21:]},
		{"swapped checksum", SecretPrefix + body[:32] + reverse(body[32:])},
		{"leading space", " " + good[:len(good)-1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.in == good {
				t.Skip("mutation produced the original")
			}
			if err := Parse(tt.in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse(%q) = %v, want ErrMalformed", tt.in, err)
			}
		})
	}
}

// TestParseRejectsWrongChecksums: a million random bodies, each with a
// random checksum that is not the right one, and a single-character typo of
// a real key, must all be refused without I/O.
func TestParseRejectsWrongChecksums(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 10_000
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, SecretLen)
	copy(buf, SecretPrefix)
	for i := range n {
		for j := len(SecretPrefix); j < SecretLen; j++ {
			buf[j] = base62[r.IntN(62)]
		}
		random := buf[len(SecretPrefix) : len(SecretPrefix)+randomLen]
		if string(buf[len(SecretPrefix)+randomLen:]) == checksum(random) {
			continue // 1 in 62^6: a correct checksum by chance
		}
		if err := Parse(string(buf)); err == nil {
			t.Fatalf("iteration %d: Parse accepted %q", i, buf)
		}
		// A typo: a valid key with one character changed.
		copy(buf[len(SecretPrefix)+randomLen:], checksum(random))
		pos := len(SecretPrefix) + r.IntN(randomLen+checksumLen)
		old := buf[pos]
		for buf[pos] == old {
			buf[pos] = base62[r.IntN(62)]
		}
		if err := Parse(string(buf)); err == nil {
			t.Fatalf("iteration %d: Parse accepted a typo %q", i, buf)
		}
	}
}

func FuzzParse(f *testing.F) {
	good, err := Generate()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add("")
	f.Add(SecretPrefix)
	f.Add(good[:len(good)-1] + "!")
	f.Fuzz(func(t *testing.T, s string) {
		if Parse(s) != nil {
			return
		}
		if len(s) != SecretLen || !strings.HasPrefix(s, SecretPrefix) {
			t.Fatalf("accepted %q of wrong shape", s)
		}
		random := s[len(SecretPrefix) : len(SecretPrefix)+randomLen]
		if checksum([]byte(random)) != s[len(SecretPrefix)+randomLen:] {
			t.Fatalf("accepted %q with a wrong checksum", s)
		}
		if !strings.HasPrefix(s, Prefix(s)) || len(Prefix(s)) != len(SecretPrefix)+prefixRandomLen {
			t.Fatalf("Prefix(%q) = %q", s, Prefix(s))
		}
	})
}

func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// TestHasherPooledStatesAgree checks that HMAC states reused from the pool
// give the same hash as a fresh HMAC, also when hashes run concurrently.
func TestHasherPooledStatesAgree(t *testing.T) {
	pepper := []byte("pepper-for-the-pool-test")
	h := NewHasher(pepper)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				secret := fmt.Sprintf("sk_live_%d_%d", g, i)
				m := hmac.New(sha256.New, pepper)
				m.Write([]byte(secret))
				if want := m.Sum(nil); !bytes.Equal(h.Hash(secret), want) {
					errs <- secret
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for s := range errs {
		t.Errorf("pooled hash of %s differs from a fresh HMAC", s)
	}
}
