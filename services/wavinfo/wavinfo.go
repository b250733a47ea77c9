// Package wavinfo reads, for the speech stand-ins, what a speech backend's
// decoder takes from a WAV stream: format, channels, sample rate, sample
// width and where the samples start. It decodes with go-audio's wav and
// riff packages, not with the gateway's own parser, so that a test through
// the gateway compares two independent readings of the same header and a
// pricing mistake in one of them shows as a difference.
//
// A duration follows from the frames, as decoders count them: data bytes
// over channels × bytes per sample, over the sample rate; never from the
// header's byte rate or block align.
package wavinfo

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/go-audio/riff"
)

// Errors of Read, each wrapping the detail: ErrNotWAV and ErrUnsupported
// are audio a speech backend does not decode (415), ErrMalformed a WAV
// whose header does not hold together (422). An error of the stream
// itself is returned as it is.
var (
	ErrNotWAV      = errors.New("not a RIFF/WAVE file")
	ErrUnsupported = errors.New("unsupported WAV encoding")
	ErrMalformed   = errors.New("malformed WAV header")
)

// Format codes of the fmt chunk that are decoded.
const (
	FormatPCM        = 0x0001
	FormatFloat      = 0x0003
	FormatALaw       = 0x0006
	FormatMuLaw      = 0x0007
	FormatExtensible = 0xFFFE
)

// MaxHeaderBytes bounds what may precede the first sample (the fmt chunk
// and any LIST, bext or fact chunks).
const MaxHeaderBytes = 1 << 20

// Info is what a WAV header declares about its samples.
type Info struct {
	Format     uint16 // as the fmt chunk gives it: 0xFFFE for an extensible header
	Channels   uint16
	SampleRate uint32
	BitDepth   uint16
	// DataSize is the data chunk's size as declared (see Open).
	DataSize uint32
	// DataOffset is how many bytes precede the first sample.
	DataOffset int64
}

// FrameBytes is the size of one frame: channels × bytes per sample.
func (i Info) FrameBytes() int64 {
	return int64(i.Channels) * int64(i.BitDepth/8)
}

// Open reports whether the data size is a placeholder that writers to a
// pipe leave: 0, 0xFFFFFFFF or 0x7FFFFFFF. The samples then run to the end.
func (i Info) Open() bool {
	return i.DataSize == 0 || i.DataSize == 0xFFFFFFFF || i.DataSize == 0x7FFFFFFF
}

// DataBytes is how many of the n bytes that followed the header a decoder
// plays: all of them when the size is open, else no more than declared (a
// LIST chunk may follow the data).
func (i Info) DataBytes(n int64) int64 {
	if !i.Open() && int64(i.DataSize) < n {
		return int64(i.DataSize)
	}
	return max(n, 0)
}

// Duration is how long n data bytes play: whole frames over the rate.
func (i Info) Duration(n int64) time.Duration {
	fb, rate := i.FrameBytes(), int64(i.SampleRate)
	if fb == 0 || rate == 0 || n <= 0 {
		return 0
	}
	frames := n / fb
	return time.Duration(frames/rate)*time.Second + time.Duration(frames%rate)*time.Second/time.Duration(rate)
}

