// Package wav reads and writes the header of a RIFF/WAVE file: the format
// and data chunks of the audio the speech-to-text route takes. The gateway
// prices an upload with it before the upload is proxied. The stand-in
// backends do not decode with it: they read headers with another library,
// so that a test through them compares two readings. A duration
// follows from the frame size and the sample rate, as real decoders compute
// it, never from the header's byte rate, which a client can set to anything.
// It reads no samples, so it works on a stream of any length.
package wav

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// Errors of ParseHeader. ErrNotWAV (e.g. an MP3 upload) and ErrUnsupported
// mean the input is not audio whose duration follows from its length (415);
// ErrMalformed that it claims to be a WAV whose header does not hold
// together (422). Each wraps the detail.
var (
	ErrNotWAV      = errors.New("not a RIFF/WAVE file")
	ErrUnsupported = errors.New("WAV encoding without a fixed frame size")
	ErrMalformed   = errors.New("malformed WAV header")
)

// Format codes accepted: each has a fixed frame size, so the duration of n
// bytes is n / (sample rate × block align).
const (
	FormatPCM        = 0x0001
	FormatFloat      = 0x0003
	FormatALaw       = 0x0006
	FormatMuLaw      = 0x0007
	FormatExtensible = 0xFFFE
)

// Limits of a header that is accepted.
const (
	MaxChannels   = 32
	MaxSampleRate = 768_000
	// maxChunksBeforeData and maxSkippedBytes bound the chunks (LIST,
	// fact, bext, …) skipped on the way to the data chunk.
	maxChunksBeforeData = 64
	maxSkippedBytes     = 16 << 10
)

// Header is what a WAV file declares about its samples.
type Header struct {
	Format        uint16 // the effective format: an extensible header's sub-format
	Channels      uint16
	SampleRate    uint32 // frames per second
	ByteRate      uint32 // bytes per second, as declared; never used for a duration
	BlockAlign    uint16 // bytes per frame
	BitsPerSample uint16
	// DataSize is the data chunk's declared size (see Open).
	DataSize uint32
	// DataOffset is how many bytes precede the first sample.
	DataOffset int64
}

// Open reports whether the data size is left open, as writers to a pipe
// leave it: 0, 0xFFFFFFFF, or the 0x7FFFFFFF placeholder of streaming
// writers. The audio then runs to the end of the file.
func (h Header) Open() bool {
	return h.DataSize == 0 || h.DataSize == 0xFFFFFFFF || h.DataSize == 0x7FFFFFFF
}

// Seconds is how long n bytes of samples play, in whole seconds rounded up:
// a partial frame counts as a frame, and any audio at all as a second.
func (h Header) Seconds(n int64) int64 {
	if n <= 0 || h.BlockAlign == 0 || h.SampleRate == 0 {
		return 0
	}
	frames := (n + int64(h.BlockAlign) - 1) / int64(h.BlockAlign)
	return (frames + int64(h.SampleRate) - 1) / int64(h.SampleRate)
}

// Duration is how long the declared data plays.
func (h Header) Duration() time.Duration {
	return h.BytesDuration(int64(h.DataSize))
}

// BytesDuration is how long n bytes of samples play, as a decoder plays
// them: whole frames only; 0 for a header without a frame size or rate.
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

