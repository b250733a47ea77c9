// Package keys owns API keys: the secret's format (sk_live_ + random base62 +
// CRC32 checksum, as GitHub tokens do), its peppered hash, the key record with
// its usability rules, and the Postgres store of api_gateway.api_keys.
// A secret is never stored or logged; only its hash and a short prefix are.
package keys

import (
	"crypto/rand"
	"fmt"
	"hash/crc32"
	"strings"

	"github.com/mana/apigw/gateway/internal/apierr"
)

const (
	// SecretPrefix starts every secret.
	SecretPrefix = "sk_live_"
	randomLen    = 32
	checksumLen  = 6
	// SecretLen is the length of every well-formed secret.
	SecretLen = len(SecretPrefix) + randomLen + checksumLen
	// prefixRandomLen is how many random characters Prefix keeps.
	prefixRandomLen = 4

	base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// ErrMalformed means a string is not a well-formed secret: wrong prefix,
// length, alphabet or checksum. Parse decides this without any I/O.
var ErrMalformed = apierr.New(apierr.KeyRefused, "malformed API key")

// Generate returns a new secret: SecretPrefix, 32 base62 characters from
// crypto/rand (about 190 bits) and a 6-character base62 CRC32 of the random
// part, so that typos and truncated keys are refused before any lookup.
func Generate() (string, error) {
	var b strings.Builder
	b.Grow(SecretLen)
	b.WriteString(SecretPrefix)
	random := make([]byte, 0, randomLen)
	buf := make([]byte, 64)
	for len(random) < randomLen {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("generate api key: %w", err)
		}
		for _, v := range buf {
			// 248 = 4*62: rejecting larger bytes keeps the alphabet uniform.
			if v < 248 && len(random) < randomLen {
				random = append(random, base62[v%62])
			}
		}
	}
	b.Write(random)
	b.WriteString(checksum(random))
	return b.String(), nil
}

// Parse checks that secret is well formed: prefix, length, alphabet and
// checksum. It returns ErrMalformed otherwise.
func Parse(secret string) error {
	if len(secret) != SecretLen || !strings.HasPrefix(secret, SecretPrefix) {
		return ErrMalformed
	}
	body := secret[len(SecretPrefix):]
	for i := 0; i < len(body); i++ {
		if !isBase62(body[i]) {
			return ErrMalformed
		}
	}
	random, sum := body[:randomLen], body[randomLen:]
	if checksum([]byte(random)) != sum {
		return ErrMalformed
	}
	return nil
}

// Prefix returns the displayable start of a secret (SecretPrefix and the
// first 4 random characters), stored as key_prefix so owners can tell their
// keys apart. It reveals about 24 of the secret's 190 bits.
func Prefix(secret string) string {
	n := len(SecretPrefix) + prefixRandomLen
	if len(secret) < n {
		return ""
	}
	return secret[:n]
}

func checksum(random []byte) string {
	v := crc32.ChecksumIEEE(random)
	out := make([]byte, checksumLen)
	for i := checksumLen - 1; i >= 0; i-- {
		out[i] = base62[v%62]
		v /= 62
	}
	return string(out)
}

func isBase62(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}
