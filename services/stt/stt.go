// Package stt is the local stand-in for mana-stt, the speech-to-text
// backend. It accepts a WAV upload, reads its duration from the header while
// streaming the samples past (never holding the file in memory), and answers
// with a placeholder transcript, the language and the duration. The gateway
// reaches it at STT_SERVICE_URL; a real STT backend with the same routes
// replaces it there.
//
// Routes:
//
//	POST /transcribe   multipart/form-data, audio in field "file" (WAV only);
//	                   optional fields "language" and "model" before it
//	                   -> {"text","language","durationSeconds","model"}
//	GET  /models       the models on offer
//	GET  /languages    the languages on offer
//	GET  /health       liveness
//
// The WAV header is decoded by package wavinfo, on a library of its own and
// not with the gateway's parser, so that a test through the gateway
// compares two readings; durations are counted in frames, as real decoders
// count them.
package stt

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/mana/apigw/services/httpjson"
)

// Defaults.
const (
	DefaultMaxUploadBytes = 200 << 20
	DefaultModel          = "standin-wav-1"
	DefaultLanguage       = "en"
)

// Config configures the STT stand-in; the zero value is usable.
type Config struct {
	// MaxUploadBytes caps a request body; default 200 MiB.
	MaxUploadBytes int64
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.MaxUploadBytes < 0 {
		errs = append(errs, fmt.Errorf("max upload bytes %d is negative", c.MaxUploadBytes))
	}
	return errors.Join(errs...)
}

// Language is one supported language.
type Language struct {
	Code string `json:"code"`
	Name string `json:"name"`
}

// Model is one transcription model.
type Model struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Languages   []string `json:"languages"`
	Default     bool     `json:"default"`
}

func languages() []Language {
	return []Language{
		{"en", "English"}, {"de", "German"}, {"fr", "French"}, {"es", "Spanish"},
		{"it", "Italian"}, {"nl", "Dutch"}, {"pt", "Portuguese"},
	}
}

func models() []Model {
	codes := make([]string, 0, len(languages()))
	for _, l := range languages() {
		codes = append(codes, l.Code)
	}
	return []Model{{
		ID:          DefaultModel,
		Name:        "Stand-in WAV reader",
		Description: "Reads the WAV header and returns a placeholder transcript with the exact duration; no recognition.",
		Languages:   codes,
		Default:     true,
	}}
}

type service struct {
	cfg    Config
	logger *slog.Logger
	langs  map[string]bool
	models map[string]bool
}

// New validates cfg and returns the stand-in's HTTP handler.
func New(cfg Config, logger *slog.Logger) (http.Handler, error) {
	if logger == nil {
		return nil, errors.New("stt: logger is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("stt config: %w", err)
	}
	if cfg.MaxUploadBytes == 0 {
		cfg.MaxUploadBytes = DefaultMaxUploadBytes
	}
	s := &service{cfg: cfg, logger: logger, langs: map[string]bool{}, models: map[string]bool{}}
	for _, l := range languages() {
		s.langs[l.Code] = true
	}
	for _, m := range models() {
		s.models[m.ID] = true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /transcribe", s.handleTranscribe)
	mux.HandleFunc("GET /models", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]any{"models": models()})
	})
	mux.HandleFunc("GET /languages", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]any{"languages": languages()})
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Problem(w, http.StatusNotFound, "Not Found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux, nil
}
