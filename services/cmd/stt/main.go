// Command stt is the local stand-in for mana-stt: it accepts WAV uploads and
// reports their duration with a placeholder transcript. See package stt.
//
// Settings: PORT (3020), MAX_UPLOAD_BYTES (209715200), LOG_LEVEL (info).
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/mana/apigw/services/cmd/internal/serve"
	"github.com/mana/apigw/services/stt"
)

func main() {
	os.Exit(serve.Main(serve.StandIn[stt.Config]{Name: "stt", DefaultPort: 3020, Config: loadConfig, Handler: stt.New,
		// Uploads of up to 200 MB need longer than the default read timeout.
		Options: serve.Options{ReadTimeout: 10 * time.Minute, WriteTimeout: 11 * time.Minute}}))
}

func loadConfig(getenv func(string) string, _ int) (stt.Config, error) {
	var cfg stt.Config
	if v := getenv("MAX_UPLOAD_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("MAX_UPLOAD_BYTES=%q: want a positive number of bytes", v)
		}
		cfg.MaxUploadBytes = n
	}
	return cfg, nil
}
