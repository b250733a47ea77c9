// Command webhookdev is a webhook receiver for development: register
// http://127.0.0.1:3040/hook with POST /webhooks, hand it the secret with
// POST /secrets, and it logs every verified webhook. See package webhookdev.
//
// Settings: PORT (3040), LOG_LEVEL (info).
package main

import (
	"log/slog"
	"net/http"
	"os"

	"github.com/mana/apigw/services/cmd/internal/serve"
	"github.com/mana/apigw/services/webhookdev"
)

func main() {
	os.Exit(serve.Main(serve.StandIn[webhookdev.Config]{Name: "webhookdev", DefaultPort: 3040,
		Handler: func(c webhookdev.Config, l *slog.Logger) (http.Handler, error) { return webhookdev.New(c, l) }}))
}
