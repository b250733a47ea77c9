package auth

import (
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

const claimsKey = "auth.claims"

// Middleware authenticates every request with `Authorization: Bearer <JWT>`
// and stores the claims for ClaimsFrom. Any failure is a 401 (an
// *echo.HTTPError, written as problem+json by the error handler) with
// `WWW-Authenticate: Bearer error="invalid_token"`. The token is never logged.
func Middleware(v *Verifier) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			token, ok := bearer(c.Request().Header.Get(echo.HeaderAuthorization))
			if !ok {
				c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer error="invalid_token"`)
				return echo.NewHTTPError(http.StatusUnauthorized, "missing bearer token")
			}
			claims, err := v.Verify(c.Request().Context(), token)
			if err != nil {
				v.logger.DebugContext(c.Request().Context(), "bearer token refused", "reason", err.Error())
				c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer error="invalid_token"`)
				detail := "invalid bearer token"
				if errors.Is(err, ErrExpiredToken) {
					detail = "bearer token expired"
				}
				return echo.NewHTTPError(http.StatusUnauthorized, detail)
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
