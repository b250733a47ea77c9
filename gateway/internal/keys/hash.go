package keys

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
)

// Hasher derives the stored hash of a secret: HMAC-SHA-256 keyed with a
// server pepper, so a leaked table alone cannot be used to test guesses.
// The zero value is not usable; use NewHasher. Safe for concurrent use.
type Hasher struct {
	pepper []byte
}

// NewHasher returns a Hasher with a copy of pepper.
func NewHasher(pepper []byte) Hasher {
	return Hasher{pepper: append([]byte(nil), pepper...)}
}

// Hash returns the 32-byte hash of secret.
func (h Hasher) Hash(secret string) []byte {
	m := hmac.New(sha256.New, h.pepper)
	m.Write([]byte(secret))
	return m.Sum(nil)
}

// Equal compares two hashes in constant time.
func Equal(a, b []byte) bool {
	return len(a) > 0 && subtle.ConstantTimeCompare(a, b) == 1
}
