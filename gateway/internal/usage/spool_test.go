package usage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mana/apigw/services/testenv"
)

// records makes n distinct records of varied sizes, named by prefix.
func records(prefix string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = bytes.Repeat([]byte(fmt.Sprintf("%s-%03d;", prefix, i)), 1+i%7)
	}
	return out
}

func openSpool(t *testing.T, dir string) *Spool {
	t.Helper()
	s, err := OpenSpool(dir, 1<<20, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func appendAll(t *testing.T, s *Spool, recs [][]byte) {
	t.Helper()
	for _, r := range recs {
		if err := s.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
}

// drainAll rotates and drains every file, returning the records in order.
func drainAll(t *testing.T, s *Spool) [][]byte {
	t.Helper()
	files, err := s.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for _, f := range files {
		if _, err := s.Drain(context.Background(), f, func(_ context.Context, rec []byte) error {
			got = append(got, rec)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// dirBytes is what the spool's files hold on disk.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += info.Size()
	}
	return n
}

func sameRecords(t *testing.T, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("drained %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d is %q, want %q", i, got[i], want[i])
		}
	}
}

func appendToFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// legacyFrame is a record as the spool wrote it before its frames had a
// magic: length, CRC32-C, payload.
func legacyFrame(rec []byte) []byte {
	h := make([]byte, legacyHeaderLen, legacyHeaderLen+len(rec))
	binary.BigEndian.PutUint32(h[0:4], uint32(len(rec)))
	binary.BigEndian.PutUint32(h[4:8], crc32.Checksum(rec, crcTable))
	return append(h, rec...)
}

// A crash or a full disk leaves a torn tail; reopening cuts it off, so that
// the records appended after the restart are all drained.
func TestSpoolReopenTruncatesTornTail(t *testing.T) {
	whole := appendFrame(nil, []byte("a record the crash tore apart"))
	for _, tc := range []struct {
		name string
		tail []byte
	}{
		{"half a header", whole[:7]},
		{"header and half the payload", whole[:len(whole)-9]},
		{"all but the last byte", whole[:len(whole)-1]},
		{"zeros a file system left", make([]byte, 4096)},
		{"a torn record of the old form", []byte{0, 0, 0, 9, 1, 2}},
		{"garbage", []byte("\xff\x00\x13garbage that is no frame at all\x00\x00\x00\x05")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			before, after := records("before", 20), records("after", 20)
			s := openSpool(t, dir)
			appendAll(t, s, before)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			intact := dirBytes(t, dir)
			appendToFile(t, filepath.Join(dir, activeName), tc.tail)

			s = openSpool(t, dir)
			if got := dirBytes(t, dir); got != intact {
				t.Fatalf("active file holds %d bytes after reopen, want %d (torn tail cut off)", got, intact)
			}
			if s.Size() != intact {
				t.Fatalf("Size() = %d after reopen, want %d", s.Size(), intact)
			}
			if sk := s.Skipped(); sk.Regions != 1 || sk.Bytes != int64(len(tc.tail)) {
				t.Fatalf("Skipped() = %+v, want 1 region of %d bytes", sk, len(tc.tail))
			}
			appendAll(t, s, after)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			// A restart with nothing torn: the accounting is what is on disk.
			s = openSpool(t, dir)
			defer s.Close()
			if s.Size() != dirBytes(t, dir) {
				t.Fatalf("Size() = %d, files hold %d", s.Size(), dirBytes(t, dir))
			}
			sameRecords(t, drainAll(t, s), append(before, after...))
			if s.Size() != 0 || dirBytes(t, dir) != 0 {
				t.Fatalf("after the drain: Size() = %d, files hold %d bytes", s.Size(), dirBytes(t, dir))
			}
		})
	}
}

// A record damaged in the middle of a file costs that record only: the ones
// before and after it are drained, and the damage is counted.
func TestSpoolDrainResynchronisesPastDamage(t *testing.T) {
	recs := records("r", 30)
	const victim = 12
	// Offsets of the frames as the spool writes them.
	offs := make([]int64, len(recs)+1)
	for i, r := range recs {
		offs[i+1] = offs[i] + frameLen(len(r))
	}
	start, end := offs[victim], offs[victim+1]
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
		lost   bool // the victim record is lost (else only bytes between frames are)
	}{
		{"payload bit flip", func(b []byte) []byte { b[start+frameHeaderLen+3] ^= 0x10; return b }, true},
		{"length grown to swallow what follows", func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[start+4:], uint32(end-start)*5)
			return b
		}, true},
		{"length shrunk", func(b []byte) []byte { binary.BigEndian.PutUint32(b[start+4:], 2); return b }, true},
		{"magic overwritten", func(b []byte) []byte { copy(b[start:], "XXXX"); return b }, true},
		{"whole frame zeroed", func(b []byte) []byte { clear(b[start:end]); return b }, true},
		{"stretch cut out of the frame", func(b []byte) []byte { return append(b[:start+5:start+5], b[end-5:]...) }, true},
		{"torn frame followed by records", func(b []byte) []byte { return append(b[:end-7:end-7], b[end:]...) }, true},
		{"garbage between two frames", func(b []byte) []byte {
			g := append([]byte("\xa7SP2 looks like a header"), make([]byte, 100)...)
			return append(append(b[:start:start], g...), b[start:]...)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openSpool(t, dir)
			appendAll(t, s, recs)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, activeName)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) != offs[len(recs)] {
				t.Fatalf("spool file is %d bytes, want %d", len(b), offs[len(recs)])
			}
			b = tc.damage(b)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}

			s = openSpool(t, dir) // damage in the middle is no tail: nothing is cut off
			defer s.Close()
			if s.Size() != int64(len(b)) {
				t.Fatalf("Size() = %d, file holds %d", s.Size(), len(b))
			}
			want := recs
			if tc.lost {
				want = append(append([][]byte{}, recs[:victim]...), recs[victim+1:]...)
			}
			sameRecords(t, drainAll(t, s), want)
			if sk := s.Skipped(); sk.Regions != 1 || sk.Bytes == 0 {
				t.Fatalf("Skipped() = %+v, want one damaged region", sk)
			}
			if s.Size() != 0 {
				t.Fatalf("Size() = %d after the drain", s.Size())
			}
		})
	}
}

