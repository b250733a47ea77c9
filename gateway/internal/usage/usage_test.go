package usage

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

func event() *usagev1.UsageEvent {
	now := time.Now().UTC()
	return &usagev1.UsageEvent{
		EventId: ulid.Make().String(), RequestId: "r", KeyId: "11111111-1111-1111-1111-111111111111", OwnerId: "o",
		Tier: "free", Endpoint: "search", Status: 200, Credits: 1, Units: 1, Unit: "request",
		OccurredAt: timestamppb.New(now), Period: now.Format("2006-01"), MonthlyCredits: 100,
	}
}

func TestSpoolGroupCommitAndTornTail(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := s.Append(ctx, []byte{byte(i), 1, 2, 3}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A crash mid-write leaves a torn record at the end.
	f, err := os.OpenFile(filepath.Join(dir, activeName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte{0, 0, 0, 9, 1, 2})
	_ = f.Close()

	s, err = OpenSpool(dir, 1<<20, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	files, err := s.Rotate()
	if err != nil || len(files) != 1 {
		t.Fatalf("rotate: %v %v", files, err)
	}
	seen := map[byte]bool{}
	n, err := s.Drain(ctx, files[0], func(_ context.Context, rec []byte) error { seen[rec[0]] = true; return nil })
	if err != nil || n != 200 || len(seen) != 200 {
		t.Fatalf("drained %d (%d distinct), err %v", n, len(seen), err)
	}
	if s.Size() != 0 {
		t.Fatalf("spool size %d after drain", s.Size())
	}
}

func TestSpoolIsBounded(t *testing.T) {
	s, err := OpenSpool(t.TempDir(), 100, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Append(ctx, make([]byte, 80)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, make([]byte, 80)); err != ErrSpoolFull {
		t.Fatalf("want ErrSpoolFull, got %v", err)
	}
	if !s.Full(80) {
		t.Fatal("Full(80) = false")
	}
}
