package keys

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestHasher(t *testing.T) {
	h1, h2 := NewHasher([]byte("pepper-1")), NewHasher([]byte("pepper-2"))
	a, b := h1.Hash("sk_live_x"), h1.Hash("sk_live_x")
	if len(a) != 32 || !bytes.Equal(a, b) || !Equal(a, b) {
		t.Fatalf("hash not deterministic: %x %x", a, b)
	}
	if Equal(a, h2.Hash("sk_live_x")) {
		t.Fatal("pepper does not change the hash")
	}
	if Equal(a, h1.Hash("sk_live_y")) {
		t.Fatal("different secrets hash alike")
	}
	if Equal(nil, nil) {
		t.Fatal("empty hashes must never be equal")
	}
}

func TestUsable(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Second), now.Add(time.Hour)
	cur, prev, other := []byte("current-hash-32-bytes-long......"), []byte("previous-hash-32-bytes-long....."), []byte("other")
	tests := []struct {
		name string
		key  Key
		hash []byte
		want error
	}{
		{"current", Key{Active: true, Hash: cur}, cur, nil},
		{"unknown", Key{Active: true, Hash: cur}, other, ErrUnknown},
		{"empty hash", Key{Active: true, Hash: cur}, nil, ErrUnknown},
		{"prev in grace", Key{Active: true, Hash: cur, PrevHash: prev, PrevExpiresAt: &future}, prev, nil},
		{"prev after grace", Key{Active: true, Hash: cur, PrevHash: prev, PrevExpiresAt: &past}, prev, ErrRevoked},
		{"prev at grace end", Key{Active: true, Hash: cur, PrevHash: prev, PrevExpiresAt: &now}, prev, ErrRevoked},
		{"prev without expiry", Key{Active: true, Hash: cur, PrevHash: prev}, prev, ErrRevoked},
		{"deleted", Key{Active: true, Hash: cur, DeletedAt: &past}, cur, ErrRevoked},
		{"deleted prev in grace", Key{Active: true, Hash: cur, PrevHash: prev, PrevExpiresAt: &future, DeletedAt: &past}, prev, ErrRevoked},
		{"expired", Key{Active: true, Hash: cur, ExpiresAt: &past}, cur, ErrExpired},
		{"expires now", Key{Active: true, Hash: cur, ExpiresAt: &now}, cur, ErrExpired},
		{"expires later", Key{Active: true, Hash: cur, ExpiresAt: &future}, cur, nil},
		{"inactive", Key{Hash: cur}, cur, ErrInactive},
		{"inactive and expired", Key{Hash: cur, ExpiresAt: &past}, cur, ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.key.Usable(now, tt.hash); !errors.Is(got, tt.want) {
				t.Fatalf("Usable = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewID(t *testing.T) {
	a, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewID()
	if !ValidID(a) || a == b || a[14] != '7' {
		t.Fatalf("bad ids %q %q", a, b)
	}
	for _, s := range []string{"", "x", "00000000-0000-0000-0000-00000000000g", "00000000000000000000000000000000000'", "../../etc/passwd"} {
		if ValidID(s) {
			t.Fatalf("ValidID(%q) = true", s)
		}
	}
}
