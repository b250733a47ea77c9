// Package wav reads the header of a RIFF/WAVE file for the stand-ins: its
// format chunk and the size of its data chunk. Durations are computed as
// real decoders compute them, from the frames: bytes / block align / sample
// rate, whatever the header's byte rate says. It never reads the samples,
// so it works on a stream of any length. The STT stand-in uses it to answer
// durationSeconds; the gateway prices uploads with a parser of its own.
package wav

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Errors returned by ParseHeader. A caller tells "this is not a WAV file at
// all" (ErrNotWAV, e.g. an MP3 upload) from "this claims to be WAV but its
// header is broken" (ErrMalformed); both wrap the detail.
var (
	ErrNotWAV    = errors.New("wav: not a RIFF/WAVE file")
	ErrMalformed = errors.New("wav: malformed header")
	// ErrUnsupported: a WAV in an encoding the service does not decode.
	ErrUnsupported = errors.New("wav: unsupported encoding")
)

// maxChunksBeforeData bounds how many chunks (LIST, fact, bext, ...) are
// skipped while looking for the data chunk, so a hostile header cannot make
// the parser loop for long.
const maxChunksBeforeData = 64

// maxSkippedBytes bounds how many bytes of non-data chunks are skipped.
const maxSkippedBytes = 16 << 20

// Header is what a WAV file declares about itself.
type Header struct {
	AudioFormat   uint16 // 1 = PCM, 3 = IEEE float, 6 = A-law, 7 = µ-law, 0xFFFE = extensible
	Channels      uint16
	SampleRate    uint32 // frames per second
	ByteRate      uint32 // bytes per second, as declared; decoders ignore it
	BlockAlign    uint16 // bytes per frame
	BitsPerSample uint16
	// DataSize is the size of the data chunk as declared by the header. It is
	// not checked against the bytes that follow (a stream has no end yet).
	DataSize uint32
	// DataOffset is the byte offset of the first sample, i.e. how many bytes
	// ParseHeader consumed from the reader.
	DataOffset int64
}

// Duration is how long the declared data plays.
func (h Header) Duration() time.Duration {
	return h.BytesDuration(int64(h.DataSize))
}

// BytesDuration is how long n bytes of samples play: whole frames of
// BlockAlign bytes at SampleRate frames per second; 0 for a header without
// either.
func (h Header) BytesDuration(n int64) time.Duration {
	if h.BlockAlign == 0 || h.SampleRate == 0 || n <= 0 {
		return 0
	}
	frames := n / int64(h.BlockAlign)
	rate := int64(h.SampleRate)
	return time.Duration(frames/rate)*time.Second + time.Duration(frames%rate)*time.Second/time.Duration(rate)
}

// Duration reads a WAV header from r and returns the duration it declares.
// It reads up to the first sample and no further.
func Duration(r io.Reader) (time.Duration, error) {
	h, err := ParseHeader(r)
	if err != nil {
		return 0, err
	}
	return h.Duration(), nil
}

// ParseHeader reads the RIFF/WAVE header from r up to the start of the data
// chunk and returns it. Chunks other than "fmt " and "data" are skipped. The
// reader is left positioned at the first sample.
func ParseHeader(r io.Reader) (Header, error) {
	var h Header
	var riff [12]byte
	n, err := io.ReadFull(r, riff[:])
	h.DataOffset += int64(n)
	if err != nil {
		if n == 0 {
			return h, fmt.Errorf("%w: empty input", ErrNotWAV)
		}
		return h, fmt.Errorf("%w: %d bytes, too short for a RIFF header", ErrNotWAV, n)
	}
	if string(riff[0:4]) != "RIFF" || string(riff[8:12]) != "WAVE" {
		return h, ErrNotWAV
	}

	haveFmt := false
	var skipped int64
	for i := 0; i < maxChunksBeforeData; i++ {
		var ch [8]byte
		n, err := io.ReadFull(r, ch[:])
		h.DataOffset += int64(n)
		if err != nil {
			return h, fmt.Errorf("%w: truncated before the data chunk", ErrMalformed)
		}
		id := string(ch[0:4])
		size := binary.LittleEndian.Uint32(ch[4:8])
		switch id {
		case "fmt ":
			if size < 16 || size > 1024 {
				return h, fmt.Errorf("%w: fmt chunk of %d bytes", ErrMalformed, size)
			}
			buf := make([]byte, size+size%2)
			n, err := io.ReadFull(r, buf)
			h.DataOffset += int64(n)
			if err != nil {
				return h, fmt.Errorf("%w: truncated fmt chunk", ErrMalformed)
			}
			h.AudioFormat = binary.LittleEndian.Uint16(buf[0:2])
			h.Channels = binary.LittleEndian.Uint16(buf[2:4])
			h.SampleRate = binary.LittleEndian.Uint32(buf[4:8])
			h.ByteRate = binary.LittleEndian.Uint32(buf[8:12])
			h.BlockAlign = binary.LittleEndian.Uint16(buf[12:14])
			h.BitsPerSample = binary.LittleEndian.Uint16(buf[14:16])
			if err := h.validateFormat(buf[16:size]); err != nil {
				return h, err
			}
			haveFmt = true
		case "data":
			if !haveFmt {
				return h, fmt.Errorf("%w: data chunk before fmt chunk", ErrMalformed)
			}
			h.DataSize = size
			return h, nil
		default:
			pad := int64(size) + int64(size%2)
			skipped += pad
			if skipped > maxSkippedBytes {
				return h, fmt.Errorf("%w: more than %d bytes of chunks before the data chunk", ErrMalformed, maxSkippedBytes)
			}
			n, err := io.CopyN(io.Discard, r, pad)
			h.DataOffset += n
			if err != nil {
				return h, fmt.Errorf("%w: truncated %q chunk", ErrMalformed, id)
			}
		}
	}
	return h, fmt.Errorf("%w: no data chunk within the first %d chunks", ErrMalformed, maxChunksBeforeData)
}

