package tts

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mana/apigw/services/httpjson"
	"github.com/mana/apigw/services/wavinfo"
)

// synthesizeBody is a synthesize request body.
var synthesizeBody = httpjson.Body{Limit: maxRequestBody, Name: "the request body", Shape: "a JSON object with text and voice"}

type synthesizeRequest struct {
	Text  string `json:"text"`
	Voice string `json:"voice"`
}

func (s *service) handleSynthesize(w http.ResponseWriter, r *http.Request) {
	var req synthesizeRequest
	if !synthesizeBody.Decode(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.Text) == "" {
		httpjson.Problem(w, http.StatusBadRequest, "Invalid Request", "text is required")
		return
	}
	if !utf8.ValidString(req.Text) {
		httpjson.Problem(w, http.StatusBadRequest, "Invalid Request", "text is not valid UTF-8")
		return
	}
	if n := utf8.RuneCountInString(req.Text); n > s.cfg.MaxChars {
		httpjson.Problem(w, http.StatusUnprocessableEntity, "Text Too Long", fmt.Sprintf("text has %d characters; the limit is %d", n, s.cfg.MaxChars))
		return
	}
	if req.Voice == "" {
		req.Voice = DefaultVoice
	}
	voice, ok := s.voices[req.Voice]
	if !ok {
		httpjson.Problem(w, http.StatusBadRequest, "Unknown Voice", fmt.Sprintf("voice %q does not exist; see GET /voices", req.Voice))
		return
	}
	var err error
	if s.espeak != "" {
		err = s.speakEspeak(r.Context(), w, req.Text, voice)
	} else {
		err = speakTone(w, req.Text, voice)
	}
	if err != nil {
		s.logger.ErrorContext(r.Context(), "synthesize", "voice", voice.ID, "err", err)
		return
	}
	s.logger.InfoContext(r.Context(), "synthesized", "voice", voice.ID, "characters", utf8.RuneCountInString(req.Text))
}

// writeAudioHeaders sets the headers of a WAV answer before any byte of it.
func writeAudioHeaders(w http.ResponseWriter, size int64, d time.Duration) {
	w.Header().Set("Content-Type", "audio/wav")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("X-Audio-Duration-Seconds", strconv.FormatFloat(d.Seconds(), 'f', 3, 64))
	w.WriteHeader(http.StatusOK)
}

// speakEspeak runs espeak-ng into a temporary file and streams it. A file,
// not --stdout: on a pipe espeak-ng cannot seek back and leaves a placeholder
// data size (about 2 GiB) in the header, which would misprice the audio
// downstream.
func (s *service) speakEspeak(ctx context.Context, w http.ResponseWriter, text string, v Voice) error {
	dir, err := os.MkdirTemp("", "tts-")
	if err != nil {
		httpjson.Problem(w, http.StatusInternalServerError, "Synthesis Failed", "no temporary space")
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "speech.wav")

	ctx, cancel := context.WithTimeout(ctx, s.cfg.SynthesisTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.espeak, "-v", v.espeak, "-w", out, "--stdin")
	cmd.Stdin = strings.NewReader(text)
	var stderr strings.Builder
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4096}
	if err := cmd.Run(); err != nil {
		httpjson.Problem(w, http.StatusInternalServerError, "Synthesis Failed", "the speech engine failed")
		return fmt.Errorf("espeak-ng: %w: %s", err, stderr.String())
	}
	f, err := os.Open(out)
	if err != nil {
		httpjson.Problem(w, http.StatusInternalServerError, "Synthesis Failed", "the speech engine wrote no audio")
		return fmt.Errorf("open espeak output: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		httpjson.Problem(w, http.StatusInternalServerError, "Synthesis Failed", "the speech engine wrote no audio")
		return fmt.Errorf("stat espeak output: %w", err)
	}
	// The duration is what a player of the file plays, read the way the
	// STT stand-in reads an upload.
	h, _, err := wavinfo.Read(f)
	if err != nil {
		httpjson.Problem(w, http.StatusInternalServerError, "Synthesis Failed", "the speech engine wrote a broken WAV file")
		return fmt.Errorf("espeak output: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		httpjson.Problem(w, http.StatusInternalServerError, "Synthesis Failed", "could not read the audio")
		return fmt.Errorf("rewind espeak output: %w", err)
	}
	writeAudioHeaders(w, st.Size(), h.Duration(h.DataBytes(st.Size()-h.DataOffset)))
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("stream audio: %w", err)
	}
	return nil
}

