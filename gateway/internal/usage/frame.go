package usage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The spool's on-disk frame. A record is written as
//
//	magic [4]byte | length uint32 | CRC32-C of the payload | CRC32-C of the 12 bytes before | payload
//
// big-endian. The magic is a sync marker: after a damaged stretch the reader
// scans forward for it and takes the first frame whose header CRC and payload
// CRC both hold, so a bad length can neither swallow the records that follow
// nor be trusted. The first byte of the magic, read as the top byte of an
// older frame's length, means more than maxRecordLen, so the two forms never
// look alike.
//
// The older form (version 1, written before the magic existed) was
//
//	length uint32 | CRC32-C of the payload | payload
//
// and is still read: a file whose first frame is of that form is read as one,
// up to its first version-2 frame (a file that the old code wrote and this
// code appended to).
const (
	frameHeaderLen   = 16
	legacyHeaderLen  = 8
	maxRecordLen     = 16 << 20
	frameReadWindow  = 1 << 20
	frameMagicString = "\xa7SP2"
)

var (
	frameMagic = []byte(frameMagicString)
	crcTable   = crc32.MakeTable(crc32.Castagnoli)
)

// frameLen is the number of bytes a record of n bytes takes on disk.
func frameLen(n int) int64 { return int64(frameHeaderLen + n) }

// appendFrame appends rec, framed, to buf.
func appendFrame(buf, rec []byte) []byte {
	var h [frameHeaderLen]byte
	copy(h[0:4], frameMagic)
	binary.BigEndian.PutUint32(h[4:8], uint32(len(rec)))
	binary.BigEndian.PutUint32(h[8:12], crc32.Checksum(rec, crcTable))
	binary.BigEndian.PutUint32(h[12:16], crc32.Checksum(h[0:12], crcTable))
	buf = append(buf, h[:]...)
	return append(buf, rec...)
}

// frameReader reads the intact records of one spool file in order, skipping
// what is damaged: a torn tail, a flipped bit, a stretch of zeros or garbage.
type frameReader struct {
	r      io.ReaderAt
	size   int64
	off    int64 // where the next frame is looked for
	good   int64 // the end of the last intact frame read
	legacy bool  // the file starts with a version-1 frame: accept that form until the first version-2 frame
	sawV2  bool

	buf    []byte // a window on the file, starting at bufOff
	bufOff int64

	// Set by next: the damaged stretch skipped before the record it returned
	// (or before the end of the file).
	damageOff, damageLen int64
}

func newFrameReader(r io.ReaderAt, size int64) (*frameReader, error) {
	fr := &frameReader{r: r, size: size}
	_, _, legacy, err := fr.parseLegacy(0)
	if err != nil {
		return nil, err
	}
	fr.legacy = legacy
	return fr, nil
}

// next returns the next intact record (valid until the following call) or
// io.EOF at the end of the file. damageOff and damageLen tell what it
// skipped on the way.
func (fr *frameReader) next() ([]byte, error) {
	start := fr.off
	fr.damageOff, fr.damageLen = start, 0
	for fr.off < fr.size {
		rec, n, ok, err := fr.parseAt(fr.off)
		if err != nil {
			return nil, err
		}
		if ok {
			fr.damageLen = fr.off - start
			fr.off += n
			fr.good = fr.off
			return rec, nil
		}
		if fr.off, err = fr.candidate(fr.off + 1); err != nil {
			return nil, err
		}
	}
	fr.off = fr.size
	fr.damageLen = fr.size - start
	return nil, io.EOF
}

