package usage

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrSpoolFull is returned when the spool holds its maximum size.
var ErrSpoolFull = errors.New("usage spool is full")

// ErrSpoolClosed is returned by Append after Close.
var ErrSpoolClosed = errors.New("usage spool is closed")

const (
	activeName = "active.spool"
	drainExt   = ".drain"
	headerLen  = 8 // 4 bytes length, 4 bytes CRC32-C of the payload
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Spool is the gateway's local, append-only store of usage events that could
// not be handed to JetStream. Append returns once the record is on disk
// (fsync), and concurrent appends share one fsync (group commit). Records are
// framed with their length and CRC so a torn tail — a record that was never
// acknowledged — is detected and ignored.
type Spool struct {
	dir      string
	maxBytes int64
	logger   *slog.Logger

	reqs chan appendReq
	quit chan struct{}
	done chan struct{}

	mu     sync.Mutex // guards f, size, closed
	f      *os.File
	size   int64 // bytes in the active file and the files waiting to drain
	closed bool
}

type appendReq struct {
	rec  []byte
	errc chan error
}

// OpenSpool opens (creating) the spool in dir. maxBytes bounds its size.
func OpenSpool(dir string, maxBytes int64, logger *slog.Logger) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{dir: dir, maxBytes: maxBytes, logger: logger, reqs: make(chan appendReq, 1024), quit: make(chan struct{}), done: make(chan struct{})}
	f, err := os.OpenFile(filepath.Join(dir, activeName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.f = f
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && (e.Name() == activeName || strings.HasSuffix(e.Name(), drainExt)) {
			s.size += info.Size()
		}
	}
	go s.writer()
	return s, nil
}

// Append durably stores one record. Safe for concurrent use.
func (s *Spool) Append(ctx context.Context, rec []byte) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrSpoolClosed
	}
	if s.size+int64(len(rec)+headerLen) > s.maxBytes {
		s.mu.Unlock()
		return ErrSpoolFull
	}
	s.size += int64(len(rec) + headerLen)
	s.mu.Unlock()
	r := appendReq{rec: rec, errc: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-s.done:
		s.unreserve(len(rec))
		return ErrSpoolClosed
	case <-ctx.Done():
		s.unreserve(len(rec))
		return fmt.Errorf("spool append: %w", ctx.Err())
	}
	// Once queued, the writer answers for the record (fsync or error) —
	// also while closing — so the caller learns for sure whether it landed.
	return <-r.errc
}

func (s *Spool) unreserve(n int) {
	s.mu.Lock()
	s.size -= int64(n + headerLen)
	s.mu.Unlock()
}

// Full reports whether another record of n bytes would not fit.
func (s *Spool) Full(n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size+int64(n+headerLen) > s.maxBytes
}

// Size is the number of bytes waiting in the spool.
func (s *Spool) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// writer is the group commit loop: it takes every waiting append, writes them
// with one write and one fsync, then answers them all.
func (s *Spool) writer() {
	defer close(s.done)
	var buf []byte
	for {
		var batch []appendReq
		stopping := false
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
		case <-s.quit:
			stopping = true
		}
	more:
		for len(batch) < 4096 {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		if len(batch) == 0 {
			return
		}
		buf = buf[:0]
		for _, r := range batch {
			var h [headerLen]byte
			binary.BigEndian.PutUint32(h[0:4], uint32(len(r.rec)))
			binary.BigEndian.PutUint32(h[4:8], crc32.Checksum(r.rec, crcTable))
			buf = append(buf, h[:]...)
			buf = append(buf, r.rec...)
		}
		s.mu.Lock()
		_, err := s.f.Write(buf)
		if err == nil {
			err = s.f.Sync()
		}
		s.mu.Unlock()
		if err != nil {
			err = fmt.Errorf("spool write: %w", err)
			s.logger.Error("usage spool write failed", "err", err)
		}
		for _, r := range batch {
			r.errc <- err
		}
		if stopping && len(s.reqs) == 0 {
			return
		}
	}
}

// Rotate closes the active file for draining and starts a new one. It returns
// the files waiting to drain, oldest first.
func (s *Spool) Rotate() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrSpoolClosed
	}
	if info, err := s.f.Stat(); err == nil && info.Size() > 0 {
		name := filepath.Join(s.dir, fmt.Sprintf("%020d%s", time.Now().UnixNano(), drainExt))
		if err := s.f.Close(); err != nil {
			return nil, fmt.Errorf("spool rotate: %w", err)
		}
		if err := os.Rename(filepath.Join(s.dir, activeName), name); err != nil {
			return nil, fmt.Errorf("spool rotate: %w", err)
		}
		f, err := os.OpenFile(filepath.Join(s.dir, activeName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("spool rotate: %w", err)
		}
		s.f = f
		if d, err := os.Open(s.dir); err == nil {
			_ = d.Sync()
			_ = d.Close()
		}
	}
	matches, err := filepath.Glob(filepath.Join(s.dir, "*"+drainExt))
	if err != nil {
		return nil, fmt.Errorf("spool rotate: %w", err)
	}
	sort.Strings(matches)
	return matches, nil
}

// Drain reads one rotated file and hands each record to fn in order; when fn
// has accepted them all the file is removed. A torn record at the end is
// skipped (it was never acknowledged); any error from fn stops the drain and
// keeps the file for the next attempt.
func (s *Spool) Drain(ctx context.Context, path string, fn func(ctx context.Context, rec []byte) error) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("spool drain: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return 0, fmt.Errorf("spool drain: %w", err)
	}
	r := bufio.NewReader(f)
	n := 0
	for {
		rec, err := readRecord(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.logger.Warn("usage spool: torn or corrupt record skipped at end of file", "file", filepath.Base(path), "err", err)
			break
		}
		if err := fn(ctx, rec); err != nil {
			_ = f.Close()
			return n, err
		}
		n++
	}
	_ = f.Close()
	if err := os.Remove(path); err != nil {
		return n, fmt.Errorf("spool drain: %w", err)
	}
	s.mu.Lock()
	s.size -= info.Size()
	if s.size < 0 {
		s.size = 0
	}
	s.mu.Unlock()
	return n, nil
}

func readRecord(r *bufio.Reader) ([]byte, error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("record header: %w", err)
	}
	n := binary.BigEndian.Uint32(h[0:4])
	if n > 16<<20 {
		return nil, fmt.Errorf("record of %d bytes", n)
	}
	rec := make([]byte, n)
	if _, err := io.ReadFull(r, rec); err != nil {
		return nil, fmt.Errorf("record body: %w", err)
	}
	if crc32.Checksum(rec, crcTable) != binary.BigEndian.Uint32(h[4:8]) {
		return nil, errors.New("record checksum mismatch")
	}
	return rec, nil
}

// Close stops the writer after the appends already queued.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Close()
}
