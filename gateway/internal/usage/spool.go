package usage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrSpoolFull is returned when the spool holds its maximum size.
var ErrSpoolFull = errors.New("usage spool is full")

// ErrSpoolClosed is returned by Append after Close.
var ErrSpoolClosed = errors.New("usage spool is closed")

// ErrRecordTooLarge is returned by Append for a record the spool cannot frame.
var ErrRecordTooLarge = errors.New("usage spool record too large")

const (
	activeName = "active.spool"
	drainExt   = ".drain"

	// What one write of the group commit gathers at most.
	maxGroupRecords = 4096
	maxGroupBytes   = 8 << 20
)

// Spool is the gateway's local, append-only store of records (usage batches)
// that could not be handed to JetStream. Records are opaque bytes to it.
// Append returns once the record is on disk (fsync), and concurrent appends
// share one write and one fsync (group commit).
//
// What a crash or a full disk may leave behind is handled on both ends.
// OpenSpool truncates the active file after its last intact record, so the
// records appended after a restart never follow torn bytes; a write or fsync
// that fails is cut off again (truncated to the last good offset) before
// anything else is written, and its records are reported as not stored.
// Drain skips a damaged stretch and resynchronises on the next intact frame
// (see frame.go), so a bad record never costs the ones after it; what it
// skipped is logged and counted (Skipped).
type Spool struct {
	dir      string
	maxBytes int64
	logger   *slog.Logger

	reqs chan appendReq
	quit chan struct{}
	done chan struct{}

	mu       sync.Mutex // guards the fields up to fmu; never held while taking fmu
	disk     int64      // bytes in the active file and in the files waiting to drain
	reserved int64      // bytes of the appends accepted and not yet written
	closed   bool
	skipped  SpoolSkipped

	fmu  sync.Mutex // guards f, good and end; held across a write and its fsync
	f    *os.File   // the active file, append-only; nil after a failed reopen
	good int64      // the end of the last record written and fsynced to f
	end  int64      // f's length: good, unless a failed write left bytes that could not be cut off
}

// SpoolSkipped counts the damaged stretches (torn tails, corrupt records) the
// spool skipped since it was opened, and their bytes.
type SpoolSkipped struct {
	Regions, Bytes int64
}

type appendReq struct {
	rec  []byte
	errc chan error
}

// OpenSpool opens (creating) the spool in dir. maxBytes bounds its size. A
// torn or damaged tail of the active file is truncated at its last intact
// record.
func OpenSpool(dir string, maxBytes int64, logger *slog.Logger) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{dir: dir, maxBytes: maxBytes, logger: logger, reqs: make(chan appendReq, 1024), quit: make(chan struct{}), done: make(chan struct{})}
	if err := s.openActive(); err != nil {
		return nil, err
	}
	s.disk = s.end
	entries, err := os.ReadDir(dir)
	if err != nil {
		_ = s.f.Close()
		return nil, fmt.Errorf("spool: %w", err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() && strings.HasSuffix(e.Name(), drainExt) {
			s.disk += info.Size()
		}
	}
	go s.writer()
	return s, nil
}

// openActive opens (creating) the active file, truncates what follows its
// last intact record and sets f, good and end. The caller holds fmu, or has
// the spool to itself.
func (s *Spool) openActive() error {
	path := filepath.Join(s.dir, activeName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("spool: %w", err)
	}
	good := int64(0)
	if info.Size() > 0 {
		fr, err := newFrameReader(f, info.Size())
		for err == nil {
			_, err = fr.next()
		}
		if !errors.Is(err, io.EOF) {
			_ = f.Close()
			return fmt.Errorf("spool: scan %s: %w", activeName, err)
		}
		good = fr.good
	}
	if cut := info.Size() - good; cut > 0 {
		s.logger.Warn("usage spool: torn or damaged tail truncated", "file", activeName, "offset", good, "bytes", cut)
		if err := f.Truncate(good); err != nil {
			_ = f.Close()
			return fmt.Errorf("spool: truncate torn tail: %w", err)
		}
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return fmt.Errorf("spool: truncate torn tail: %w", err)
		}
		s.mu.Lock()
		s.skipped.Regions++
		s.skipped.Bytes += cut
		s.mu.Unlock()
	}
	s.f, s.good, s.end = f, good, good
	return nil
}

