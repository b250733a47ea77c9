package mgmt

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/auth"
	"github.com/mana/apigw/gateway/internal/keys"
)

// dateRange reads ?from=&to= (YYYY-MM-DD, UTC days, both inclusive).
// Defaults: to is today, from is 29 days before to.
func (h *Handler) dateRange(c echo.Context) (from, to time.Time, err error) {
	parse := func(name string) (time.Time, bool, error) {
		s := c.QueryParam(name)
		if s == "" {
			return time.Time{}, false, nil
		}
		t, err := time.Parse(time.DateOnly, s)
		if err != nil || len(s) != len(time.DateOnly) {
			return time.Time{}, false, apierr.New(apierr.Invalid, name+" must be a date YYYY-MM-DD")
		}
		return t, true, nil
	}
	to, toSet, err := parse("to")
	if err != nil {
		return from, to, err
	}
	from, fromSet, err := parse("from")
	if err != nil {
		return from, to, err
	}
	if !toSet {
		now := h.deps.Now().UTC()
		to = time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
		if fromSet && from.After(to) {
			to = from
		}
	}
	if !fromSet {
		from = to.AddDate(0, 0, -29)
	}
	if from.After(to) {
		return from, to, apierr.New(apierr.Unprocessable, "from must not be after to")
	}
	if days := int(to.Sub(from).Hours()/24) + 1; days > h.cfg.MaxRangeDays {
		return from, to, apierr.New(apierr.Unprocessable,
			fmt.Sprintf("the range from..to spans %d days; at most %d are allowed", days, h.cfg.MaxRangeDays))
	}
	return from, to, nil
}

// readableKey returns the key with the path's id if the caller may read
// its usage: its owner (undeleted), or finance and admin (any key).
func (h *Handler) readableKey(c echo.Context, who auth.Claims) (*keys.Key, error) {
	if !who.IsFinance() {
		return h.ownKey(c, who.Subject)
	}
	k, err := h.deps.Store.ByID(c.Request().Context(), c.Param("id"))
	if errors.Is(err, keys.ErrNotFound) {
		return nil, errKeyNotFound
	}
	if err != nil {
		return nil, internal("read api key", err)
	}
	return k, nil
}

type usageRow struct {
	Date     string `json:"date"`
	Endpoint string `json:"endpoint"`
	Requests int64  `json:"requests"`
	Credits  int64  `json:"credits"`
	Units    int64  `json:"units"`
	Errors   int64  `json:"errors"`
	// Granted is what credit grants added that day (in the row of endpoint
	// credits.grant); 0 in the rows of calls.
	Granted int64 `json:"granted"`
}

func (h *Handler) usage(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	k, err := h.readableKey(c, who)
	if err != nil {
		return err
	}
	from, to, err := h.dateRange(c)
	if err != nil {
		return err
	}
	rows, err := h.deps.DB.QueryContext(c.Request().Context(), `
		SELECT day, endpoint, requests, credits, units, errors, granted FROM api_gateway.api_usage_daily
		WHERE key_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day, endpoint`, k.ID, from, to)
	if err != nil {
		return internal("read daily usage", err)
	}
	defer rows.Close()
	out := struct {
		Data []usageRow `json:"data"`
	}{Data: []usageRow{}}
	for rows.Next() {
		var r usageRow
		var day time.Time
		if err := rows.Scan(&day, &r.Endpoint, &r.Requests, &r.Credits, &r.Units, &r.Errors, &r.Granted); err != nil {
			return internal("read daily usage", err)
		}
		r.Date = day.Format(time.DateOnly)
		out.Data = append(out.Data, r)
	}
	if err := rows.Err(); err != nil {
		return internal("read daily usage", err)
	}
	return c.JSON(http.StatusOK, out)
}

type endpointUsage struct {
	Endpoint string `json:"endpoint"`
	Requests int64  `json:"requests"`
	Credits  int64  `json:"credits"`
}

type summary struct {
	KeyID  string `json:"keyId"`
	Period struct {
		Start time.Time `json:"start"`
		End   time.Time `json:"end"`
	} `json:"period"`
	MonthlyCredits int64 `json:"monthlyCredits"`
	// GrantedCredits are what credit grants added to the period, as the
	// billing worker recorded them; the allowance is monthly + granted.
	GrantedCredits   int64           `json:"grantedCredits"`
	CreditsUsed      int64           `json:"creditsUsed"`
	CreditsRemaining int64           `json:"creditsRemaining"`
	Requests         int64           `json:"requests"`
	ByEndpoint       []endpointUsage `json:"byEndpoint"`
}

