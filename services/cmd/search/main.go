// Command search is the local stand-in for mana-search: BM25 over a shipped
// corpus and SSRF-guarded page extraction. See package search.
//
// Settings: PORT (3021), PUBLIC_URL (http://localhost:$PORT; the base of
// result links), EXTRACT_ALLOW_HOSTS (comma-separated host:port that
// extraction may reach although they are not public, e.g. localhost:3021 for
// the stand-in's own pages), EXTRACT_TIMEOUT (10s), LOG_LEVEL (info).
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mana/apigw/services/cmd/internal/serve"
	"github.com/mana/apigw/services/search"
)

func main() {
	os.Exit(serve.Main(serve.StandIn[search.Config]{Name: "search", DefaultPort: 3021, Config: loadConfig, Handler: search.New}))
}

func loadConfig(getenv func(string) string, port int) (search.Config, error) {
	cfg := search.Config{PublicURL: getenv("PUBLIC_URL")}
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://localhost:" + strconv.Itoa(port)
	}
	for _, hp := range strings.Split(getenv("EXTRACT_ALLOW_HOSTS"), ",") {
		if hp = strings.TrimSpace(hp); hp != "" {
			cfg.ExtractAllowHosts = append(cfg.ExtractAllowHosts, hp)
		}
	}
	if v := getenv("EXTRACT_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return cfg, fmt.Errorf("EXTRACT_TIMEOUT=%q: want a positive duration like 10s", v)
		}
		cfg.ExtractTimeout = d
	}
	return cfg, nil
}
