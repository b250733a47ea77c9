package keys

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"hash"
	"sync"
)

// Hasher derives the stored hash of a secret: HMAC-SHA-256 keyed with a
// server pepper, so a leaked table alone cannot be used to test guesses.
// The zero value is not usable; use NewHasher. Safe for concurrent use.
type Hasher struct {
	// macs lends keyed HMAC states: every request hashes its key, and a
	// fresh HMAC costs five allocations and the pepper's two block hashes.
	macs *sync.Pool
}

// NewHasher returns a Hasher with a copy of pepper.
func NewHasher(pepper []byte) Hasher {
	p := append([]byte(nil), pepper...)
	return Hasher{macs: &sync.Pool{New: func() any { return hmac.New(sha256.New, p) }}}
}

// Hash returns the 32-byte hash of secret.
func (h Hasher) Hash(secret string) []byte {
	m := h.macs.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(secret))
	sum := m.Sum(make([]byte, 0, sha256.Size))
	h.macs.Put(m)
	return sum
}

// Equal compares two hashes in constant time.
func Equal(a, b []byte) bool {
	return len(a) > 0 && subtle.ConstantTimeCompare(a, b) == 1
}
