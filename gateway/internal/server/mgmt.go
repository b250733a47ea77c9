package server

import (
	"context"
	"log/slog"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/auth"
	"github.com/mana/apigw/gateway/internal/config"
	"github.com/mana/apigw/gateway/internal/mgmt"
)

// Management builds the management API (JWT-protected, verified against
// the issuer's JWKS) and registers it; ctx bounds the JWKS refresher.
func Management(ctx context.Context, cfg config.Config, logger *slog.Logger) func(e *echo.Echo, deps MgmtDeps) error {
	return func(e *echo.Echo, deps MgmtDeps) error {
		v, err := auth.NewVerifier(ctx, auth.VerifierConfig{
			JWKSURL:  cfg.AuthURL.JoinPath("/.well-known/jwks.json").String(),
			Issuer:   cfg.JWTIssuer,
			Audience: cfg.JWTAudience,
		}, logger)
		if err != nil {
			return err
		}
		h, err := mgmt.New(mgmt.Config{}, mgmt.Deps{
			Store: deps.Store, DB: deps.DB, Hasher: deps.Hasher, Tiers: deps.Pricing, State: deps.Quota,
		}, logger)
		if err != nil {
			return err
		}
		h.Register(e, auth.Middleware(v))
		return nil
	}
}
