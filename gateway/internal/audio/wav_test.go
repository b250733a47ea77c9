package audio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

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

func TestParseWAV(t *testing.T) {
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
		{"ADPCM", header(2, 1, 16000, 8000, 256, 4, 100, nil), 0, ErrUnpriceable},
		{"extensible MP3", header(0xFFFE, 1, 16000, 0, 1, 8, 100, extension(8, 0x55, guid)), 0, ErrUnpriceable},
		{"extensible with a foreign GUID", header(0xFFFE, 1, 16000, 0, 2, 16, 100, extension(16, 1, make([]byte, 14))), 0, ErrUnpriceable},
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
			h, err := ParseWAV(bytes.NewReader(tc.in))
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

// FuzzParseWAV: any input is a header or a classified error, and a header
// accepted prices every byte: Seconds never undercounts a frame.
func FuzzParseWAV(f *testing.F) {
	f.Add(header(1, 1, 16000, 32000, 2, 16, 32000, nil))
	f.Add(header(3, 1, 16000, 0xFFFFFFFF, 4, 32, 1, nil))
	f.Add(header(0xFFFE, 2, 48000, 0, 8, 32, 0x7FFFFFFF, extension(32, 3, extensibleSuffix[:])))
	f.Add([]byte("RIFF\x00\x00\x00\x00WAVE"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ParseWAV(bytes.NewReader(in))
		if h.DataOffset < 0 || h.DataOffset > int64(len(in)) {
			t.Fatalf("data offset %d outside the %d-byte input", h.DataOffset, len(in))
		}
		if err != nil {
			if !errors.Is(err, ErrNotWAV) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnpriceable) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if h.BlockAlign == 0 || h.SampleRate == 0 || uint32(h.BlockAlign) != uint32(h.Channels)*uint32(h.BitsPerSample/8) {
			t.Fatalf("accepted %+v", h)
		}
		for _, n := range []int64{1, int64(h.BlockAlign), int64(h.DataSize), 1 << 40} {
			if s := h.Seconds(n); s < 1 || s*int64(h.SampleRate)*int64(h.BlockAlign) < n {
				t.Fatalf("%d bytes priced as %d s at %d Hz, %d-byte frames", n, s, h.SampleRate, h.BlockAlign)
			}
		}
	})
}
