package quota

import (
	"fmt"
	"time"

	"github.com/mana/apigw/gateway/internal/apierr"
)

// The script's refusals, as the client is told of them (Decision.Err).
var (
	// ErrRevoked: the secret is not (or no longer) the key's, or the key was deleted.
	ErrRevoked = apierr.New(apierr.KeyRefused, "API key revoked or unknown")
	// ErrExpired: the key's expiresAt has passed.
	ErrExpired = apierr.New(apierr.KeyRefused, "API key expired")
	// ErrInactive: the owner deactivated the key.
	ErrInactive = apierr.New(apierr.Forbidden, "API key is deactivated")
	// ErrForbidden: the key's tier does not include the route.
	ErrForbidden = apierr.New(apierr.Forbidden, "this endpoint is not included in the key's tier")
	// ErrRateLimited: the key's window is full.
	ErrRateLimited = apierr.New(apierr.RateLimited, "rate limit exceeded")
	// ErrInsufficient: the key's credits do not cover the call's cost.
	ErrInsufficient = apierr.New(apierr.CreditsExhausted, "not enough credits for this call")
	// ErrUnavailable: Redis cannot be reached, so a call that costs credits
	// cannot be held for.
	ErrUnavailable = apierr.New(apierr.Unavailable, "credit accounting is unavailable; try again shortly").RetryIn(5 * time.Second)
)

// Err is the decision's refusal, nil for OK: one of the errors above, told
// with the decision's limit, balance and wait.
func (d Decision) Err() error {
	switch d.Outcome {
	case OK:
		return nil
	case Unknown, Deleted:
		return ErrRevoked
	case Expired:
		return ErrExpired
	case Inactive:
		return ErrInactive
	case Forbidden:
		return ErrForbidden
	case RateLimited:
		return ErrRateLimited.WithDetail(fmt.Sprintf("rate limit of %d requests per minute exceeded", d.Limit)).RetryIn(d.RetryAfter)
	case Insufficient:
		return ErrInsufficient.WithDetail(fmt.Sprintf("not enough credits for this call (%d remaining)", d.Credits)).
			RetryIn(PeriodEnd(d.Now).Sub(d.Now))
	}
	return fmt.Errorf("unexpected quota outcome %d", d.Outcome)
}

// PeriodEnd is the start of the credit month after now's (UTC).
func PeriodEnd(now time.Time) time.Time {
	y, m, _ := now.UTC().Date()
	return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
}