// summary answers the current UTC month: credits from the billing
// worker's balance, requests per endpoint from the daily aggregates.
func (h *Handler) summary(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	k, err := h.readableKey(c, who)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	var s summary
	s.KeyID = k.ID
	s.Period.Start = monthStart(h.deps.Now())
	s.Period.End = s.Period.Start.AddDate(0, 1, 0)
	used, err := h.creditsUsed(ctx, k.ID)
	if err != nil {
		return err
	}
	b := used[k.ID]
	s.MonthlyCredits, s.GrantedCredits, s.CreditsUsed = k.MonthlyCredits, b.grants, b.used
	s.CreditsRemaining = max(0, k.MonthlyCredits+b.grants-b.used)
	s.ByEndpoint = []endpointUsage{}
	rows, err := h.deps.DB.QueryContext(ctx, `
		SELECT endpoint, sum(requests), sum(credits) FROM api_gateway.api_usage_daily
		WHERE key_id = $1 AND day >= $2 AND day < $3 AND endpoint <> 'credits.grant' GROUP BY endpoint ORDER BY endpoint`,
		k.ID, s.Period.Start, s.Period.End)
	if err != nil {
		return internal("read usage summary", err)
	}
	defer rows.Close()
	for rows.Next() {
		var e endpointUsage
		if err := rows.Scan(&e.Endpoint, &e.Requests, &e.Credits); err != nil {
			return internal("read usage summary", err)
		}
		s.Requests += e.Requests
		s.ByEndpoint = append(s.ByEndpoint, e)
	}
	if err := rows.Err(); err != nil {
		return internal("read usage summary", err)
	}
	return c.JSON(http.StatusOK, s)
}

// requireFinance lets only the finance and admin roles through.
func requireFinance(c echo.Context) error {
	who, err := caller(c)
	if err != nil {
		return err
	}
	if !who.IsFinance() {
		return apierr.New(apierr.Forbidden, "the finance or admin role is required")
	}
	return nil
}

type billingRow struct {
	Date     string `json:"date"`
	KeyID    string `json:"keyId"`
	OwnerID  string `json:"ownerId"`
	Endpoint string `json:"endpoint"`
	Requests int64  `json:"requests"`
	Credits  int64  `json:"credits"`
	Units    int64  `json:"units"`
	Errors   int64  `json:"errors"`
	// Granted: credits added by credit grants (rows of endpoint credits.grant).
	Granted int64 `json:"granted"`
}

var csvHeader = []string{"date", "key_id", "owner_id", "endpoint", "requests", "credits", "units", "errors", "granted"}

// billingDaily streams every key's daily rows (finance and admin only) as
// JSON {"data": [...]} or, with format=csv, as CSV with a header row.
func (h *Handler) billingDaily(c echo.Context) error {
	if err := requireFinance(c); err != nil {
		return err
	}
	format := c.QueryParam("format")
	if format != "" && format != "json" && format != "csv" {
		return apierr.New(apierr.Invalid, "format must be json or csv")
	}
	from, to, err := h.dateRange(c)
	if err != nil {
		return err
	}
	var out billingWriter = &jsonBilling{w: c.Response()}
	if format == "csv" {
		out = &csvBilling{w: c.Response(), filename: fmt.Sprintf("billing-daily-%s-%s.csv",
			from.Format(time.DateOnly), to.Format(time.DateOnly))}
	}
	if err := h.billingRows(c.Request().Context(), from, to, out.Row); err != nil {
		return h.abort(c, err)
	}
	if err := out.End(); err != nil {
		return h.abort(c, fmt.Errorf("finish billing export: %w", err))
	}
	return nil
}