// Files written before frames had a magic are still drained, also one that
// the old code appended to after a torn record, and one this code appends to.
func TestSpoolReadsTheOlderFrame(t *testing.T) {
	dir := t.TempDir()
	old1, old2, old3, drained := records("old1", 5), records("old2", 5), records("old3", 5), records("rotated", 5)
	var active []byte
	for _, r := range old1 {
		active = append(active, legacyFrame(r)...)
	}
	active = append(active, legacyFrame([]byte("torn by a crash"))[:12]...)
	for _, r := range old2 {
		active = append(active, legacyFrame(r)...)
	}
	bad := legacyFrame([]byte("a bit flipped in this one"))
	bad[10] ^= 1
	active = append(active, bad...)
	for _, r := range old3 {
		active = append(active, legacyFrame(r)...)
	}
	var rotated []byte
	for _, r := range drained {
		rotated = append(rotated, legacyFrame(r)...)
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%020d%s", 1, drainExt)), rotated, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, activeName), active, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openSpool(t, dir)
	defer s.Close()
	if s.Size() != int64(len(active)+len(rotated)) {
		t.Fatalf("Size() = %d, files hold %d", s.Size(), len(active)+len(rotated))
	}
	fresh := records("new", 5)
	appendAll(t, s, fresh)
	var want [][]byte
	for _, part := range [][][]byte{drained, old1, old2, old3, fresh} {
		want = append(want, part...)
	}
	sameRecords(t, drainAll(t, s), want)
	if sk := s.Skipped(); sk.Regions != 2 {
		t.Fatalf("Skipped() = %+v, want the torn and the flipped record", sk)
	}
}

// A write that fails half way (here: past the file size limit, which fails
// like a full disk) is cut off again: nothing later follows half a frame,
// the failed record is never drained, and the size accounting is unchanged.
func TestSpoolFailedWriteIsCutOff(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir)
	defer s.Close()
	before, after := records("before", 10), records("after", 10)
	appendAll(t, s, before)
	size := s.Size()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	for _, room := range []uint64{0, frameHeaderLen / 2, frameHeaderLen + 10} {
		low := lim
		low.Cur = uint64(size) + room
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &low); err != nil {
			t.Fatal(err)
		}
		err := s.Append(context.Background(), bytes.Repeat([]byte("never stored;"), 20))
		if rerr := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); rerr != nil {
			t.Fatal(rerr)
		}
		if !errors.Is(err, syscall.EFBIG) {
			t.Fatalf("append past the limit (room %d): %v, want EFBIG", room, err)
		}
		if got := dirBytes(t, dir); got != size {
			t.Fatalf("room %d: file holds %d bytes after the failed write, want %d", room, got, size)
		}
		if s.Size() != size {
			t.Fatalf("room %d: Size() = %d after the failed write, want %d", room, s.Size(), size)
		}
	}
	appendAll(t, s, after)
	sameRecords(t, drainAll(t, s), append(before, after...))
	if s.Size() != 0 {
		t.Fatalf("Size() = %d after the drain", s.Size())
	}
}

