package wav

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// chunk builds one RIFF chunk with the pad byte an odd size needs.
func chunk(id string, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString(id)
	_ = binary.Write(&b, binary.LittleEndian, uint32(len(body)))
	b.Write(body)
	if len(body)%2 == 1 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func fmtBody(format, channels uint16, rate, byteRate uint32, align, bits uint16) []byte {
	var b bytes.Buffer
	for _, v := range []any{format, channels, rate, byteRate, align, bits} {
		_ = binary.Write(&b, binary.LittleEndian, v)
	}
	return b.Bytes()
}

func riff(chunks ...[]byte) []byte {
	var body bytes.Buffer
	body.WriteString("WAVE")
	for _, c := range chunks {
		body.Write(c)
	}
	var b bytes.Buffer
	b.WriteString("RIFF")
	_ = binary.Write(&b, binary.LittleEndian, uint32(body.Len()))
	b.Write(body.Bytes())
	return b.Bytes()
}

func dataHeader(size uint32) []byte {
	var b bytes.Buffer
	b.WriteString("data")
	_ = binary.Write(&b, binary.LittleEndian, size)
	return b.Bytes()
}

func canonical(t testing.TB, channels uint16, rate uint32, bits uint16, dataSize uint32) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Encode(&b, channels, rate, bits, dataSize); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestParseHeader(t *testing.T) {
	pcm16k := fmtBody(1, 1, 16000, 32000, 2, 16)
	tests := []struct {
		name      string
		input     []byte
		want      time.Duration
		wantRate  uint32
		withError func(*testing.T, error)
	}{
		{name: "canonical 16 kHz mono, 1 s", input: canonical(t, 1, 16000, 16, 32000), want: time.Second, wantRate: 16000},
		{name: "44.1 kHz stereo, 2.5 s", input: canonical(t, 2, 44100, 16, 441000), want: 2500 * time.Millisecond, wantRate: 44100},
		{name: "8-bit 8 kHz, 250 ms", input: canonical(t, 1, 8000, 8, 2000), want: 250 * time.Millisecond, wantRate: 8000},
		{name: "empty data", input: canonical(t, 1, 16000, 16, 0), want: 0, wantRate: 16000},
		{name: "LIST and odd-sized chunk before data", input: append(riff(chunk("fmt ", pcm16k), chunk("LIST", []byte("INFOabc")), chunk("junk", []byte{1, 2, 3})), dataHeader(64000)...), want: 2 * time.Second, wantRate: 16000},
		{name: "extended fmt chunk (18 bytes)", input: append(riff(chunk("fmt ", append(pcm16k, 0, 0))), dataHeader(16000)...), want: 500 * time.Millisecond, wantRate: 16000},
		{name: "IEEE float 48 kHz mono", input: append(riff(chunk("fmt ", fmtBody(3, 1, 48000, 192000, 4, 32))), dataHeader(96000)...), want: 500 * time.Millisecond, wantRate: 48000},
		{name: "empty input", input: nil, withError: isErr(ErrNotWAV)},
		{name: "too short", input: []byte("RIFF"), withError: isErr(ErrNotWAV)},
		{name: "mp3 (ID3)", input: []byte("ID3\x04\x00\x00\x00\x00\x00\x00 some mp3 frames"), withError: isErr(ErrNotWAV)},
		{name: "RIFF but AVI", input: []byte("RIFF\x00\x00\x00\x00AVI LIST"), withError: isErr(ErrNotWAV)},
		{name: "text file", input: []byte(strings.Repeat("hello world ", 10)), withError: isErr(ErrNotWAV)},
		{name: "no chunks", input: riff(), withError: isErr(ErrMalformed)},
		{name: "data before fmt", input: append(riff(), dataHeader(10)...), withError: isErr(ErrMalformed)},
		{name: "fmt chunk too small", input: append(riff(chunk("fmt ", []byte{1, 0, 1, 0})), dataHeader(10)...), withError: isErr(ErrMalformed)},
		// Decoders ignore the byte rate: the frames count.
		{name: "PCM with a lying byte rate", input: append(riff(chunk("fmt ", fmtBody(1, 1, 16000, 1_000_000, 2, 16))), dataHeader(32000)...), want: time.Second, wantRate: 16000},
		{name: "float with byte rate 0xFFFFFFFF, 3 min", input: append(riff(chunk("fmt ", fmtBody(3, 1, 16000, 0xFFFFFFFF, 4, 32))), dataHeader(180*64000)...), want: 3 * time.Minute, wantRate: 16000},
		{name: "µ-law 8 kHz, zero byte rate", input: append(riff(chunk("fmt ", fmtBody(7, 1, 8000, 0, 1, 8))), dataHeader(8000)...), want: time.Second, wantRate: 8000},
		{name: "extensible float stereo", input: append(riff(chunk("fmt ", extensible(fmtBody(0xFFFE, 2, 48000, 1, 8, 32), 3))), dataHeader(384000)...), want: time.Second, wantRate: 48000},
		{name: "float with 16-bit samples", input: append(riff(chunk("fmt ", fmtBody(3, 1, 16000, 0, 2, 16))), dataHeader(10)...), withError: isErr(ErrMalformed)},
		{name: "block align that is not the frame", input: append(riff(chunk("fmt ", fmtBody(1, 2, 16000, 64000, 1, 16))), dataHeader(10)...), withError: isErr(ErrMalformed)},
		{name: "IMA ADPCM", input: append(riff(chunk("fmt ", fmtBody(0x11, 1, 16000, 4055, 256, 4))), dataHeader(10)...), withError: isErr(ErrUnsupported)},
		{name: "extensible MP3", input: append(riff(chunk("fmt ", extensible(fmtBody(0xFFFE, 1, 16000, 1, 1, 8), 0x55))), dataHeader(10)...), withError: isErr(ErrUnsupported)},
		{name: "truncated fmt chunk", input: riff(chunk("fmt ", pcm16k))[:20+8], withError: isErr(ErrMalformed)},
		{name: "truncated skipped chunk", input: append(riff(chunk("fmt ", pcm16k)), []byte("LIST\xff\xff\x00\x00abc")...), withError: isErr(ErrMalformed)},
		{name: "huge skipped chunk", input: append(riff(chunk("fmt ", pcm16k)), []byte("LIST\xff\xff\xff\x7f")...), withError: isErr(ErrMalformed)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHeader(bytes.NewReader(tt.input))
			if tt.withError != nil {
				tt.withError(t, err)
				return
			}
			if err != nil {
				t.Fatalf("ParseHeader: %v", err)
			}
			if got := h.Duration(); got != tt.want {
				t.Errorf("Duration = %v, want %v", got, tt.want)
			}
			if h.SampleRate != tt.wantRate {
				t.Errorf("SampleRate = %d, want %d", h.SampleRate, tt.wantRate)
			}
			if h.DataOffset != int64(len(tt.input)) {
				t.Errorf("DataOffset = %d, want %d (the end of the header)", h.DataOffset, len(tt.input))
			}
		})
	}
}

