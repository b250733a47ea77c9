// Command authdev is the development auth issuer (stand-in for mana-core-auth):
// it logs in the dev users and serves its JWKS for the gateway to verify
// management tokens. See package authdev.
//
// Settings: PORT (3001), JWT_ISSUER (mana-core-auth), JWT_AUDIENCE
// (mana-api-gateway), AUTH_KEY_FILE (optional; keeps the signing key across
// restarts), LOG_LEVEL (info).
package main

import (
	"os"

	"github.com/mana/apigw/services/authdev"
	"github.com/mana/apigw/services/cmd/internal/serve"
)

func main() {
	os.Exit(serve.Main(serve.StandIn[authdev.Config]{Name: "authdev", DefaultPort: 3001, Config: loadConfig, Handler: authdev.New}))
}

func loadConfig(getenv func(string) string, _ int) (authdev.Config, error) {
	cfg := authdev.Config{Issuer: authdev.DefaultIssuer, Audience: authdev.DefaultAudience, KeyFile: getenv("AUTH_KEY_FILE")}
	if v := getenv("JWT_ISSUER"); v != "" {
		cfg.Issuer = v
	}
	if v := getenv("JWT_AUDIENCE"); v != "" {
		cfg.Audience = v
	}
	return cfg, nil
}
