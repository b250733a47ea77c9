package keys

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of the package. Callers check them with errors.Is.
var (
	// ErrNotFound: no key with that ID or hash.
	ErrNotFound = errors.New("api key not found")
	// ErrBadCursor: a pagination cursor that this package did not issue.
	ErrBadCursor = errors.New("invalid cursor")
)

// Key is one row of api_gateway.api_keys.
type Key struct {
	ID                 string     `db:"id"`
	OwnerID            string     `db:"owner_id"`
	Name               string     `db:"name"`
	Prefix             string     `db:"key_prefix"`
	Tier               string     `db:"tier"`
	Active             bool       `db:"active"`
	RateLimitPerMinute int        `db:"rate_limit_per_minute"`
	MonthlyCredits     int64      `db:"monthly_credits"`
	ExpiresAt          *time.Time `db:"expires_at"`
	LastUsedAt         *time.Time `db:"last_used_at"`
	CreatedAt          time.Time  `db:"created_at"`
	// UpdatedAt strictly increases with every Update of the row, in the
	// order the row lock was taken, so a consumer of key state can drop a
	// state older than the one it has.
	UpdatedAt time.Time `db:"updated_at"`
	Hash      []byte    `db:"key_hash"`
	// PrevHash is the hash of the secret before the last regenerate; it
	// keeps working until PrevExpiresAt.
	PrevHash      []byte     `db:"prev_key_hash"`
	PrevExpiresAt *time.Time `db:"prev_key_expires_at"`
	DeletedAt     *time.Time `db:"deleted_at"`
}

// NewID returns a new key ID: a UUIDv7 (time-ordered, 74 random bits), so
// new rows land at the end of the indexes.
func NewID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[6:]); err != nil {
		return "", fmt.Errorf("new key id: %w", err)
	}
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		u[i] = byte(ms)
		ms >>= 8
	}
	u[6] = u[6]&0x0f | 0x70
	u[8] = u[8]&0x3f | 0x80
	return formatUUID(u), nil
}

// ValidID reports whether s is a UUID in canonical form (any case); IDs
// that are not are unknown by definition and never reach Postgres.
func ValidID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

func formatUUID(u [16]byte) string {
	var dst [36]byte
	hex.Encode(dst[0:8], u[0:4])
	dst[8] = '-'
	hex.Encode(dst[9:13], u[4:6])
	dst[13] = '-'
	hex.Encode(dst[14:18], u[6:8])
	dst[18] = '-'
	hex.Encode(dst[19:23], u[8:10])
	dst[23] = '-'
	hex.Encode(dst[24:], u[10:])
	return string(dst[:])
}
