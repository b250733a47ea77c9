package keys

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"

	"github.com/mana/apigw/services/testenv"
)

func newStore(t *testing.T) (*Store, *sqlx.DB) {
	t.Helper()
	db, err := sqlx.Open("postgres", testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return NewStore(db), db
}

func newKey(t *testing.T, h Hasher, owner string) (*Key, string) {
	t.Helper()
	secret, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &Key{OwnerID: owner, Name: "k", Prefix: Prefix(secret), Tier: "free", Active: true,
		RateLimitPerMinute: 10, MonthlyCredits: 100, Hash: h.Hash(secret)}, secret
}

func TestStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	h := NewHasher([]byte("pepper"))
	k, secret := newKey(t, h, "owner-a")
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	k.ExpiresAt = &exp
	if err := s.Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	if !ValidID(k.ID) || k.CreatedAt.IsZero() {
		t.Fatalf("create did not fill id/created_at: %+v", k)
	}

	got, err := s.ByHash(ctx, h.Hash(secret))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != k.ID || !got.ExpiresAt.Equal(exp) || got.PrevHash != nil || !Equal(got.Hash, h.Hash(secret)) || !got.Active || got.DeletedAt != nil {
		t.Fatalf("ByHash = %+v", got)
	}
	if _, err := s.ByHash(ctx, h.Hash("sk_live_other")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ByHash(unknown) = %v", err)
	}
	for _, id := range []string{"00000000-0000-7000-8000-000000000000", "not-a-uuid", "'; DROP TABLE x; --"} {
		if _, err := s.ByID(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ByID(%q) = %v", id, err)
		}
	}

	// Regenerate with a grace period: both secrets work, then only the new.
	secret2, _ := Generate()
	graceEnd := time.Now().Add(time.Minute).Truncate(time.Microsecond)
	before := got.UpdatedAt
	upd, err := s.Update(ctx, k.ID, func(k *Key) error {
		k.PrevHash, k.PrevExpiresAt = k.Hash, &graceEnd
		k.Hash, k.Prefix = h.Hash(secret2), Prefix(secret2)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !upd.UpdatedAt.After(before) || upd.Prefix != Prefix(secret2) {
		t.Fatalf("update result %+v", upd)
	}
	for _, sec := range []string{secret, secret2} {
		got, err := s.ByHash(ctx, h.Hash(sec))
		if err != nil || got.ID != k.ID || !(Equal(got.Hash, h.Hash(sec)) || Equal(got.PrevHash, h.Hash(sec)) && time.Now().Before(*got.PrevExpiresAt)) {
			t.Fatalf("ByHash after regenerate: %v %v", got, err)
		}
	}
	if !Equal(upd.PrevHash, h.Hash(secret)) || upd.PrevExpiresAt == nil || !upd.PrevExpiresAt.Equal(graceEnd) {
		t.Fatalf("old secret's grace: %x until %v", upd.PrevHash, upd.PrevExpiresAt)
	}

	// fn's error aborts the update.
	boom := errors.New("boom")
	if _, err := s.Update(ctx, k.ID, func(k *Key) error { k.Name = "changed"; return boom }); !errors.Is(err, boom) {
		t.Fatalf("Update error = %v", err)
	}
	if got, _ := s.ByID(ctx, k.ID); got.Name != "k" {
		t.Fatalf("aborted update wrote %q", got.Name)
	}
	if _, err := s.Update(ctx, "00000000-0000-7000-8000-000000000000", func(*Key) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update(unknown) = %v", err)
	}

	del, err := s.SoftDelete(ctx, k.ID)
	if err != nil || del.DeletedAt == nil {
		t.Fatalf("SoftDelete: %v %+v", err, del)
	}
	again, err := s.SoftDelete(ctx, k.ID)
	if err != nil || !again.DeletedAt.Equal(*del.DeletedAt) {
		t.Fatalf("SoftDelete not idempotent: %v %v %v", err, again.DeletedAt, del.DeletedAt)
	}
	if got, err := s.ByID(ctx, k.ID); err != nil || got.DeletedAt == nil {
		t.Fatalf("ByID(deleted) = %v %v", got, err)
	}
	if got, err := s.ByHash(ctx, h.Hash(secret2)); err != nil || got.DeletedAt == nil {
		t.Fatalf("deleted key by hash: %v %v", got, err)
	}
	if ks, _, err := s.ListByOwner(ctx, "owner-a", 10, ""); err != nil || len(ks) != 0 {
		t.Fatalf("list includes deleted: %v %v", ks, err)
	}
}

func TestStoreListByOwnerPages(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	h := NewHasher([]byte("pepper"))
	var want []string
	for i := range 7 {
		k, _ := newKey(t, h, "owner-a")
		if err := s.Create(ctx, k); err != nil {
			t.Fatal(err)
		}
		want = append(want, k.ID)
		other, _ := newKey(t, h, "owner-b")
		if err := s.Create(ctx, other); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			if _, err := s.SoftDelete(ctx, k.ID); err != nil {
				t.Fatal(err)
			}
			want = want[:len(want)-1]
		}
	}
	var got []string
	cursor, pages := "", 0
	for {
		ks, next, err := s.ListByOwner(ctx, "owner-a", 2, cursor)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, k := range ks {
			if k.OwnerID != "owner-a" {
				t.Fatalf("foreign key %s in list", k.ID)
			}
			got = append(got, k.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if pages != 3 || len(got) != len(want) {
		t.Fatalf("pages=%d got=%v want=%v", pages, got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order: got %v want %v", got, want)
		}
	}
	for _, c := range []string{"x", "!!!", "MjAyNnx4", string(make([]byte, 300))} {
		if _, _, err := s.ListByOwner(ctx, "owner-a", 2, c); !errors.Is(err, ErrBadCursor) {
			t.Fatalf("cursor %q: %v", c, err)
		}
	}
}

func TestStoreTouchLastUsed(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	h := NewHasher([]byte("pepper"))
	a, _ := newKey(t, h, "o")
	b, _ := newKey(t, h, "o")
	for _, k := range []*Key{a, b} {
		if err := s.Create(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	t1 := time.Date(2026, 3, 1, 10, 0, 0, 123456000, time.UTC)
	t0 := t1.Add(-time.Hour)
	if err := s.TouchLastUsed(ctx, map[string]time.Time{a.ID: t1, b.ID: t0, "bogus": t1}); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchLastUsed(ctx, map[string]time.Time{a.ID: t0, b.ID: t1}); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchLastUsed(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, k := range []*Key{a, b} {
		got, err := s.ByID(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(t1) {
			t.Fatalf("key %s last used %v, want %v", k.ID, got.LastUsedAt, t1)
		}
		if !got.UpdatedAt.Equal(k.UpdatedAt) {
			t.Fatalf("touch changed updated_at")
		}
	}
}

// TestStoreUpdateOrdersVersions: concurrent updates of one key are
// serialised by the row lock and each commits a distinct, later
// UpdatedAt, so consumers can order states by it.
func TestStoreUpdateOrdersVersions(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	h := NewHasher([]byte("pepper"))
	k, _ := newKey(t, h, "o")
	if err := s.Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	const n = 20
	type result struct {
		name string
		at   time.Time
	}
	results := make(chan result, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			name := fmt.Sprint("name-", i)
			got, err := s.Update(ctx, k.ID, func(k *Key) error { k.Name = name; return nil })
			if err != nil {
				errs <- err
				return
			}
			results <- result{name, got.UpdatedAt}
		}()
	}
	seen := map[time.Time]bool{}
	var latest result
	for range n {
		select {
		case err := <-errs:
			t.Fatal(err)
		case r := <-results:
			if seen[r.at] || !r.at.After(k.UpdatedAt) {
				t.Fatalf("UpdatedAt %v repeated or not after creation", r.at)
			}
			seen[r.at] = true
			if r.at.After(latest.at) {
				latest = r
			}
		}
	}
	final, err := s.ByID(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.Name != latest.name || !final.UpdatedAt.Equal(latest.at) {
		t.Fatalf("final row %q@%v, latest update %q@%v", final.Name, final.UpdatedAt, latest.name, latest.at)
	}
}