func (h *Header) validateFormat(ext []byte) error {
	format := h.AudioFormat
	if format == 0xFFFE {
		// WAVE_FORMAT_EXTENSIBLE: the real encoding is the sub-format GUID's
		// first two bytes.
		if len(ext) < 24 {
			return fmt.Errorf("%w: extensible format without its extension", ErrMalformed)
		}
		format = binary.LittleEndian.Uint16(ext[8:10])
	}
	var bits []uint16
	switch format {
	case 1:
		bits = []uint16{8, 16, 24, 32}
	case 3:
		bits = []uint16{32, 64}
	case 6, 7:
		bits = []uint16{8}
	default:
		return fmt.Errorf("%w: format 0x%04x", ErrUnsupported, format)
	}
	var errs []error
	if h.Channels == 0 {
		errs = append(errs, errors.New("zero channels"))
	}
	if h.SampleRate == 0 {
		errs = append(errs, errors.New("zero sample rate"))
	}
	if !slices.Contains(bits, h.BitsPerSample) {
		errs = append(errs, fmt.Errorf("%d bits per sample for format 0x%04x", h.BitsPerSample, format))
	}
	// A decoder reads frames of channels × sample bytes.
	if frame := uint64(h.Channels) * uint64(h.BitsPerSample/8); uint64(h.BlockAlign) != frame || frame == 0 {
		errs = append(errs, fmt.Errorf("block align %d, want %d", h.BlockAlign, frame))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrMalformed, errors.Join(errs...))
	}
	return nil
}

// Encode writes a canonical 44-byte PCM WAV header for dataSize bytes of
// audio. It is the inverse of ParseHeader for PCM and is used by the TTS
// stand-in and by tests that need a WAV file.
func Encode(w io.Writer, channels uint16, sampleRate uint32, bitsPerSample uint16, dataSize uint32) error {
	if dataSize > math.MaxUint32-36 {
		return fmt.Errorf("wav header: data size %d too large", dataSize)
	}
	blockAlign := channels * ((bitsPerSample + 7) / 8)
	byteRate := sampleRate * uint32(blockAlign)
	var b [44]byte
	copy(b[0:4], "RIFF")
	binary.LittleEndian.PutUint32(b[4:8], 36+dataSize)
	copy(b[8:12], "WAVE")
	copy(b[12:16], "fmt ")
	binary.LittleEndian.PutUint32(b[16:20], 16)
	binary.LittleEndian.PutUint16(b[20:22], 1)
	binary.LittleEndian.PutUint16(b[22:24], channels)
	binary.LittleEndian.PutUint32(b[24:28], sampleRate)
	binary.LittleEndian.PutUint32(b[28:32], byteRate)
	binary.LittleEndian.PutUint16(b[32:34], blockAlign)
	binary.LittleEndian.PutUint16(b[34:36], bitsPerSample)
	copy(b[36:40], "data")
	binary.LittleEndian.PutUint32(b[40:44], dataSize)
	if _, err := w.Write(b[:]); err != nil {
		return fmt.Errorf("write wav header: %w", err)
	}
	return nil
}
