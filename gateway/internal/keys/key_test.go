package keys

import (
	"bytes"
	"testing"
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