// ParseHeader reads a RIFF/WAVE header from r up to the first sample, where
// it leaves r. Chunks other than "fmt " and "data" are skipped, within
// bounds, so a hostile header cannot make it read for long.
func ParseHeader(r io.Reader) (Header, error) {
	var h Header
	read := func(b []byte) error {
		n, err := io.ReadFull(r, b)
		h.DataOffset += int64(n)
		return err
	}
	var riff [12]byte
	if err := read(riff[:]); err != nil {
		return h, fmt.Errorf("%w: %d bytes, too short for a RIFF header", ErrNotWAV, h.DataOffset)
	}
	if string(riff[0:4]) != "RIFF" || string(riff[8:12]) != "WAVE" {
		return h, ErrNotWAV
	}
	haveFmt := false
	var skipped int64
	for range maxChunksBeforeData {
		var ch [8]byte
		if err := read(ch[:]); err != nil {
			return h, fmt.Errorf("%w: truncated before the data chunk", ErrMalformed)
		}
		id, size := string(ch[0:4]), binary.LittleEndian.Uint32(ch[4:8])
		switch id {
		case "fmt ":
			if haveFmt {
				return h, fmt.Errorf("%w: two fmt chunks", ErrMalformed)
			}
			if size < 16 || size > 1024 {
				return h, fmt.Errorf("%w: fmt chunk of %d bytes", ErrMalformed, size)
			}
			buf := make([]byte, size+size%2)
			if err := read(buf); err != nil {
				return h, fmt.Errorf("%w: truncated fmt chunk", ErrMalformed)
			}
			if err := h.readFormat(buf[:size]); err != nil {
				return h, err
			}
			haveFmt = true
		case "data":
			if !haveFmt {
				return h, fmt.Errorf("%w: data chunk before the fmt chunk", ErrMalformed)
			}
			h.DataSize = size
			return h, nil
		default:
			pad := int64(size) + int64(size%2)
			if skipped += pad; skipped > maxSkippedBytes {
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

// extensibleSuffix is the GUID tail of every KSDATAFORMAT_SUBTYPE whose first
// two bytes are a format code.
var extensibleSuffix = [14]byte{0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71}

func (h *Header) readFormat(b []byte) error {
	h.Format = binary.LittleEndian.Uint16(b[0:2])
	h.Channels = binary.LittleEndian.Uint16(b[2:4])
	h.SampleRate = binary.LittleEndian.Uint32(b[4:8])
	h.ByteRate = binary.LittleEndian.Uint32(b[8:12]) // a decoder ignores it, and so does Seconds
	h.BlockAlign = binary.LittleEndian.Uint16(b[12:14])
	h.BitsPerSample = binary.LittleEndian.Uint16(b[14:16])
	if h.Format == FormatExtensible {
		if len(b) < 40 || binary.LittleEndian.Uint16(b[16:18]) < 22 {
			return fmt.Errorf("%w: extensible format without its 22-byte extension", ErrMalformed)
		}
		if valid := binary.LittleEndian.Uint16(b[18:20]); valid > h.BitsPerSample {
			return fmt.Errorf("%w: %d valid bits in %d-bit samples", ErrMalformed, valid, h.BitsPerSample)
		}
		if [14]byte(b[26:40]) != extensibleSuffix {
			return fmt.Errorf("%w: extensible sub-format %x", ErrUnsupported, b[24:40])
		}
		h.Format = binary.LittleEndian.Uint16(b[24:26])
		if h.Format == FormatExtensible {
			return fmt.Errorf("%w: extensible sub-format %x", ErrUnsupported, b[24:40])
		}
	}
	var bits []uint16
	switch h.Format {
	case FormatPCM:
		bits = []uint16{8, 16, 24, 32}
	case FormatFloat:
		bits = []uint16{32, 64}
	case FormatALaw, FormatMuLaw:
		bits = []uint16{8}
	default:
		return fmt.Errorf("%w: format 0x%04x (accepted: PCM, IEEE float, A-law, µ-law, or extensible of those)", ErrUnsupported, h.Format)
	}
	var errs []error
	if h.Channels == 0 || h.Channels > MaxChannels {
		errs = append(errs, fmt.Errorf("%d channels (1 to %d)", h.Channels, MaxChannels))
	}
	if h.SampleRate == 0 || h.SampleRate > MaxSampleRate {
		errs = append(errs, fmt.Errorf("sample rate %d (1 to %d)", h.SampleRate, MaxSampleRate))
	}
	okBits := false
	for _, b := range bits {
		okBits = okBits || h.BitsPerSample == b
	}
	if !okBits {
		errs = append(errs, fmt.Errorf("%d bits per sample for format 0x%04x (want one of %v)", h.BitsPerSample, h.Format, bits))
	}
	if want := uint32(h.Channels) * uint32(h.BitsPerSample/8); okBits && uint32(h.BlockAlign) != want {
		errs = append(errs, fmt.Errorf("block align %d, want channels × bytes per sample = %d", h.BlockAlign, want))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrMalformed, errors.Join(errs...))
	}
	return nil
}

// Encode writes a canonical 44-byte PCM WAV header for dataSize bytes of
// audio: the inverse of ParseHeader for PCM, for tests that need a WAV
// file.
func Encode(w io.Writer, channels uint16, sampleRate uint32, bitsPerSample uint16, dataSize uint32) error {
	if dataSize > math.MaxUint32-36 {
		return fmt.Errorf("wav header: data size %d too large", dataSize)
	}
	blockAlign := channels * ((bitsPerSample + 7) / 8)
	var b [44]byte
	copy(b[0:4], "RIFF")
	binary.LittleEndian.PutUint32(b[4:8], 36+dataSize)
	copy(b[8:12], "WAVE")
	copy(b[12:16], "fmt ")
	binary.LittleEndian.PutUint32(b[16:20], 16)
	binary.LittleEndian.PutUint16(b[20:22], FormatPCM)
	binary.LittleEndian.PutUint16(b[22:24], channels)
	binary.LittleEndian.PutUint32(b[24:28], sampleRate)
	binary.LittleEndian.PutUint32(b[28:32], sampleRate*uint32(blockAlign))
	binary.LittleEndian.PutUint16(b[32:34], blockAlign)
	binary.LittleEndian.PutUint16(b[34:36], bitsPerSample)
	copy(b[36:40], "data")
	binary.LittleEndian.PutUint32(b[40:44], dataSize)
	if _, err := w.Write(b[:]); err != nil {
		return fmt.Errorf("write wav header: %w", err)
	}
	return nil
}