// billingRows calls each with every key's daily row of from..to, by day,
// key and endpoint, and stops at the first error.
func (h *Handler) billingRows(ctx context.Context, from, to time.Time, each func(billingRow) error) error {
	rows, err := h.deps.DB.QueryContext(ctx, `
		SELECT day, key_id, owner_id, endpoint, requests, credits, units, errors, granted
		FROM api_gateway.api_usage_daily WHERE day BETWEEN $1 AND $2 ORDER BY day, key_id, endpoint`, from, to)
	if err != nil {
		return internal("read billing rows", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r billingRow
		var day time.Time
		if err := rows.Scan(&day, &r.KeyID, &r.OwnerID, &r.Endpoint, &r.Requests, &r.Credits, &r.Units, &r.Errors, &r.Granted); err != nil {
			return fmt.Errorf("scan billing row: %w", err)
		}
		r.Date = day.Format(time.DateOnly)
		if err := each(r); err != nil {
			return fmt.Errorf("write billing row: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read billing rows: %w", err)
	}
	return nil
}

// billingWriter streams a billing export: Row for each row, then End once.
// The response is committed (status 200) by the first of them, so a query
// that fails before any row is still an ordinary error answer.
type billingWriter interface {
	Row(billingRow) error
	End() error
}

// jsonBilling writes {"data":[row,...]}, one row at a time.
type jsonBilling struct {
	w   *echo.Response
	enc *json.Encoder
}

func (j *jsonBilling) start() {
	j.w.Header().Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
	j.w.WriteHeader(http.StatusOK)
	j.enc = json.NewEncoder(j.w)
}

func (j *jsonBilling) Row(r billingRow) error {
	sep := ","
	if j.enc == nil {
		j.start()
		sep = `{"data":[`
	}
	if _, err := j.w.Write([]byte(sep)); err != nil {
		return err
	}
	return j.enc.Encode(r)
}

func (j *jsonBilling) End() error {
	end := "]}\n"
	if j.enc == nil {
		j.start()
		end = `{"data":[]}` + "\n"
	}
	_, err := j.w.Write([]byte(end))
	return err
}

// csvBilling writes a header row and then the rows, as an attachment named
// filename; its cells never start like a formula.
type csvBilling struct {
	w        *echo.Response
	filename string
	cw       *csv.Writer
}

func (b *csvBilling) start() error {
	b.w.Header().Set(echo.HeaderContentType, "text/csv; charset=utf-8")
	b.w.Header().Set(echo.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="%s"`, b.filename))
	b.w.WriteHeader(http.StatusOK)
	b.cw = csv.NewWriter(b.w)
	return b.cw.Write(csvHeader)
}

func (b *csvBilling) Row(r billingRow) error {
	if b.cw == nil {
		if err := b.start(); err != nil {
			return err
		}
	}
	return b.cw.Write([]string{r.Date, r.KeyID, csvCell(r.OwnerID), csvCell(r.Endpoint),
		strconv.FormatInt(r.Requests, 10), strconv.FormatInt(r.Credits, 10),
		strconv.FormatInt(r.Units, 10), strconv.FormatInt(r.Errors, 10), strconv.FormatInt(r.Granted, 10)})
}

func (b *csvBilling) End() error {
	if b.cw == nil {
		if err := b.start(); err != nil {
			return err
		}
	}
	b.cw.Flush()
	return b.cw.Error()
}

// abort ends a streamed answer that failed part way. Before the first byte
// it is an ordinary error; after, the connection is closed without the
// final chunk, so the client sees a broken transfer, never a short file
// that looks complete.
func (h *Handler) abort(c echo.Context, err error) error {
	if !c.Response().Committed {
		return err
	}
	h.logger.ErrorContext(context.WithoutCancel(c.Request().Context()), "billing export aborted", "err", err)
	if conn, _, herr := http.NewResponseController(c.Response()).Hijack(); herr == nil {
		_ = conn.Close()
	}
	return nil
}

// csvCell keeps a spreadsheet from reading a cell as a formula.
func csvCell(s string) string {
	if s != "" && (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@' || s[0] == '\t' || s[0] == '\r') {
		return "'" + s
	}
	return s
}

type billingKey struct {
	KeyID     string `json:"keyId"`
	OwnerID   string `json:"ownerId"`
	Name      string `json:"name"`
	KeyPrefix string `json:"keyPrefix"`
	Tier      string `json:"tier"`
	Deleted   bool   `json:"deleted"`
	Requests  int64  `json:"requests"`
	Credits   int64  `json:"credits"`
	Errors    int64  `json:"errors"`
}

// billingKeys answers the keys with usage in from..to (finance and admin
// only), most credits first, at most limit of them (default 10, at most 100).
func (h *Handler) billingKeys(c echo.Context) error {
	if err := requireFinance(c); err != nil {
		return err
	}
	limit, err := queryLimit(c, 10, 100)
	if err != nil {
		return err
	}
	from, to, err := h.dateRange(c)
	if err != nil {
		return err
	}
	rows, err := h.deps.DB.QueryContext(c.Request().Context(), `
		SELECT u.key_id, u.owner_id, k.name, k.key_prefix, k.tier, k.deleted_at IS NOT NULL,
			sum(u.requests), sum(u.credits), sum(u.errors)
		FROM api_gateway.api_usage_daily u JOIN api_gateway.api_keys k ON k.id = u.key_id
		WHERE u.day BETWEEN $1 AND $2
		GROUP BY u.key_id, u.owner_id, k.name, k.key_prefix, k.tier, k.deleted_at
		ORDER BY sum(u.credits) DESC, sum(u.requests) DESC, u.key_id LIMIT $3`, from, to, limit)
	if err != nil {
		return internal("read top keys", err)
	}
	defer rows.Close()
	out := struct {
		Data []billingKey `json:"data"`
	}{Data: []billingKey{}}
	for rows.Next() {
		var k billingKey
		if err := rows.Scan(&k.KeyID, &k.OwnerID, &k.Name, &k.KeyPrefix, &k.Tier, &k.Deleted, &k.Requests, &k.Credits, &k.Errors); err != nil {
			return internal("read top keys", err)
		}
		out.Data = append(out.Data, k)
	}
	if err := rows.Err(); err != nil {
		return internal("read top keys", err)
	}
	return c.JSON(http.StatusOK, out)
}
