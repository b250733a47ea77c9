package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
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
	// BodyTimeout is how long the body may take to arrive before
	// MinBodyRate applies (see limits.go).
	BodyTimeout time.Duration
	Timeout     time.Duration
	// Parse validates a JSON body, counts its metered units and returns the
	// document to forward in its place.
	Parse func(body []byte) (units int64, forward []byte, err error)
	// Settle reads the backend's answer to a served call and returns the
	// units actually consumed; nil means the estimate stands.
	Settle func(resp *http.Response) (int64, error)
}

// Routes is the public API (docs/contract.md).
func Routes() []Route {
	return []Route{
		{Op: "search", Method: http.MethodPost, Path: "/v1/search", Backend: BackendSearch, UpstreamPath: "/search",
			Body: BodyJSON, BodyLimit: MaxJSONBody, BodyTimeout: JSONBodyTimeout, Timeout: 15 * time.Second, Parse: parseJSON[searchBody]},
		{Op: "extract", Method: http.MethodPost, Path: "/v1/extract", Backend: BackendSearch, UpstreamPath: "/extract",
			Body: BodyJSON, BodyLimit: MaxJSONBody, BodyTimeout: JSONBodyTimeout, Timeout: 30 * time.Second, Parse: parseJSON[extractBody]},
		{Op: "extract-bulk", Method: http.MethodPost, Path: "/v1/extract/bulk", Backend: BackendSearch, UpstreamPath: "/extract/bulk",
			Body: BodyJSON, BodyLimit: MaxJSONBody, BodyTimeout: JSONBodyTimeout, Timeout: 60 * time.Second, Parse: parseJSON[bulkBody]},
		{Op: "search-engines", Method: http.MethodGet, Path: "/v1/search/engines", Backend: BackendSearch, UpstreamPath: "/engines",
			Timeout: 10 * time.Second},
		{Op: "stt-transcribe", Method: http.MethodPost, Path: "/v1/stt/transcribe", Backend: BackendSTT, UpstreamPath: "/transcribe",
			Body: BodyMultipart, BodyLimit: MaxUploadBytes, BodyTimeout: UploadBodyTimeout, Timeout: 5 * time.Minute, Settle: sttSettle},
		{Op: "stt-models", Method: http.MethodGet, Path: "/v1/stt/models", Backend: BackendSTT, UpstreamPath: "/models",
			Timeout: 10 * time.Second},
		{Op: "stt-languages", Method: http.MethodGet, Path: "/v1/stt/languages", Backend: BackendSTT, UpstreamPath: "/languages",
			Timeout: 10 * time.Second},
		{Op: "tts-synthesize", Method: http.MethodPost, Path: "/v1/tts/synthesize", Backend: BackendTTS, UpstreamPath: "/synthesize",
			Body: BodyJSON, BodyLimit: MaxTTSBody, BodyTimeout: JSONBodyTimeout, Timeout: 2 * time.Minute, Parse: parseJSON[ttsBody]},
		{Op: "tts-voices", Method: http.MethodGet, Path: "/v1/tts/voices", Backend: BackendTTS, UpstreamPath: "/voices",
			Timeout: 10 * time.Second},
		{Op: "tts-languages", Method: http.MethodGet, Path: "/v1/tts/languages", Backend: BackendTTS, UpstreamPath: "/languages",
			Timeout: 10 * time.Second},
		{Op: "key", Method: http.MethodGet, Path: "/v1/key", Backend: backendLocal, Timeout: 5 * time.Second},
	}
}

// LongestTimeout is the longest backend timeout of the table: how long a
// call in flight may still take when the gateway is asked to stop.
func LongestTimeout() time.Duration {
	var d time.Duration
	for _, r := range Routes() {
		d = max(d, r.Timeout)
	}
	return d
}

// Ops lists the operation names of the table (for pricing validation).
func Ops() []string {
	var out []string
	for _, r := range Routes() {
		out = append(out, r.Op)
	}
	return out
}

// Input limits of the public API, each in this one place and each the
// backend's own (mana-search, mana-stt, mana-tts), so that what the gateway
// accepts and prices is what the backend serves.
const (
	kib = 1 << 10
	mib = 1 << 20

	MaxJSONBody         = 64 * kib  // search, extract and bulk extract bodies (mana-search's limit)
	MaxTTSBody          = 256 * kib // a synthesis body (mana-tts's limit)
	MaxUploadBytes      = 200 * mib // an STT upload (mana-stt's limit)
	MaxSearchQueryChars = 1000      // "query", in Unicode code points
	MaxSearchLimit      = 50        // "limit" of one search
	MaxBulkURLs         = 20        // "urls" of one bulk extraction
	MaxURLLength        = 2048      // one URL to extract
	MaxTTSCharacters    = 10_000    // "text" of one synthesis, in Unicode code points
)

