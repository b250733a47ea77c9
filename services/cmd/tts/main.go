// Command tts is the local stand-in for mana-tts: it speaks with espeak-ng
// when installed, otherwise with a generated waveform. See package tts.
//
// Settings: PORT (3022), TTS_ENGINE (auto | espeak | tone), LOG_LEVEL (info).
package main

import (
	"fmt"
	"os"

	"github.com/mana/apigw/services/cmd/internal/serve"
	"github.com/mana/apigw/services/tts"
)

func main() {
	os.Exit(serve.Main(serve.StandIn[tts.Config]{Name: "tts", DefaultPort: 3022, Config: loadConfig, Handler: tts.New}))
}

func loadConfig(getenv func(string) string, _ int) (tts.Config, error) {
	cfg := tts.Config{Engine: getenv("TTS_ENGINE")}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("TTS_ENGINE: %w", err)
	}
	return cfg, nil
}
