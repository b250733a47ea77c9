package stt

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strings"

	"github.com/mana/apigw/services/httpjson"
	"github.com/mana/apigw/services/wavinfo"
)

// maxFieldBytes bounds a non-file form field.
const maxFieldBytes = 256

// Transcript is the answer to POST /transcribe.
type Transcript struct {
	Text            string  `json:"text"`
	Language        string  `json:"language"`
	DurationSeconds float64 `json:"durationSeconds"`
	Model           string  `json:"model"`
}

// errRequest is a client error with its status, raised while reading the
// upload and turned into a problem in one place.
type errRequest struct {
	status int
	title  string
	detail string
}

func (e *errRequest) Error() string { return e.detail }

func badRequest(status int, title, format string, args ...any) error {
	return &errRequest{status: status, title: title, detail: fmt.Sprintf(format, args...)}
}

func (s *service) handleTranscribe(w http.ResponseWriter, r *http.Request) {
	t, err := s.transcribe(w, r)
	if err != nil {
		var re *errRequest
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &re):
			httpjson.Problem(w, re.status, re.title, re.detail)
		case errors.As(err, &tooBig):
			httpjson.Problem(w, http.StatusRequestEntityTooLarge, "Upload Too Large", fmt.Sprintf("the upload exceeds %d bytes", s.cfg.MaxUploadBytes))
		default:
			// A broken multipart stream is the client's doing too.
			httpjson.Problem(w, http.StatusBadRequest, "Malformed Upload", "the multipart body could not be read: "+err.Error())
		}
		return
	}
	s.logger.InfoContext(r.Context(), "transcribed", "duration_seconds", t.DurationSeconds, "language", t.Language)
	httpjson.Write(w, http.StatusOK, t)
}

// transcribe streams the multipart body: small fields are read, the file's
// header is parsed and its samples are counted and dropped.
func (s *service) transcribe(w http.ResponseWriter, r *http.Request) (Transcript, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		return Transcript{}, badRequest(http.StatusUnsupportedMediaType, "Unsupported Media Type", "send the audio as multipart/form-data in the field \"file\"")
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxUploadBytes)
	mr, err := r.MultipartReader()
	if err != nil {
		return Transcript{}, badRequest(http.StatusBadRequest, "Malformed Upload", "%v", err)
	}
	t := Transcript{Language: r.URL.Query().Get("language"), Model: r.URL.Query().Get("model")}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return Transcript{}, badRequest(http.StatusBadRequest, "Missing File", "the form has no field \"file\"")
		}
		if err != nil {
			return Transcript{}, fmt.Errorf("next part: %w", err)
		}
		switch part.FormName() {
		case "language", "model":
			v, err := readField(part)
			if err != nil {
				return Transcript{}, err
			}
			if part.FormName() == "language" {
				t.Language = v
			} else {
				t.Model = v
			}
		case "file":
			if err := s.finish(&t); err != nil {
				return Transcript{}, err
			}
			if err := s.readAudio(part, &t); err != nil {
				return Transcript{}, err
			}
			return t, nil
		default:
			if _, err := io.Copy(io.Discard, part); err != nil {
				return Transcript{}, fmt.Errorf("skip field: %w", err)
			}
		}
	}
}

func readField(part io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(part, maxFieldBytes+1))
	if err != nil {
		return "", fmt.Errorf("read field: %w", err)
	}
	if len(b) > maxFieldBytes {
		return "", badRequest(http.StatusUnprocessableEntity, "Invalid Field", "a form field is longer than %d bytes", maxFieldBytes)
	}
	return strings.TrimSpace(string(b)), nil
}

// finish applies defaults and checks language and model.
func (s *service) finish(t *Transcript) error {
	if t.Language == "" {
		t.Language = DefaultLanguage
	}
	t.Language = strings.ToLower(t.Language)
	if !s.langs[t.Language] {
		return badRequest(http.StatusUnprocessableEntity, "Unsupported Language", "language %q is not supported; see GET /languages", t.Language)
	}
	if t.Model == "" {
		t.Model = DefaultModel
	}
	if !s.models[t.Model] {
		return badRequest(http.StatusUnprocessableEntity, "Unknown Model", "model %q is not offered; see GET /models", t.Model)
	}
	return nil
}

// readAudio decodes the WAV header and counts the samples that follow
// without keeping them. The duration is that of the frames a decoder plays:
// the declared size, or less when fewer bytes arrived (a truncated upload),
// or all that arrived when the size is a streaming writer's placeholder.
func (s *service) readAudio(part io.Reader, t *Transcript) error {
	br := bufio.NewReaderSize(part, 4096)
	if _, err := br.Peek(1); errors.Is(err, io.EOF) {
		return badRequest(http.StatusBadRequest, "Empty File", "the uploaded file is empty")
	}
	h, samples, err := wavinfo.Read(br)
	switch {
	case errors.Is(err, wavinfo.ErrUnsupported):
		return badRequest(http.StatusUnsupportedMediaType, "Unsupported Audio Format", "%v", err)
	case errors.Is(err, wavinfo.ErrNotWAV):
		return badRequest(http.StatusUnsupportedMediaType, "Unsupported Audio Format", "the file is not a RIFF/WAVE file; only WAV is accepted")
	case errors.Is(err, wavinfo.ErrMalformed):
		return badRequest(http.StatusUnprocessableEntity, "Malformed WAV", "%v", err)
	case err != nil:
		return fmt.Errorf("read wav header: %w", err)
	}
	n, err := io.Copy(io.Discard, samples)
	if err != nil {
		return fmt.Errorf("read samples: %w", err)
	}
	dataBytes := h.DataBytes(n) // not a LIST chunk after the data
	d := h.Duration(dataBytes)
	// Milliseconds, rounded up: any audio at all is a non-zero duration.
	t.DurationSeconds = math.Ceil(d.Seconds()*1000) / 1000
	if dataBytes > 0 {
		t.Text = fmt.Sprintf("This is a stand-in transcript of %.2f seconds of %d Hz audio with %d channel(s).",
			d.Seconds(), h.SampleRate, h.Channels)
	}
	return nil
}
