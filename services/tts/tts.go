// Package tts is the local stand-in for mana-tts, the text-to-speech backend.
// It speaks with espeak-ng when that program is on PATH and otherwise with a
// generated waveform whose length follows the text (about 15 characters per
// second), so tests and the local stack work on a machine without it. The
// answer is always a PCM WAV file with a truthful header, streamed. The
// gateway reaches it at TTS_SERVICE_URL; a real TTS backend with the same
// routes replaces it there.
//
// Routes:
//
//	POST /synthesize  {"text","voice"} -> audio/wav
//	GET  /voices      the voices ("en-US-1" is the default)
//	GET  /languages   the languages the voices cover
//	GET  /health      liveness
package tts

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os/exec"
	"time"

	"github.com/mana/apigw/services/httpjson"
)

// Engines.
const (
	EngineAuto   = "auto"   // espeak-ng if found on PATH, else tone
	EngineEspeak = "espeak" // espeak-ng; fails to start without it
	EngineTone   = "tone"   // the built-in waveform generator
)

// Defaults.
const (
	DefaultVoice    = "en-US-1"
	DefaultMaxChars = 10_000
	maxRequestBody  = 256 << 10
)

// Config configures the TTS stand-in; the zero value is usable.
type Config struct {
	// Engine is EngineAuto (default), EngineEspeak or EngineTone.
	Engine string
	// EspeakPath is the espeak-ng binary; default: looked up on PATH.
	EspeakPath string
	// MaxChars caps the text in Unicode code points; default 10,000.
	MaxChars int
	// SynthesisTimeout bounds one espeak-ng run; default 30s.
	SynthesisTimeout time.Duration
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	switch c.Engine {
	case "", EngineAuto, EngineEspeak, EngineTone:
	default:
		errs = append(errs, fmt.Errorf("engine %q: want auto, espeak or tone", c.Engine))
	}
	if c.MaxChars < 0 {
		errs = append(errs, fmt.Errorf("max chars %d is negative", c.MaxChars))
	}
	if c.SynthesisTimeout < 0 {
		errs = append(errs, fmt.Errorf("synthesis timeout %v is negative", c.SynthesisTimeout))
	}
	return errors.Join(errs...)
}

// Voice is one voice on offer.
type Voice struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Language string `json:"language"`
	Gender   string `json:"gender"`
	espeak   string // espeak-ng voice name
	pitch    float64
}

// Language is one language the voices cover.
type Language struct {
	Code string `json:"code"`
	Name string `json:"name"`
}

func voices() []Voice {
	return []Voice{
		{ID: "en-US-1", Name: "English (US) 1", Language: "en-US", Gender: "female", espeak: "en-us+f3", pitch: 220},
		{ID: "en-US-2", Name: "English (US) 2", Language: "en-US", Gender: "male", espeak: "en-us+m3", pitch: 120},
		{ID: "en-GB-1", Name: "English (UK) 1", Language: "en-GB", Gender: "male", espeak: "en-gb", pitch: 130},
		{ID: "de-DE-1", Name: "Deutsch 1", Language: "de-DE", Gender: "female", espeak: "de+f2", pitch: 210},
		{ID: "fr-FR-1", Name: "Français 1", Language: "fr-FR", Gender: "male", espeak: "fr", pitch: 125},
		{ID: "es-ES-1", Name: "Español 1", Language: "es-ES", Gender: "female", espeak: "es+f4", pitch: 230},
	}
}

func languages() []Language {
	return []Language{
		{"en-US", "English (US)"}, {"en-GB", "English (UK)"}, {"de-DE", "German"},
		{"fr-FR", "French"}, {"es-ES", "Spanish"},
	}
}

type service struct {
	cfg    Config
	logger *slog.Logger
	voices map[string]Voice
	espeak string // path; empty means the tone engine
}

// New validates cfg, picks the engine and returns the stand-in's handler.
func New(cfg Config, logger *slog.Logger) (http.Handler, error) {
	if logger == nil {
		return nil, errors.New("tts: logger is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tts config: %w", err)
	}
	if cfg.MaxChars == 0 {
		cfg.MaxChars = DefaultMaxChars
	}
	if cfg.SynthesisTimeout == 0 {
		cfg.SynthesisTimeout = 30 * time.Second
	}
	s := &service{cfg: cfg, logger: logger, voices: map[string]Voice{}}
	for _, v := range voices() {
		s.voices[v.ID] = v
	}
	switch cfg.Engine {
	case "", EngineAuto, EngineEspeak:
		path := cfg.EspeakPath
		if path == "" {
			path = "espeak-ng"
		}
		found, err := exec.LookPath(path)
		switch {
		case err == nil:
			s.espeak = found
		case cfg.Engine == EngineEspeak:
			return nil, fmt.Errorf("tts: engine espeak: %w", err)
		}
	}
	engine := EngineTone
	if s.espeak != "" {
		engine = EngineEspeak
	}
	logger.Info("tts engine", "engine", engine)

	mux := http.NewServeMux()
	mux.HandleFunc("POST /synthesize", s.handleSynthesize)
	mux.HandleFunc("GET /voices", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]any{"voices": voices()})
	})
	mux.HandleFunc("GET /languages", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]any{"languages": languages()})
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok", "engine": engine})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Problem(w, http.StatusNotFound, "Not Found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux, nil
}
