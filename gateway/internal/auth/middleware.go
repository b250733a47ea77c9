package auth

import (
	"errors"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/apierr"
)

const claimsKey = "auth.claims"

// The refusals of a bearer token, as the client is told of them; every one
// is a 401 with `WWW-Authenticate: Bearer error="invalid_token"` (see
// package apierr's table).
var (
	errMissingToken = apierr.New(apierr.TokenRefused, "missing bearer token")
	errBadToken     = apierr.New(apierr.TokenRefused, "invalid bearer token")
	errTokenExpired = apierr.New(apierr.TokenRefused, "bearer token expired")
)

// Middleware authenticates every request with `Authorization: Bearer <JWT>`
// and stores the claims for ClaimsFrom. Any failure is returned as one of
// the errors above, written as problem+json by the error handler. The token
// is never logged.
func Middleware(v *Verifier) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			token, ok := bearer(c.Request().Header.Get(echo.HeaderAuthorization))
			if !ok {
				return errMissingToken
			}
			claims, err := v.Verify(c.Request().Context(), token)
			if err != nil {
				v.logger.DebugContext(c.Request().Context(), "bearer token refused", "reason", err.Error())
				if errors.Is(err, ErrExpiredToken) {
					return errTokenExpired
				}
				return errBadToken
			}
			c.Set(claimsKey, claims)
			return next(c)
		}
	}
}

// ClaimsFrom returns the claims Middleware stored; ok is false on a route
// without the middleware.
func ClaimsFrom(c echo.Context) (Claims, bool) {
	claims, ok := c.Get(claimsKey).(Claims)
	return claims, ok
}

func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