// Reservations of appends that never reach the writer are released.
func TestSpoolAppendReleasesWhatItReserved(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A cancelled context may still race the queue; either way the
	// accounting must match the disk.
	for i := 0; i < 50; i++ {
		_ = s.Append(ctx, []byte("maybe"))
	}
	if s.Size() != dirBytes(t, dir) {
		t.Fatalf("Size() = %d, file holds %d", s.Size(), dirBytes(t, dir))
	}
	if err := s.Append(context.Background(), make([]byte, maxRecordLen+1)); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("oversized record: %v, want ErrRecordTooLarge", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), []byte("late")); !errors.Is(err, ErrSpoolClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if s.Size() != dirBytes(t, dir) {
		t.Fatalf("Size() = %d, file holds %d", s.Size(), dirBytes(t, dir))
	}
}

// A drain whose consumer fails keeps the file, and the next drain starts over.
func TestSpoolDrainKeepsTheFileWhenTheConsumerFails(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir)
	defer s.Close()
	recs := records("r", 10)
	appendAll(t, s, recs)
	files, err := s.Rotate()
	if err != nil || len(files) != 1 {
		t.Fatalf("rotate: %v %v", files, err)
	}
	boom := errors.New("nats away")
	n, err := s.Drain(context.Background(), files[0], func(_ context.Context, rec []byte) error {
		if bytes.Equal(rec, recs[4]) {
			return boom
		}
		return nil
	})
	if n != 4 || !errors.Is(err, boom) {
		t.Fatalf("drain: %d, %v", n, err)
	}
	if s.Size() != dirBytes(t, dir) || s.Size() == 0 {
		t.Fatalf("Size() = %d, files hold %d", s.Size(), dirBytes(t, dir))
	}
	sameRecords(t, drainAll(t, s), recs)
}

