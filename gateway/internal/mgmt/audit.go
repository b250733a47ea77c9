package mgmt

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/audit"
)

// auditTrail answers the audit trail from..to (UTC days, inclusive), oldest
// first: every row for finance and admin, an owner's own otherwise.
func (h *Handler) auditTrail(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	from, to, err := h.dateRange(c)
	if err != nil {
		return err
	}
	limit, err := queryLimit(c, 100, 1000)
	if err != nil {
		return err
	}
	owner := who.Subject
	if who.IsFinance() {
		owner = ""
	}
	rows := []audit.Row{}
	if err := h.deps.DB.SelectContext(c.Request().Context(), &rows, `SELECT seq, at, actor, owner_id, request_id, action,
		target_type, target_id, coalesce(before, 'null') AS before, coalesce(after, 'null') AS after, prev_hash, hash FROM api_gateway.audit_log
		WHERE at >= $1 AND at < $2 AND ($3 = '' OR owner_id = $3) ORDER BY seq LIMIT $4`,
		from, to.AddDate(0, 0, 1), owner, limit); err != nil {
		return internal("read the audit trail", err)
	}
	for i := range rows {
		rows[i].At = rows[i].At.UTC()
	}
	return c.JSON(http.StatusOK, struct {
		Data []audit.Row `json:"data"`
	}{rows})
}
