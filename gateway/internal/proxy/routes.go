package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mana/apigw/gateway/internal/problem"
)

// Backends the gateway proxies to.
const (
	BackendSearch = "search"
	BackendSTT    = "stt"
	BackendTTS    = "tts"
	backendLocal  = "" // answered by the gateway itself
)

// BodyKind says how a route's request body is read.
type BodyKind int

// Body kinds.
const (
	BodyNone      BodyKind = iota // no body is read or forwarded
	BodyJSON                      // a small JSON document, read and validated before the backend is called
	BodyMultipart                 // a streamed multipart upload (STT)
)

// Route is one public operation: everything the edge needs to authorise,
// price, forward and meter it. The table below is the only place routes are
// defined; the handler is the same for all of them.
type Route struct {
	Op           string // operation name in the pricing file
	Method       string
	Path         string // public path
	Backend      string
	UpstreamPath string
	Body         BodyKind
	BodyLimit    int64
	Timeout      time.Duration
	// Units counts the metered units of a JSON body and validates it; nil
	// means one unit per request.
	Units func(body []byte) (int64, error)
	// Settle reads the backend's answer to a served call and returns the
	// units actually consumed; nil means the estimate stands.
	Settle func(resp *http.Response) (int64, error)
}

// Routes is the public API (docs/contract.md).
func Routes() []Route {
	const kb, mb = 1 << 10, 1 << 20
	return []Route{
		{Op: "search", Method: http.MethodPost, Path: "/v1/search", Backend: BackendSearch, UpstreamPath: "/search",
			Body: BodyJSON, BodyLimit: 64 * kb, Timeout: 15 * time.Second, Units: searchUnits},
		{Op: "extract", Method: http.MethodPost, Path: "/v1/extract", Backend: BackendSearch, UpstreamPath: "/extract",
			Body: BodyJSON, BodyLimit: 64 * kb, Timeout: 30 * time.Second, Units: extractUnits},
		{Op: "extract-bulk", Method: http.MethodPost, Path: "/v1/extract/bulk", Backend: BackendSearch, UpstreamPath: "/extract/bulk",
			Body: BodyJSON, BodyLimit: 256 * kb, Timeout: 60 * time.Second, Units: bulkUnits},
		{Op: "search-engines", Method: http.MethodGet, Path: "/v1/search/engines", Backend: BackendSearch, UpstreamPath: "/engines",
			Timeout: 10 * time.Second},
		{Op: "stt-transcribe", Method: http.MethodPost, Path: "/v1/stt/transcribe", Backend: BackendSTT, UpstreamPath: "/transcribe",
			Body: BodyMultipart, BodyLimit: 200 * mb, Timeout: 5 * time.Minute, Settle: sttSettle},
		{Op: "stt-models", Method: http.MethodGet, Path: "/v1/stt/models", Backend: BackendSTT, UpstreamPath: "/models",
			Timeout: 10 * time.Second},
		{Op: "stt-languages", Method: http.MethodGet, Path: "/v1/stt/languages", Backend: BackendSTT, UpstreamPath: "/languages",
			Timeout: 10 * time.Second},
		{Op: "tts-synthesize", Method: http.MethodPost, Path: "/v1/tts/synthesize", Backend: BackendTTS, UpstreamPath: "/synthesize",
			Body: BodyJSON, BodyLimit: 256 * kb, Timeout: 2 * time.Minute, Units: ttsUnits},
		{Op: "tts-voices", Method: http.MethodGet, Path: "/v1/tts/voices", Backend: BackendTTS, UpstreamPath: "/voices",
			Timeout: 10 * time.Second},
		{Op: "tts-languages", Method: http.MethodGet, Path: "/v1/tts/languages", Backend: BackendTTS, UpstreamPath: "/languages",
			Timeout: 10 * time.Second},
		{Op: "key", Method: http.MethodGet, Path: "/v1/key", Backend: backendLocal, Timeout: 5 * time.Second},
	}
}

// Ops lists the operation names of the table (for pricing validation).
func Ops() []string {
	var out []string
	for _, r := range Routes() {
		out = append(out, r.Op)
	}
	return out
}

func badInput(detail string) error { return problem.New(http.StatusBadRequest, detail) }