// The reader's property: whatever stretch of a spool file is damaged
// (overwritten, cut out, garbage inserted, the tail torn off), every record
// whose frame lies outside that stretch is read, in order; an undamaged file
// reads back exactly.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte("hello spool, these are records"), []byte{5, 0, 9, 3}, uint32(7), uint16(4), uint8(0), []byte("xx"))
	f.Add([]byte("one two three four five six"), []byte{3, 4, 6, 5}, uint32(30), uint16(20), uint8(1), []byte{})
	f.Add([]byte("abcdefghijklmnopqrstuvwxyz"), []byte{1, 1, 1, 1, 1}, uint32(16), uint16(0), uint8(2), []byte("\xa7SP2\x00\x00\x00\x01"))
	f.Add([]byte("torn tail"), []byte{2, 2, 2}, uint32(40), uint16(0), uint8(3), []byte{})
	f.Add(bytes.Repeat([]byte{0}, 64), []byte{0, 8, 8}, uint32(0), uint16(17), uint8(0), []byte{0})
	f.Fuzz(func(t *testing.T, payload, sizes []byte, at uint32, n uint16, mode uint8, garbage []byte) {
		var recs [][]byte
		for _, sz := range sizes {
			k := min(int(sz), len(payload))
			recs = append(recs, payload[:k])
			payload = payload[k:]
		}
		if len(payload) > 0 {
			recs = append(recs, payload)
		}
		var file []byte
		offs := []int{0}
		for _, r := range recs {
			file = appendFrame(file, r)
			offs = append(offs, len(file))
		}
		got, skipped := readFrames(t, file)
		if skipped != 0 || len(got) != len(recs) {
			t.Fatalf("undamaged file: %d of %d records, %d bytes skipped", len(got), len(recs), skipped)
		}
		for i := range recs {
			if !bytes.Equal(got[i], recs[i]) {
				t.Fatalf("undamaged file: record %d differs", i)
			}
		}

		// Damage [lo, hi) of the file.
		lo := int(at) % (len(file) + 1)
		hi := min(lo+int(n), len(file))
		damaged := append([]byte{}, file[:lo]...)
		switch mode % 4 {
		case 0: // overwritten
			for i := lo; i < hi; i++ {
				c := file[i] ^ 0xff
				if len(garbage) > 0 && garbage[(i-lo)%len(garbage)] != file[i] {
					c = garbage[(i-lo)%len(garbage)]
				}
				damaged = append(damaged, c)
			}
			damaged = append(damaged, file[hi:]...)
		case 1: // cut out
			damaged = append(damaged, file[hi:]...)
		case 2: // garbage inserted
			hi = lo
			damaged = append(append(damaged, garbage...), file[lo:]...)
		case 3: // torn tail
			hi = len(file)
		}
		got, skipped = readFrames(t, damaged)
		var framed int
		for _, r := range got {
			framed += int(frameLen(len(r)))
		}
		if framed+int(skipped) != len(damaged) {
			t.Fatalf("%d bytes in frames and %d skipped, file is %d", framed, skipped, len(damaged))
		}
		j := 0
		for i, r := range recs {
			// Intact: its frame lies wholly outside [lo, hi); an insertion
			// (lo == hi) damages only a frame it falls strictly inside.
			start, end := offs[i], offs[i+1]
			if lo == hi && start < lo && lo < end || lo != hi && end > lo && start < hi {
				continue
			}
			for j < len(got) && !bytes.Equal(got[j], r) {
				j++
			}
			if j == len(got) {
				t.Fatalf("intact record %d (frame %d-%d, damage %d-%d, mode %d) not read", i, offs[i], offs[i+1], lo, hi, mode%4)
			}
			j++
		}
	})
}

// readFrames reads every intact record of b and the bytes skipped.
func readFrames(t testing.TB, b []byte) ([][]byte, int64) {
	t.Helper()
	fr, err := newFrameReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	var skipped int64
	for {
		rec, err := fr.next()
		skipped += fr.damageLen
		if errors.Is(err, io.EOF) {
			return got, skipped
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, bytes.Clone(rec))
	}
}

// BenchmarkSpoolAppend: concurrent appends of batch-sized records, each
// returning once fsynced (the group commit shares the fsyncs).
func BenchmarkSpoolAppend(b *testing.B) {
	s, err := OpenSpool(b.TempDir(), 8<<30, testenv.Logger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rec := bytes.Repeat([]byte("e"), 4<<10)
	b.SetBytes(int64(len(rec)))
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Append(context.Background(), rec); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSpoolDrain: reading a rotated file back, with one damaged
// record in every hundred to resynchronise past.
func BenchmarkSpoolDrain(b *testing.B) {
	var file []byte
	rec := bytes.Repeat([]byte("e"), 4<<10)
	for i := 0; i < 1000; i++ {
		start := len(file)
		file = appendFrame(file, rec)
		if i%100 == 50 {
			file[start+frameHeaderLen+7] ^= 1
		}
	}
	b.SetBytes(int64(len(file)))
	for i := 0; i < b.N; i++ {
		got, _ := readFrames(b, file)
		if len(got) != 990 {
			b.Fatalf("%d records", len(got))
		}
	}
}