type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.n -= k
		_, _ = l.w.Write(p[:k])
	}
	return len(p), nil
}

// The tone engine: 16 kHz mono 16-bit PCM; each character lasts charFrames
// (64 ms, about 15 characters per second, the pace of speech); letters and
// digits are short tones around the voice's pitch, everything else silence;
// 100 ms of silence at either end.
const (
	toneRate    = 16000
	charFrames  = 1024
	edgeFrames  = 1600
	fadeFrames  = 80 // 5 ms fade against clicks
	toneAmpl    = 0.3 * math.MaxInt16
	chunkFrames = 4096
)

// toneFrames is the length in frames of the tone rendering of text.
func toneFrames(text string) int64 {
	return int64(2*edgeFrames) + int64(utf8.RuneCountInString(text))*charFrames
}

// speakTone streams the generated waveform: header first (its size is known
// from the text), then the samples chunk by chunk.
func speakTone(w http.ResponseWriter, text string, v Voice) error {
	frames := toneFrames(text)
	dataSize := frames * 2
	hdr, err := pcmHeader(1, toneRate, 16, dataSize)
	if err != nil {
		httpjson.Problem(w, http.StatusUnprocessableEntity, "Text Too Long", err.Error())
		return err
	}
	writeAudioHeaders(w, int64(len(hdr))+dataSize, time.Duration(frames)*time.Second/toneRate)
	bw := bufio.NewWriterSize(w, chunkFrames*2)
	if _, err := bw.Write(hdr); err != nil {
		return fmt.Errorf("stream audio: %w", err)
	}
	if err := writeToneSamples(bw, text, v.pitch); err != nil {
		return fmt.Errorf("stream audio: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("stream audio: %w", err)
	}
	return nil
}

// pcmHeader is the canonical 44-byte header of dataSize bytes of PCM.
func pcmHeader(channels uint16, rate uint32, bits uint16, dataSize int64) ([]byte, error) {
	if dataSize < 0 || dataSize > math.MaxUint32-36 {
		return nil, fmt.Errorf("wav header: data size %d does not fit", dataSize)
	}
	align := channels * (bits / 8)
	b := []byte("RIFF")
	b = binary.LittleEndian.AppendUint32(b, uint32(36+dataSize))
	b = append(b, "WAVEfmt "...)
	b = binary.LittleEndian.AppendUint32(b, 16)
	b = binary.LittleEndian.AppendUint16(b, wavinfo.FormatPCM)
	b = binary.LittleEndian.AppendUint16(b, channels)
	b = binary.LittleEndian.AppendUint32(b, rate)
	b = binary.LittleEndian.AppendUint32(b, rate*uint32(align))
	b = binary.LittleEndian.AppendUint16(b, align)
	b = binary.LittleEndian.AppendUint16(b, bits)
	b = append(b, "data"...)
	return binary.LittleEndian.AppendUint32(b, uint32(dataSize)), nil
}

func writeToneSamples(w io.Writer, text string, pitch float64) error {
	// One character's samples at a time: a write per sample would make a
	// long text slow to stream.
	buf := make([]byte, 2*max(charFrames, edgeFrames))
	silence := func(n int) error {
		clear(buf[:2*n])
		_, err := w.Write(buf[:2*n])
		return err
	}
	if err := silence(edgeFrames); err != nil {
		return err
	}
	for _, r := range text {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			if err := silence(charFrames); err != nil {
				return err
			}
			continue
		}
		freq := pitch * math.Pow(2, float64(unicode.ToLower(r)%12)/12)
		for i := range charFrames {
			env := 1.0
			if i < fadeFrames {
				env = float64(i) / fadeFrames
			} else if i >= charFrames-fadeFrames {
				env = float64(charFrames-1-i) / fadeFrames
			}
			sample := toneAmpl * env * math.Sin(2*math.Pi*freq*float64(i)/toneRate)
			binary.LittleEndian.PutUint16(buf[2*i:], uint16(int16(sample)))
		}
		if _, err := w.Write(buf[:2*charFrames]); err != nil {
			return err
		}
	}
	return silence(edgeFrames)
}