// Append durably stores one record. Safe for concurrent use. When it returns
// an error the record is not in the spool.
func (s *Spool) Append(ctx context.Context, rec []byte) error {
	if len(rec) > maxRecordLen {
		return fmt.Errorf("%w: %d bytes", ErrRecordTooLarge, len(rec))
	}
	n := frameLen(len(rec))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrSpoolClosed
	}
	if s.disk+s.reserved+n > s.maxBytes {
		s.mu.Unlock()
		return ErrSpoolFull
	}
	s.reserved += n
	s.mu.Unlock()
	r := appendReq{rec: rec, errc: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-s.done:
		s.account(-n, 0)
		return ErrSpoolClosed
	case <-ctx.Done():
		s.account(-n, 0)
		return fmt.Errorf("spool append: %w", ctx.Err())
	}
	// Once queued, the writer answers for the record (fsync or error) —
	// also while closing — so the caller learns for sure whether it landed.
	return <-r.errc
}

// account moves the size accounting by the given deltas.
func (s *Spool) account(reserved, disk int64) {
	s.mu.Lock()
	s.reserved += reserved
	s.disk += disk
	s.mu.Unlock()
}

// Full reports whether another record of n bytes would not fit.
func (s *Spool) Full(n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disk+s.reserved+frameLen(n) > s.maxBytes
}

// Size is the number of bytes waiting in the spool (or about to).
func (s *Spool) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disk + s.reserved
}

// Skipped reports what damage the spool skipped since it was opened.
func (s *Spool) Skipped() SpoolSkipped {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipped
}

// Collectors are the spool's counters of the damage it skipped and its size
// limit, for a Prometheus registry (register them once).
func (s *Spool) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gateway_usage_spool_limit_bytes",
			Help: "Most bytes the spool may hold (SPOOL_MAX_BYTES); when full and NATS is away, billable calls get 503.",
		}, func() float64 { return float64(s.maxBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gateway_usage_spool_damaged_regions_total",
			Help: "Damaged stretches of spool files skipped: torn tails cut off at open, corrupt records passed over by a drain.",
		}, func() float64 { return float64(s.Skipped().Regions) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gateway_usage_spool_damaged_bytes_total",
			Help: "Bytes of the damaged stretches of spool files skipped.",
		}, func() float64 { return float64(s.Skipped().Bytes) }),
	}
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
		size := 0
		for _, r := range batch {
			size += len(r.rec)
		}
	more:
		for len(batch) < maxGroupRecords && size < maxGroupBytes {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
				size += len(r.rec)
			default:
				break more
			}
		}
		if len(batch) == 0 {
			return
		}
		buf = buf[:0]
		for _, r := range batch {
			buf = appendFrame(buf, r.rec)
		}
		s.fmu.Lock()
		grew, err := s.write(buf)
		s.fmu.Unlock()
		s.account(-int64(len(buf)), grew)
		if err != nil {
			err = fmt.Errorf("spool write: %w", err)
			s.logger.Error("usage spool write failed", "records", len(batch), "err", err)
		}
		for _, r := range batch {
			r.errc <- err
		}
		if stopping && len(s.reqs) == 0 {
			return
		}
	}
}

// write appends buf to the active file and fsyncs it. On failure it cuts the
// file back to its last good offset, so that nothing is ever appended after
// half a frame and the records reported as failed are not drained later. It
// returns by how much the file grew (negative when it removed what an earlier
// failure left). The caller holds fmu.
func (s *Spool) write(buf []byte) (grew int64, err error) {
	before := s.end
	defer func() { grew = s.end - before }()
	if s.f == nil {
		if err := s.openActive(); err != nil {
			return 0, err
		}
		before = s.end // a file found on reopen was not counted in disk
		s.account(0, s.end)
	}
	if err := s.cutBack(); err != nil {
		return 0, err
	}
	n, err := s.f.Write(buf)
	s.end += int64(n)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		if cerr := s.cutBack(); cerr != nil {
			s.logger.Error("usage spool: failed write not cut off; retried before the next one", "offset", s.good, "err", cerr)
		}
		return 0, err
	}
	s.good = s.end
	return 0, nil
}