// How long a request body may take to arrive before it must keep up
// MinBodyRate: a JSON body is small and sent in one go; an upload gets
// longer to start.
const (
	JSONBodyTimeout   = 10 * time.Second
	UploadBodyTimeout = 30 * time.Second
)

// document is a JSON request body: validated, then counted in the units its
// operation is priced in.
type document interface{ units() (int64, error) }

// parseJSON decodes a body into D, validates and counts it, and returns the
// document to forward: D re-encoded, so the backend reads exactly what was
// validated and priced. Keys are matched case-sensitively, and a duplicate
// or unknown key (a case variant of a known one included) is refused, so
// no key can mean one thing to the gateway and another to a backend.
func parseJSON[D any, P interface {
	*D
	document
}](body []byte) (int64, []byte, error) {
	var d D
	if err := json.Unmarshal(body, &d, json.RejectUnknownMembers(true)); err != nil {
		return 0, nil, badInput("malformed JSON body: " + jsonDetail(err))
	}
	n, err := P(&d).units()
	if err != nil {
		return 0, nil, err
	}
	out, err := json.Marshal(&d)
	if err != nil {
		return 0, nil, fmt.Errorf("re-encode the request body: %w", err)
	}
	return n, out, nil
}

func jsonDetail(err error) string {
	var syn *jsontext.SyntacticError
	var sem *json.SemanticError
	switch {
	case errors.As(err, &syn) && errors.Is(syn.Err, jsontext.ErrDuplicateName):
		return fmt.Sprintf("duplicate key %q", syn.JSONPointer.LastToken())
	case errors.As(err, &sem) && errors.Is(sem.Err, json.ErrUnknownName):
		return fmt.Sprintf("unknown key %q (keys are case-sensitive)", sem.JSONPointer.LastToken())
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "empty or truncated body"
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at byte %d", syn.ByteOffset)
	case errors.As(err, &sem) && sem.JSONPointer != "" && sem.JSONKind != 0:
		return fmt.Sprintf("%q must not be a JSON %s", sem.JSONPointer.LastToken(), kindName(sem.JSONKind))
	}
	return "not a JSON object of the expected shape"
}

func kindName(k jsontext.Kind) string {
	switch k {
	case 'n':
		return "null"
	case 'f', 't':
		return "boolean"
	case '"':
		return "string"
	case '0':
		return "number"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return "value"
}

type searchBody struct {
	Query *string `json:"query,omitzero"`
	Limit *int    `json:"limit,omitzero"`
	// The seed's search accepts more options; they are passed through.
	Engines  jsontext.Value `json:"engines,omitzero"`
	Language *string        `json:"language,omitzero"`
}

func (b *searchBody) units() (int64, error) {
	if b.Query == nil || strings.TrimSpace(*b.Query) == "" {
		return 0, badInput(`"query" is required`)
	}
	if utf8.RuneCountInString(*b.Query) > MaxSearchQueryChars {
		return 0, badInput(fmt.Sprintf(`"query" is longer than %d characters`, MaxSearchQueryChars))
	}
	if b.Limit != nil && (*b.Limit < 1 || *b.Limit > MaxSearchLimit) {
		return 0, badInput(fmt.Sprintf(`"limit" must be between 1 and %d`, MaxSearchLimit))
	}
	return 1, nil
}

func validURL(s string) bool {
	return (strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")) && len(s) <= MaxURLLength && len(s) > len("https://")
}

type extractBody struct {
	URL     *string        `json:"url,omitzero"`
	Options jsontext.Value `json:"options,omitzero"`
}

func (b *extractBody) units() (int64, error) {
	if b.URL == nil || !validURL(*b.URL) {
		return 0, badInput(`"url" must be an http or https URL`)
	}
	return 1, nil
}

type bulkBody struct {
	URLs    []string       `json:"urls,omitzero"`
	Options jsontext.Value `json:"options,omitzero"`
}

func (b *bulkBody) units() (int64, error) {
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

type ttsBody struct {
	Text  *string  `json:"text,omitzero"`
	Voice *string  `json:"voice,omitzero"`
	Speed *float64 `json:"speed,omitzero"`
}

func (b *ttsBody) units() (int64, error) {
	if b.Text == nil || *b.Text == "" {
		return 0, badInput(`"text" is required`)
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