func isErr(target error) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Fatalf("err = %v, want %v", err, target)
		}
	}
}

// ParseHeader must stop at the first sample: the rest of a stream stays
// unread for the caller.
func TestParseHeaderLeavesSamplesUnread(t *testing.T) {
	samples := bytes.Repeat([]byte{0x7f, 0x00}, 100)
	in := append(canonical(t, 1, 16000, 16, uint32(len(samples))), samples...)
	r := bytes.NewReader(in)
	if _, err := ParseHeader(r); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if !bytes.Equal(rest, samples) {
		t.Fatalf("left %d bytes, want the %d sample bytes", len(rest), len(samples))
	}
}

func TestDuration(t *testing.T) {
	d, err := Duration(bytes.NewReader(canonical(t, 1, 16000, 16, 32000*90)))
	if err != nil {
		t.Fatal(err)
	}
	if d != 90*time.Second {
		t.Fatalf("Duration = %v, want 1m30s", d)
	}
}

// extensible appends WAVE_FORMAT_EXTENSIBLE's extension with the sub-format.
func extensible(base []byte, sub uint16) []byte {
	var b bytes.Buffer
	b.Write(base)
	_ = binary.Write(&b, binary.LittleEndian, uint16(22))
	_ = binary.Write(&b, binary.LittleEndian, binary.LittleEndian.Uint16(base[14:16]))
	_ = binary.Write(&b, binary.LittleEndian, uint32(0))
	_ = binary.Write(&b, binary.LittleEndian, sub)
	b.Write([]byte{0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71})
	return b.Bytes()
}

func TestBytesDuration(t *testing.T) {
	tests := []struct {
		n     int64
		rate  uint32
		align uint16
		want  time.Duration
	}{
		{0, 16000, 2, 0},
		{32000, 0, 2, 0},
		{16000, 16000, 2, 500 * time.Millisecond},
		{1 << 32, 1, 1, (1 << 32) * time.Second},
		{1, 3, 1, 333333333},
		{3, 1, 4, 0}, // less than a frame
	}
	for _, tt := range tests {
		h := Header{SampleRate: tt.rate, BlockAlign: tt.align}
		if got := h.BytesDuration(tt.n); got != tt.want {
			t.Errorf("BytesDuration(%d) at %d Hz, %d-byte frames = %v, want %v", tt.n, tt.rate, tt.align, got, tt.want)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(canonical(f, 1, 16000, 16, 32000))
	f.Add(append(riff(chunk("fmt ", fmtBody(3, 2, 48000, 384000, 8, 32)), chunk("LIST", []byte("INFO"))), dataHeader(7)...))
	f.Add([]byte("RIFF\x00\x00\x00\x00WAVE"))
	f.Add([]byte("ID3"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ParseHeader(bytes.NewReader(in))
		if h.DataOffset < 0 || h.DataOffset > int64(len(in)) {
			t.Fatalf("DataOffset %d outside the %d-byte input", h.DataOffset, len(in))
		}
		if err != nil {
			if !errors.Is(err, ErrNotWAV) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if h.BlockAlign == 0 || h.Channels == 0 || h.SampleRate == 0 {
			t.Fatalf("accepted a header with zero frame size, rate or channels: %+v", h)
		}
		if d := h.Duration(); d < 0 {
			t.Fatalf("negative duration %v", d)
		}
		if h.AudioFormat == 1 {
			// A PCM header survives a round trip through Encode.
			var b bytes.Buffer
			if err := Encode(&b, h.Channels, h.SampleRate, h.BitsPerSample, h.DataSize); err != nil {
				return
			}
			h2, err := ParseHeader(&b)
			if err != nil {
				t.Fatalf("re-encoded header does not parse: %v", err)
			}
			if h2.Duration() != h.Duration() {
				t.Fatalf("round trip changed duration %v -> %v", h.Duration(), h2.Duration())
			}
		}
	})
}