// cutBack truncates the active file to its last good offset when a failed
// write left bytes after it. The caller holds fmu.
func (s *Spool) cutBack() error {
	if s.end == s.good {
		return nil
	}
	if err := s.f.Truncate(s.good); err != nil {
		if info, serr := s.f.Stat(); serr == nil {
			s.end = info.Size()
		}
		return fmt.Errorf("cut back to %d: %w", s.good, err)
	}
	s.end = s.good
	_ = s.f.Sync() // best effort: the cut records were never acknowledged
	return nil
}

// Rotate closes the active file for draining and starts a new one. It returns
// the files waiting to drain, oldest first.
func (s *Spool) Rotate() ([]string, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, ErrSpoolClosed
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.f != nil {
		before := s.end
		err := s.cutBack()
		s.account(0, s.end-before)
		if err != nil {
			return nil, fmt.Errorf("spool rotate: %w", err)
		}
	}
	if s.f != nil && s.good > 0 {
		active := filepath.Join(s.dir, activeName)
		name := filepath.Join(s.dir, fmt.Sprintf("%020d%s", time.Now().UnixNano(), drainExt))
		if err := s.f.Close(); err != nil {
			// The next write reopens (and counts) the file as it finds it.
			s.f = nil
			s.account(0, -s.end)
			s.good, s.end = 0, 0
			return nil, fmt.Errorf("spool rotate: %w", err)
		}
		s.f = nil
		if err := os.Rename(active, name); err != nil {
			// The records stay in the active file; reopen it as it was.
			return nil, errors.Join(fmt.Errorf("spool rotate: %w", err), s.reopen())
		}
		if d, err := os.Open(s.dir); err == nil {
			_ = d.Sync()
			_ = d.Close()
		}
		s.good, s.end = 0, 0
		if err := s.reopen(); err != nil {
			s.logger.Warn("usage spool: new active file not opened; retried on the next write", "err", err)
		}
	}
	matches, err := filepath.Glob(filepath.Join(s.dir, "*"+drainExt))
	if err != nil {
		return nil, fmt.Errorf("spool rotate: %w", err)
	}
	sort.Strings(matches)
	return matches, nil
}

// reopen opens the active file again after Rotate closed it, keeping the
// accounting exact. The caller holds fmu.
func (s *Spool) reopen() error {
	counted := s.end
	if err := s.openActive(); err != nil {
		s.f = nil
		s.good, s.end = 0, 0
		s.account(0, -counted)
		return err
	}
	s.account(0, s.end-counted)
	return nil
}

// Drain reads one rotated file and hands each intact record to fn in order;
// when fn has accepted them all the file is removed. Damage — a torn tail, a
// corrupt record — is skipped, logged and counted, and reading resumes at the
// next intact record. Any error from fn stops the drain and keeps the file
// for the next attempt. rec is fn's own copy.
func (s *Spool) Drain(ctx context.Context, path string, fn func(ctx context.Context, rec []byte) error) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("spool drain: %w", err)
	}
	defer func() { _ = f.Close() }()
	info, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("spool drain: %w", err)
	}
	fr, err := newFrameReader(f, info.Size())
	if err != nil {
		return 0, fmt.Errorf("spool drain %s: %w", filepath.Base(path), err)
	}
	n := 0
	var skipped SpoolSkipped
	for {
		rec, err := fr.next()
		if fr.damageLen > 0 {
			skipped.Regions++
			skipped.Bytes += fr.damageLen
			s.logger.Warn("usage spool: damaged bytes skipped", "file", filepath.Base(path), "offset", fr.damageOff, "bytes", fr.damageLen, "at_end", errors.Is(err, io.EOF))
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("spool drain %s: %w", filepath.Base(path), err)
		}
		if err := fn(ctx, bytes.Clone(rec)); err != nil {
			return n, err
		}
		n++
	}
	if err := os.Remove(path); err != nil {
		return n, fmt.Errorf("spool drain: %w", err)
	}
	s.mu.Lock()
	s.disk -= info.Size()
	if s.disk < 0 {
		s.disk = 0
	}
	s.skipped.Regions += skipped.Regions
	s.skipped.Bytes += skipped.Bytes
	s.mu.Unlock()
	return n, nil
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
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
