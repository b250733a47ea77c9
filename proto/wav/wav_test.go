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
		{name: "extensible float stereo", input: append(riff(chunk("fmt ", append(fmtBody(0xFFFE, 2, 48000, 1, 8, 32), extension(32, 3, extensibleSuffix[:])...))), dataHeader(384000)...), want: time.Second, wantRate: 48000},
		{name: "float with 16-bit samples", input: append(riff(chunk("fmt ", fmtBody(3, 1, 16000, 0, 2, 16))), dataHeader(10)...), withError: isErr(ErrMalformed)},
		{name: "block align that is not the frame", input: append(riff(chunk("fmt ", fmtBody(1, 2, 16000, 64000, 1, 16))), dataHeader(10)...), withError: isErr(ErrMalformed)},
		{name: "IMA ADPCM", input: append(riff(chunk("fmt ", fmtBody(0x11, 1, 16000, 4055, 256, 4))), dataHeader(10)...), withError: isErr(ErrUnsupported)},
		{name: "extensible MP3", input: append(riff(chunk("fmt ", append(fmtBody(0xFFFE, 1, 16000, 1, 1, 8), extension(8, 0x55, extensibleSuffix[:])...))), dataHeader(10)...), withError: isErr(ErrUnsupported)},
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

// FuzzParseHeader: any input is a header or a classified error; a header
// accepted has a frame size that prices every byte, and a PCM one survives
// a round trip through Encode.
func FuzzParseHeader(f *testing.F) {
	f.Add(canonical(f, 1, 16000, 16, 32000))
	f.Add(append(riff(chunk("fmt ", fmtBody(3, 2, 48000, 384000, 8, 32)), chunk("LIST", []byte("INFO"))), dataHeader(7)...))
	f.Add([]byte("RIFF\x00\x00\x00\x00WAVE"))
	f.Add([]byte("ID3"))
	f.Add(header(1, 1, 16000, 32000, 2, 16, 32000, nil))
	f.Add(header(3, 1, 16000, 0xFFFFFFFF, 4, 32, 1, nil))
	f.Add(header(0xFFFE, 2, 48000, 0, 8, 32, 0x7FFFFFFF, extension(32, 3, extensibleSuffix[:])))
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
		if h.BlockAlign == 0 || h.Channels == 0 || h.SampleRate == 0 || uint32(h.BlockAlign) != uint32(h.Channels)*uint32(h.BitsPerSample/8) {
			t.Fatalf("accepted %+v", h)
		}
		// A header accepted prices every byte: Seconds never undercounts a
		// frame. No bytes (an open data size of 0 declares none) are no audio.
		if s := h.Seconds(0); s != 0 {
			t.Fatalf("0 bytes priced as %d s", s)
		}
		for _, n := range []int64{1, int64(h.BlockAlign), int64(h.DataSize), 1 << 40} {
			if n == 0 {
				continue
			}
			if s := h.Seconds(n); s < 1 || s*int64(h.SampleRate)*int64(h.BlockAlign) < n {
				t.Fatalf("%d bytes priced as %d s at %d Hz, %d-byte frames", n, s, h.SampleRate, h.BlockAlign)
			}
		}
		if d := h.Duration(); d < 0 {
			t.Fatalf("negative duration %v", d)
		}
		if h.Format == FormatPCM {
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

func header(format, channels uint16, rate, byteRate uint32, align, bits uint16, dataSize uint32, ext []byte) []byte {
	f := binary.LittleEndian.AppendUint16(nil, format)
	f = binary.LittleEndian.AppendUint16(f, channels)
	f = binary.LittleEndian.AppendUint32(f, rate)
	f = binary.LittleEndian.AppendUint32(f, byteRate)
	f = binary.LittleEndian.AppendUint16(f, align)
	f = binary.LittleEndian.AppendUint16(f, bits)
	f = append(f, ext...)
	b := append([]byte("RIFF\xff\xff\xff\xffWAVEfmt "), binary.LittleEndian.AppendUint32(nil, uint32(len(f)))...)
	b = append(b, f...)
	b = append(b, "LIST\x04\x00\x00\x00INFO"...)
	return append(append(b, "data"...), binary.LittleEndian.AppendUint32(nil, dataSize)...)
}

func extension(bits, sub uint16, suffix []byte) []byte {
	e := binary.LittleEndian.AppendUint16(nil, 22)
	e = binary.LittleEndian.AppendUint16(e, bits)
	e = binary.LittleEndian.AppendUint32(e, 0)
	e = binary.LittleEndian.AppendUint16(e, sub)
	return append(e, suffix...)
}

func TestSeconds(t *testing.T) {
	guid := extensibleSuffix[:]
	for _, tc := range []struct {
		name      string
		in        []byte
		seconds   int64 // of the declared data
		withError error
	}{
		{"PCM 16 kHz 16-bit, 90 s", header(1, 1, 16000, 32000, 2, 16, 90*32000, nil), 90, nil},
		{"PCM, byte rate ignored", header(1, 1, 16000, 1, 2, 16, 90*32000, nil), 90, nil},
		{"float32 3 min, byte rate 0xFFFFFFFF", header(3, 1, 16000, 0xFFFFFFFF, 4, 32, 180*64000, nil), 180, nil},
		{"float64 stereo", header(3, 2, 8000, 0, 16, 64, 8000*16+1, nil), 2, nil},
		{"µ-law", header(7, 1, 8000, 0, 1, 8, 8000, nil), 1, nil},
		{"A-law 61 s", header(6, 1, 8000, 0, 1, 8, 61*8000, nil), 61, nil},
		{"extensible PCM 24-bit stereo", header(0xFFFE, 2, 48000, 0, 6, 24, 48000*6*10, extension(24, 1, guid)), 10, nil},
		{"1 byte is a second", header(1, 2, 44100, 0xFFFFFFFF, 4, 16, 1, nil), 1, nil},
		{"empty data", header(1, 1, 16000, 32000, 2, 16, 0, nil), 0, nil},
		{"ADPCM", header(2, 1, 16000, 8000, 256, 4, 100, nil), 0, ErrUnsupported},
		{"extensible MP3", header(0xFFFE, 1, 16000, 0, 1, 8, 100, extension(8, 0x55, guid)), 0, ErrUnsupported},
		{"extensible with a foreign GUID", header(0xFFFE, 1, 16000, 0, 2, 16, 100, extension(16, 1, make([]byte, 14))), 0, ErrUnsupported},
		{"extensible without extension", header(0xFFFE, 1, 16000, 0, 2, 16, 100, nil), 0, ErrMalformed},
		{"block align too small", header(1, 2, 16000, 64000, 2, 16, 100, nil), 0, ErrMalformed},
		{"block align too large", header(3, 1, 16000, 64000, 8, 32, 100, nil), 0, ErrMalformed},
		{"12-bit PCM", header(1, 1, 16000, 24000, 2, 12, 100, nil), 0, ErrMalformed},
		{"zero channels", header(1, 0, 16000, 0, 0, 16, 100, nil), 0, ErrMalformed},
		{"zero sample rate", header(1, 1, 0, 0, 2, 16, 100, nil), 0, ErrMalformed},
		{"not RIFF", []byte("ID3\x04 an mp3"), 0, ErrNotWAV},
		{"data before fmt", []byte("RIFF\x00\x00\x00\x00WAVEdata\x10\x00\x00\x00"), 0, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHeader(bytes.NewReader(tc.in))
			if tc.withError != nil {
				if !errors.Is(err, tc.withError) {
					t.Fatalf("err %v, want %v", err, tc.withError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.DataOffset != int64(len(tc.in)) {
				t.Fatalf("data offset %d, want %d", h.DataOffset, len(tc.in))
			}
			if got := h.Seconds(int64(h.DataSize)); got != tc.seconds {
				t.Fatalf("%d s, want %d", got, tc.seconds)
			}
		})
	}
}

func TestOpenSizes(t *testing.T) {
	for size, open := range map[uint32]bool{0: true, 0xFFFFFFFF: true, 0x7FFFFFFF: true, 1: false, 0x7FFFFFFE: false} {
		if got := (Header{DataSize: size}).Open(); got != open {
			t.Errorf("data size %#x open = %v, want %v", size, got, open)
		}
	}
}
