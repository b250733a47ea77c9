package wavinfo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

// fmtChunk is a "fmt " chunk; ext is appended (an extensible header's).
func fmtChunk(format, channels uint16, rate, byteRate uint32, align, bits uint16, ext []byte) []byte {
	b := binary.LittleEndian.AppendUint16(nil, format)
	b = binary.LittleEndian.AppendUint16(b, channels)
	b = binary.LittleEndian.AppendUint32(b, rate)
	b = binary.LittleEndian.AppendUint32(b, byteRate)
	b = binary.LittleEndian.AppendUint16(b, align)
	b = binary.LittleEndian.AppendUint16(b, bits)
	return chunk("fmt ", append(b, ext...))
}

// chunk is a RIFF chunk with its pad byte.
func chunk(id string, body []byte) []byte {
	b := append([]byte(id), binary.LittleEndian.AppendUint32(nil, uint32(len(body)))...)
	b = append(b, body...)
	if len(body)%2 == 1 {
		b = append(b, 0)
	}
	return b
}

// dataHeader is a data chunk's header declaring size.
func dataHeader(size uint32) []byte {
	return append([]byte("data"), binary.LittleEndian.AppendUint32(nil, size)...)
}

func riffFile(form string, parts ...[]byte) []byte {
	b := append([]byte("RIFF"), 0xFF, 0xFF, 0xFF, 0xFF)
	b = append(b, form...)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func extensible(bits, sub uint16) []byte {
	ext := binary.LittleEndian.AppendUint16(nil, 22)
	ext = binary.LittleEndian.AppendUint16(ext, bits)
	ext = binary.LittleEndian.AppendUint32(ext, 0)
	ext = binary.LittleEndian.AppendUint16(ext, sub)
	return append(ext, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71)
}

func info(key, value string) []byte {
	return chunk("LIST", append([]byte("INFO"), chunk(key, []byte(value))...))
}

func TestRead(t *testing.T) {
	pcm16 := fmtChunk(FormatPCM, 1, 16000, 32000, 2, 16, nil)
	second := make([]byte, 32000)
	for _, tc := range []struct {
		name    string
		file    []byte
		format  uint16
		declare uint32
		open    bool
		// played is the duration of all that follows the header, as a
		// decoder bounds it by the declared size.
		played time.Duration
		err    error
	}{
		{name: "PCM 16-bit mono, 1 s", file: riffFile("WAVE", pcm16, dataHeader(32000), second), format: FormatPCM, declare: 32000, played: time.Second},
		{name: "byte rate and block align are not the frame", file: riffFile("WAVE", fmtChunk(FormatPCM, 2, 8000, 1, 1, 16, nil), dataHeader(32000), second), format: FormatPCM, declare: 32000, played: time.Second},
		{name: "LIST and bext before fmt", file: riffFile("WAVE", info("INAM", "a title"), chunk("bext", make([]byte, 602)), pcm16, dataHeader(16000), second[:16000]), format: FormatPCM, declare: 16000, played: 500 * time.Millisecond},
		{name: "fact and LIST between fmt and data", file: riffFile("WAVE", pcm16, chunk("fact", make([]byte, 4)), info("ISFT", "x"), dataHeader(32000), second), format: FormatPCM, declare: 32000, played: time.Second},
		{name: "LIST after the data is not audio", file: riffFile("WAVE", pcm16, dataHeader(16000), second[:16000], info("ICMT", "a comment that is not audio")), format: FormatPCM, declare: 16000, played: 500 * time.Millisecond},
		{name: "odd size: the pad byte is not a frame", file: riffFile("WAVE", fmtChunk(FormatPCM, 1, 8000, 8000, 1, 8, nil), dataHeader(8001), make([]byte, 8002), info("ICMT", "after")), format: FormatPCM, declare: 8001, played: time.Second + time.Second/8000},
		{name: "odd size, 16-bit: a partial frame is not played", file: riffFile("WAVE", pcm16, dataHeader(3), make([]byte, 4), info("ICMT", "after")), format: FormatPCM, declare: 3, played: time.Second / 16000},
		{name: "size 0 is open", file: riffFile("WAVE", pcm16, dataHeader(0), second), format: FormatPCM, declare: 0, open: true, played: time.Second},
		{name: "size 0xFFFFFFFF is open", file: riffFile("WAVE", pcm16, dataHeader(0xFFFFFFFF), second), format: FormatPCM, declare: 0xFFFFFFFF, open: true, played: time.Second},
		{name: "size 0x7FFFFFFF is open", file: riffFile("WAVE", pcm16, dataHeader(0x7FFFFFFF), second), format: FormatPCM, declare: 0x7FFFFFFF, open: true, played: time.Second},
		{name: "truncated: what arrived plays", file: riffFile("WAVE", pcm16, dataHeader(64000), second), format: FormatPCM, declare: 64000, played: time.Second},
		{name: "float32 stereo", file: riffFile("WAVE", fmtChunk(FormatFloat, 2, 16000, 0xFFFFFFFF, 8, 32, nil), dataHeader(128000), make([]byte, 128000)), format: FormatFloat, declare: 128000, played: time.Second},
		{name: "float64", file: riffFile("WAVE", fmtChunk(FormatFloat, 1, 8000, 64000, 8, 64, nil), dataHeader(64000), make([]byte, 64000)), format: FormatFloat, declare: 64000, played: time.Second},
		{name: "extensible float32", file: riffFile("WAVE", fmtChunk(FormatExtensible, 2, 16000, 1, 8, 32, extensible(32, FormatFloat)), dataHeader(64000), make([]byte, 64000)), format: FormatExtensible, declare: 64000, played: 500 * time.Millisecond},
		{name: "µ-law", file: riffFile("WAVE", fmtChunk(FormatMuLaw, 1, 8000, 1, 1, 8, nil), dataHeader(8000), make([]byte, 8000)), format: FormatMuLaw, declare: 8000, played: time.Second},
		{name: "A-law", file: riffFile("WAVE", fmtChunk(FormatALaw, 1, 8000, 1, 1, 8, nil), dataHeader(4000), make([]byte, 4000)), format: FormatALaw, declare: 4000, played: 500 * time.Millisecond},
		{name: "24-bit stereo", file: riffFile("WAVE", fmtChunk(FormatPCM, 2, 48000, 0, 6, 24, nil), dataHeader(288000), make([]byte, 288000)), format: FormatPCM, declare: 288000, played: time.Second},
		{name: "a LIST entry that claims 4 GiB", file: riffFile("WAVE", pcm16, chunk("LIST", append([]byte("INFOINAM"), 0xF0, 0xFF, 0xFF, 0xFF)), dataHeader(4), make([]byte, 4)), format: FormatPCM, declare: 4, played: 2 * time.Second / 16000},

		{name: "MP3", file: []byte("ID3\x03\x00\x00\x00\x00\x00\x00 not a wav"), err: ErrNotWAV},
		{name: "RIFF that is not WAVE", file: riffFile("AVI ", chunk("LIST", make([]byte, 12))), err: ErrNotWAV},
		{name: "too short for RIFF", file: []byte("RIFF\x00"), err: ErrNotWAV},
		{name: "IMA ADPCM", file: riffFile("WAVE", fmtChunk(0x11, 1, 16000, 4055, 256, 4, nil), dataHeader(1024), make([]byte, 1024)), err: ErrUnsupported},
		{name: "MP3 in a WAV", file: riffFile("WAVE", fmtChunk(0x55, 1, 16000, 4000, 1, 0, nil), dataHeader(1024), make([]byte, 1024)), err: ErrUnsupported},
		{name: "float with 16-bit samples", file: riffFile("WAVE", fmtChunk(FormatFloat, 1, 16000, 32000, 2, 16, nil), dataHeader(1024), make([]byte, 1024)), err: ErrMalformed},
		{name: "12-bit PCM", file: riffFile("WAVE", fmtChunk(FormatPCM, 1, 16000, 32000, 2, 12, nil), dataHeader(1024), make([]byte, 1024)), err: ErrMalformed},
		{name: "sample rate 0", file: riffFile("WAVE", fmtChunk(FormatPCM, 1, 0, 32000, 2, 16, nil), dataHeader(1024), make([]byte, 1024)), err: ErrMalformed},
		{name: "no channels", file: riffFile("WAVE", fmtChunk(FormatPCM, 0, 16000, 32000, 2, 16, nil), dataHeader(1024), make([]byte, 1024)), err: ErrMalformed},
		{name: "no fmt chunk", file: riffFile("WAVE", dataHeader(1024), make([]byte, 1024)), err: ErrMalformed},
		{name: "no data chunk", file: riffFile("WAVE", pcm16, info("INAM", "x")), err: ErrMalformed},
		{name: "a LIST that claims 4 GiB", file: riffFile("WAVE", pcm16, []byte("LIST\xf0\xff\xff\xffINFO")), err: ErrMalformed},
		{name: "a fmt chunk that claims 4 GiB", file: riffFile("WAVE", []byte("fmt \xf0\xff\xff\xff"), pcm16[8:]), err: ErrMalformed},
		{name: "two fmt chunks", file: riffFile("WAVE", pcm16, pcm16, dataHeader(4), make([]byte, 4)), err: ErrMalformed},
		{name: "truncated fmt", file: riffFile("WAVE", pcm16[:14]), err: ErrMalformed},
		{name: "a header longer than the bound", file: riffFile("WAVE", pcm16, chunk("junk", make([]byte, MaxHeaderBytes)), dataHeader(1024), make([]byte, 1024)), err: ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, rest, err := Read(bytes.NewReader(tc.file))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, rest)
			if err != nil {
				t.Fatal(err)
			}
			if in.Format != tc.format || in.DataSize != tc.declare || in.Open() != tc.open || in.DataOffset+n != int64(len(tc.file)) {
				t.Fatalf("%+v (open %v) with %d bytes after it, want format 0x%x, size %d, open %v", in, in.Open(), n, tc.format, tc.declare, tc.open)
			}
			if got := in.Duration(in.DataBytes(n)); got != tc.played {
				t.Fatalf("plays %v, want %v", got, tc.played)
			}
		})
	}
}

