package mgmt

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

// TierInfo is one tier as GET /tiers shows it: its limits and the
// endpoints its keys may call, with their prices.
type TierInfo struct {
	Name               string         `json:"name"`
	RateLimitPerMinute int            `json:"rateLimitPerMinute"`
	MonthlyCredits     int64          `json:"monthlyCredits"`
	Endpoints          []EndpointInfo `json:"endpoints"`
}

// EndpointInfo is one public endpoint and its price: Credits per Per
// units of Unit, rounded up.
type EndpointInfo struct {
	Method    string `json:"method"`
	Path      string `json:"path"`
	Operation string `json:"operation"`
	Unit      string `json:"unit"`
	Credits   int64  `json:"credits"`
	Per       int64  `json:"per"`
}

type meResponse struct {
	Subject string `json:"subject"`
	Email   string `json:"email,omitempty"`
	Role    string `json:"role,omitempty"`
	// Finance reports whether the caller may read every key's usage.
	Finance bool `json:"finance"`
}

// me answers who the token says the caller is, as the gateway verified it.
func (h *Handler) me(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, meResponse{Subject: who.Subject, Email: who.Email, Role: who.Role, Finance: who.IsFinance()})
}

func (h *Handler) tiers(c echo.Context) error {
	if _, err := caller(c); err != nil {
		return err
	}
	out := struct {
		Data []TierInfo `json:"data"`
	}{Data: h.deps.Catalog}
	if out.Data == nil {
		out.Data = []TierInfo{}
	}
	return c.JSON(http.StatusOK, out)
}