// Read decodes the header at the start of r and returns it with a reader of
// what follows it: the samples, and any chunks after them.
//
// It walks the chunks with go-audio's riff parser and decodes the fmt chunk
// with it, as go-audio's wav decoder does, but not with that decoder: it
// allocates whatever size a LIST chunk or one of its entries declares (a
// 24-byte upload makes it allocate 4 GiB), wants to seek, and rounds an odd
// data size up to the pad byte.
func Read(r io.Reader) (Info, io.Reader, error) {
	hr := &headerReader{r: r}
	p := riff.New(hr)
	if err := p.ParseHeaders(); err != nil || p.ID != riff.RiffID || p.Format != riff.WavFormatID {
		if hr.err != nil {
			return Info{}, nil, hr.err
		}
		return Info{}, nil, ErrNotWAV
	}
	haveFmt := false
	for {
		id, size, err := p.IDnSize()
		if hr.err != nil {
			return Info{}, nil, hr.err
		}
		if err != nil {
			return Info{}, nil, fmt.Errorf("%w: no data chunk", ErrMalformed)
		}
		padded := int64(size) + int64(size%2)
		switch id {
		case riff.FmtID:
			if haveFmt {
				return Info{}, nil, fmt.Errorf("%w: two fmt chunks", ErrMalformed)
			}
			if padded > maxFmtBytes {
				return Info{}, nil, fmt.Errorf("%w: fmt chunk of %d bytes", ErrMalformed, size)
			}
			ch := &riff.Chunk{ID: id, Size: int(padded), R: hr}
			err := ch.DecodeWavHeader(p)
			if hr.err != nil {
				return Info{}, nil, hr.err
			}
			if err != nil || !ch.IsFullyRead() || hr.eof {
				return Info{}, nil, fmt.Errorf("%w: truncated fmt chunk", ErrMalformed)
			}
			haveFmt = true
		case riff.DataFormatID:
			if !haveFmt {
				return Info{}, nil, fmt.Errorf("%w: data chunk before the fmt chunk", ErrMalformed)
			}
			info := Info{
				Format: p.WavAudioFormat, Channels: p.NumChannels, SampleRate: p.SampleRate, BitDepth: p.BitsPerSample,
				DataSize: size, DataOffset: hr.n,
			}
			if err := info.check(); err != nil {
				return Info{}, nil, err
			}
			return info, r, nil
		default:
			if _, err := io.CopyN(io.Discard, hr, padded); err != nil {
				if hr.err != nil {
					return Info{}, nil, hr.err
				}
				return Info{}, nil, fmt.Errorf("%w: truncated %q chunk", ErrMalformed, id[:])
			}
		}
	}
}

// check refuses what a decoder does not play, from the fields go-audio
// decodes. An extensible header's sub-format is not among them (go-audio
// skips the extension), so its sample width alone is checked; the header's
// block align and byte rate are not used.
func (i Info) check() error {
	var bits []uint16
	switch i.Format {
	case FormatPCM:
		bits = []uint16{8, 16, 24, 32}
	case FormatFloat:
		bits = []uint16{32, 64}
	case FormatALaw, FormatMuLaw:
		bits = []uint16{8}
	case FormatExtensible:
		bits = []uint16{8, 16, 24, 32, 64}
	default:
		return fmt.Errorf("%w: format 0x%04x (decoded: PCM, IEEE float, A-law, µ-law, extensible)", ErrUnsupported, i.Format)
	}
	var errs []error
	if i.Channels == 0 {
		errs = append(errs, errors.New("no channels"))
	}
	if i.SampleRate == 0 {
		errs = append(errs, errors.New("sample rate 0"))
	}
	ok := false
	for _, b := range bits {
		ok = ok || i.BitDepth == b
	}
	if !ok {
		errs = append(errs, fmt.Errorf("%d bits per sample for format 0x%04x (want one of %v)", i.BitDepth, i.Format, bits))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrMalformed, errors.Join(errs...))
	}
	return nil
}

var errHeaderTooLong = fmt.Errorf("%w: more than %d bytes before the first sample", ErrMalformed, MaxHeaderBytes)

// maxFmtBytes bounds a fmt chunk: 16 bytes, or 40 for an extensible one.
const maxFmtBytes = 1024

// headerReader reads the header from r: it counts, stops at MaxHeaderBytes,
// and keeps a failure of r that go-audio would turn into a string.
type headerReader struct {
	r   io.Reader
	n   int64 // bytes read
	eof bool  // r ended
	err error // a failure of r other than its end, or errHeaderTooLong
}

func (h *headerReader) Read(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	if h.n >= MaxHeaderBytes {
		h.err = errHeaderTooLong
		return 0, h.err
	}
	p = p[:min(int64(len(p)), MaxHeaderBytes-h.n)]
	n, err := h.r.Read(p)
	h.n += int64(n)
	switch {
	case errors.Is(err, io.EOF):
		h.eof = true
	case err != nil:
		h.err = err
	}
	return n, err
}