// A failure of the stream is returned as it is, not as a header problem.
func TestReadKeepsStreamErrors(t *testing.T) {
	broken := errors.New("connection reset")
	file := riffFile("WAVE", fmtChunk(FormatPCM, 1, 16000, 32000, 2, 16, nil))
	for _, cut := range []int{4, 20, len(file)} {
		r := io.MultiReader(bytes.NewReader(file[:cut]), &failing{broken})
		if _, _, err := Read(r); !errors.Is(err, broken) {
			t.Fatalf("cut at %d: error %v, want %v", cut, err, broken)
		}
	}
}

type failing struct{ err error }

func (f *failing) Read([]byte) (int, error) { return 0, f.err }

func FuzzRead(f *testing.F) {
	pcm16 := fmtChunk(FormatPCM, 1, 16000, 32000, 2, 16, nil)
	f.Add(riffFile("WAVE", pcm16, dataHeader(4), make([]byte, 4)))
	f.Add(riffFile("WAVE", info("INAM", "t"), pcm16, dataHeader(3), make([]byte, 4)))
	f.Add(riffFile("WAVE", fmtChunk(FormatExtensible, 2, 16000, 1, 8, 32, extensible(32, FormatFloat)), dataHeader(0), make([]byte, 16)))
	f.Fuzz(func(t *testing.T, file []byte) {
		in, rest, err := Read(bytes.NewReader(file))
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, rest)
		if in.DataOffset+n != int64(len(file)) || in.FrameBytes() <= 0 || in.SampleRate == 0 {
			t.Fatalf("%+v with %d bytes after it, from %d bytes", in, n, len(file))
		}
		if d := in.DataBytes(n); d > n || (!in.Open() && d > int64(in.DataSize)) {
			t.Fatalf("%d data bytes of %d, declared %d", d, n, in.DataSize)
		}
	})
}
