package server

import (
	"log/slog"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/config"
)

// Management builds the management API's registration from the settings.
func Management(cfg config.Config, logger *slog.Logger) func(e *echo.Echo, deps MgmtDeps) error {
	return nil
}