// parseAt checks for an intact frame at off.
func (fr *frameReader) parseAt(off int64) (rec []byte, n int64, ok bool, err error) {
	h, err := fr.window(off, frameHeaderLen)
	if err != nil {
		return nil, 0, false, err
	}
	if len(h) < 4 || !bytes.Equal(h[0:4], frameMagic) {
		if fr.legacy && !fr.sawV2 {
			return fr.parseLegacy(off)
		}
		return nil, 0, false, nil
	}
	if len(h) < frameHeaderLen || crc32.Checksum(h[0:12], crcTable) != binary.BigEndian.Uint32(h[12:16]) {
		return nil, 0, false, nil
	}
	size, sum := int64(binary.BigEndian.Uint32(h[4:8])), binary.BigEndian.Uint32(h[8:12])
	if size > maxRecordLen || off+frameHeaderLen+size > fr.size {
		return nil, 0, false, nil
	}
	p, err := fr.window(off+frameHeaderLen, size)
	if err != nil || int64(len(p)) < size || crc32.Checksum(p, crcTable) != sum {
		return nil, 0, false, err
	}
	fr.sawV2 = true
	return p, frameHeaderLen + size, true, nil
}

// parseLegacy checks for an intact version-1 frame at off. An empty record
// is taken for damage: the old code never wrote one, and eight zero bytes
// (what a file system may leave after a crash) would otherwise pass.
func (fr *frameReader) parseLegacy(off int64) (rec []byte, n int64, ok bool, err error) {
	h, err := fr.window(off, legacyHeaderLen)
	if err != nil || len(h) < legacyHeaderLen {
		return nil, 0, false, err
	}
	size, sum := int64(binary.BigEndian.Uint32(h[0:4])), binary.BigEndian.Uint32(h[4:8])
	if size == 0 || size > maxRecordLen || off+legacyHeaderLen+size > fr.size {
		return nil, 0, false, nil
	}
	p, err := fr.window(off+legacyHeaderLen, size)
	if err != nil || int64(len(p)) < size || crc32.Checksum(p, crcTable) != sum {
		return nil, 0, false, err
	}
	return p, legacyHeaderLen + size, true, nil
}

// candidate returns the first offset at or after from where a frame may
// start (the magic, or in a legacy file a plausible version-1 length), or
// the file's size when there is none.
func (fr *frameReader) candidate(from int64) (int64, error) {
	minLen := int64(frameHeaderLen)
	legacy := fr.legacy && !fr.sawV2
	if legacy {
		minLen = legacyHeaderLen
	}
	for pos := from; pos+minLen <= fr.size; {
		w, err := fr.window(pos, frameReadWindow)
		if err != nil {
			return 0, err
		}
		last := len(w) - int(minLen) // the last index a whole header fits after
		if legacy {
			for i := 0; i <= last; i++ {
				if bytes.Equal(w[i:i+4], frameMagic) {
					return pos + int64(i), nil
				}
				size := int64(binary.BigEndian.Uint32(w[i : i+4]))
				if size > 0 && size <= maxRecordLen && pos+int64(i)+legacyHeaderLen+size <= fr.size {
					return pos + int64(i), nil
				}
			}
		} else if i := bytes.Index(w[:last+4], frameMagic); i >= 0 {
			return pos + int64(i), nil
		}
		pos += int64(last) + 1
	}
	return fr.size, nil
}

// window returns the n bytes of the file at off, or fewer at its end.
func (fr *frameReader) window(off, n int64) ([]byte, error) {
	if n > fr.size-off {
		n = fr.size - off
	}
	if n <= 0 {
		return nil, nil
	}
	if off >= fr.bufOff && off+n <= fr.bufOff+int64(len(fr.buf)) {
		return fr.buf[off-fr.bufOff : off-fr.bufOff+n], nil
	}
	want := max(n, frameReadWindow)
	if want > fr.size-off {
		want = fr.size - off
	}
	if int64(cap(fr.buf)) < want {
		fr.buf = make([]byte, want)
	}
	fr.buf = fr.buf[:want]
	got, err := fr.r.ReadAt(fr.buf, off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(got) == want) {
		fr.buf, fr.bufOff = fr.buf[:0], 0
		return nil, fmt.Errorf("read at %d: %w", off, err)
	}
	fr.bufOff = off
	return fr.buf[:n], nil
}