// decodeStrict decodes one JSON object into v, refusing unknown fields and trailing data.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badInput("malformed JSON body: " + jsonDetail(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badInput("malformed JSON body: trailing data after the object")
	}
	return nil
}

func jsonDetail(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "empty or truncated body"
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "not a JSON object"
}

func searchUnits(body []byte) (int64, error) {
	var b struct {
		Query *string `json:"query"`
		Limit *int    `json:"limit"`
		// The seed's search accepts more options; they are passed through.
		Engines  json.RawMessage `json:"engines"`
		Language *string         `json:"language"`
	}
	if err := decodeStrict(body, &b); err != nil {
		return 0, err
	}
	if b.Query == nil || strings.TrimSpace(*b.Query) == "" {
		return 0, badInput(`"query" is required`)
	}
	if utf8.RuneCountInString(*b.Query) > 1000 {
		return 0, badInput(`"query" is longer than 1000 characters`)
	}
	if b.Limit != nil && (*b.Limit < 1 || *b.Limit > 100) {
		return 0, badInput(`"limit" must be between 1 and 100`)
	}
	return 1, nil
}

func validURL(s string) bool {
	return (strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")) && len(s) <= 2048 && len(s) > len("https://")
}

func extractUnits(body []byte) (int64, error) {
	var b struct {
		URL     *string         `json:"url"`
		Options json.RawMessage `json:"options"`
	}
	if err := decodeStrict(body, &b); err != nil {
		return 0, err
	}
	if b.URL == nil || !validURL(*b.URL) {
		return 0, badInput(`"url" must be an http or https URL`)
	}
	return 1, nil
}

// MaxBulkURLs bounds a bulk extraction.
const MaxBulkURLs = 20

func bulkUnits(body []byte) (int64, error) {
	var b struct {
		URLs    []string        `json:"urls"`
		Options json.RawMessage `json:"options"`
	}
	if err := decodeStrict(body, &b); err != nil {
		return 0, err
	}
	if len(b.URLs) == 0 || len(b.URLs) > MaxBulkURLs {
		return 0, badInput(fmt.Sprintf(`"urls" must hold 1 to %d URLs`, MaxBulkURLs))
	}
	for _, u := range b.URLs {
		if !validURL(u) {
			return 0, badInput(`every entry of "urls" must be an http or https URL`)
		}
	}
	return int64(len(b.URLs)), nil
}

// MaxTTSCharacters bounds one synthesis.
const MaxTTSCharacters = 100_000

func ttsUnits(body []byte) (int64, error) {
	var b struct {
		Text  *string  `json:"text"`
		Voice *string  `json:"voice"`
		Speed *float64 `json:"speed"`
	}
	if err := decodeStrict(body, &b); err != nil {
		return 0, err
	}
	if b.Text == nil || *b.Text == "" {
		return 0, badInput(`"text" is required`)
	}
	if !utf8.ValidString(*b.Text) {
		return 0, badInput(`"text" is not valid UTF-8`)
	}
	n := utf8.RuneCountInString(*b.Text)
	if n > MaxTTSCharacters {
		return 0, badInput(fmt.Sprintf(`"text" is longer than %d characters`, MaxTTSCharacters))
	}
	if b.Voice != nil && (*b.Voice == "" || len(*b.Voice) > 64) {
		return 0, badInput(`"voice" must be a voice name`)
	}
	return int64(n), nil
}

// sttSettle reads the backend's transcription answer and returns the audio
// seconds it reports, rounded up.
func sttSettle(resp *http.Response) (int64, error) {
	const maxAnswer = 16 << 20
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	_ = resp.Body.Close()
	if err == nil && len(body) > maxAnswer {
		err = errors.New("transcription answer larger than 16 MiB")
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
	if err != nil {
		return 0, fmt.Errorf("read transcription: %w", err)
	}
	var b struct {
		DurationSeconds *float64 `json:"durationSeconds"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.DurationSeconds == nil || *b.DurationSeconds < 0 || math.IsNaN(*b.DurationSeconds) {
		return 0, errors.New("transcription answer lacks durationSeconds")
	}
	return int64(math.Ceil(*b.DurationSeconds)), nil
}
