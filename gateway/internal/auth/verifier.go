// Package auth owns the management API's caller identity: it verifies
// bearer JWTs locally against the issuer's JWKS (algorithm pinned by the
// JWK, issuer, audience and expiry required) and hands the caller's claims
// to handlers through an Echo middleware.
package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// MaxTokenLen caps the length of a token; longer ones are refused before
// any parsing.
const MaxTokenLen = 8 << 10

// Sentinel errors of Verify; every one means "401".
var (
	// ErrInvalidToken: the token is malformed, badly signed, or its claims
	// (issuer, audience, subject) are wrong.
	ErrInvalidToken = errors.New("invalid token")
	// ErrExpiredToken: the token is well formed and signed but expired.
	ErrExpiredToken = errors.New("token expired")
)

// Roles the management API knows.
const (
	RoleAdmin   = "admin"
	RoleFinance = "finance"
)

// Claims is what handlers learn about the caller.
type Claims struct {
	// Subject is the caller's user ID; it owns the keys it creates.
	Subject string
	Email   string
	// Role is the "role" claim ("", "finance", "admin", ...).
	Role string
}

// IsFinance reports whether the caller may read every key's usage.
func (c Claims) IsFinance() bool { return c.Role == RoleFinance || c.Role == RoleAdmin }

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// JWKSURL is the issuer's JWK Set, e.g. MANA_CORE_AUTH_URL + "/.well-known/jwks.json".
	JWKSURL  string
	Issuer   string
	Audience string
	// HTTPClient fetches the JWKS; nil means a client with HTTPTimeout.
	HTTPClient *http.Client
	// HTTPTimeout bounds one JWKS fetch (default 5s).
	HTTPTimeout time.Duration
	// RefreshUnknownKIDRate is the least time between two JWKS refreshes
	// triggered by a token with an unknown kid (default 1m), so forged kids
	// cannot turn into a request flood against the issuer.
	RefreshUnknownKIDRate time.Duration
	// RefreshInterval is the periodic JWKS refresh (default 1h).
	RefreshInterval time.Duration
	// Leeway is the clock skew allowed on exp/nbf/iat (default 30s, at most 5m).
	Leeway time.Duration
}

func (c *VerifierConfig) defaults() {
	if c.HTTPTimeout <= 0 {
		c.HTTPTimeout = 5 * time.Second
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: c.HTTPTimeout}
	}
	if c.RefreshUnknownKIDRate <= 0 {
		c.RefreshUnknownKIDRate = time.Minute
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = time.Hour
	}
	if c.Leeway == 0 {
		c.Leeway = 30 * time.Second
	}
}

// Validate reports every problem of the configuration at once.
func (c VerifierConfig) Validate() error {
	var errs []error
	if u, err := url.Parse(c.JWKSURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("JWKS URL %q must be an absolute http(s) URL", c.JWKSURL))
	}
	if c.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	if c.Audience == "" {
		errs = append(errs, errors.New("audience is required"))
	}
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		errs = append(errs, fmt.Errorf("leeway %s must be between 0 and 5m", c.Leeway))
	}
	return errors.Join(errs...)
}

// Verifier verifies bearer JWTs. Safe for concurrent use.
type Verifier struct {
	storage jwkset.Storage
	parser  *jwt.Parser
	logger  *slog.Logger
}

// asymmetric lists the algorithms a JWK may pin; symmetric (HS*) and none
// are never accepted, whatever a token or a JWK says.
var asymmetric = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// NewVerifier returns a Verifier that fetches the JWKS now and then in the
// background until ctx ends. An issuer that is down at start is not an
// error: the first token with an unknown kid triggers a fetch.
func NewVerifier(ctx context.Context, cfg VerifierConfig, logger *slog.Logger) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("jwt verifier config: %w", err)
	}
	if logger == nil {
		return nil, errors.New("jwt verifier: logger is required")
	}
	cfg.defaults()
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
		Client:      cfg.HTTPClient,
		HTTPTimeout: cfg.HTTPTimeout,
		// The wait for the limiter shares its deadline with the refresh
		// fetch; a refresh that is not allowed within it fails fast.
		RateLimitWaitMax: cfg.HTTPTimeout,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(ctx context.Context, err error) {
				logger.WarnContext(ctx, "refresh JWKS", "url", u, "err", err)
			}
		},
		RefreshInterval:   cfg.RefreshInterval,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(cfg.RefreshUnknownKIDRate), 1),
	})
	if err != nil {
		return nil, fmt.Errorf("jwt verifier: %w", err)
	}
	return &Verifier{
		storage: kf.Storage(),
		parser: jwt.NewParser(
			jwt.WithValidMethods(asymmetric),
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience),
			jwt.WithExpirationRequired(),
			jwt.WithLeeway(cfg.Leeway),
		),
		logger: logger,
	}, nil
}

type tokenClaims struct {
	jwt.RegisteredClaims
	Email string `json:"email,omitempty"`
	Role  string `json:"role,omitempty"`
}

// Verify checks token and returns its claims, or ErrInvalidToken or
// ErrExpiredToken (wrapping the cause). The token's algorithm must be the
// one its JWK declares (or the only one the JWK's key type allows).
func (v *Verifier) Verify(ctx context.Context, token string) (Claims, error) {
	if token == "" || len(token) > MaxTokenLen {
		return Claims{}, fmt.Errorf("%w: length %d", ErrInvalidToken, len(token))
	}
	var tc tokenClaims
	_, err := v.parser.ParseWithClaims(token, &tc, v.keyfunc(ctx))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, fmt.Errorf("%w: %w", ErrExpiredToken, err)
	case err != nil:
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if tc.Subject == "" || len(tc.Subject) > 256 {
		return Claims{}, fmt.Errorf("%w: subject missing or too long", ErrInvalidToken)
	}
	return Claims{Subject: tc.Subject, Email: tc.Email, Role: tc.Role}, nil
}

// keyfunc picks the verification key by kid and pins the algorithm to the
// JWK's: a token whose alg differs from its key's is refused here even if
// the parser's allowlist would accept it.
func (v *Verifier) keyfunc(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		alg := t.Method.Alg()
		kidValue, hasKID := t.Header["kid"]
		if !hasKID {
			// No kid: every key of the set whose algorithm is alg.
			all, err := v.storage.KeyReadAll(ctx)
			if err != nil {
				return nil, fmt.Errorf("read JWKS: %w", err)
			}
			var set jwt.VerificationKeySet
			for _, jwk := range all {
				if key, ok := pinned(jwk, alg); ok {
					set.Keys = append(set.Keys, key)
				}
			}
			if len(set.Keys) == 0 {
				return nil, fmt.Errorf("no JWK for alg %q", alg)
			}
			return set, nil
		}
		kid, ok := kidValue.(string)
		if !ok || kid == "" || len(kid) > 256 {
			return nil, errors.New("kid must be a short non-empty string")
		}
		jwk, err := v.storage.KeyRead(ctx, kid)
		if err != nil {
			return nil, fmt.Errorf("read JWK: %w", err)
		}
		key, ok := pinned(jwk, alg)
		if !ok {
			return nil, fmt.Errorf("token alg %q does not match its JWK", alg)
		}
		return key, nil
	}
}

// pinned returns jwk's public key if alg is the JWK's algorithm: its "alg"
// member, or, when absent, the one algorithm its key type implies.
func pinned(jwk jwkset.JWK, alg string) (crypto.PublicKey, bool) {
	key := jwk.Key()
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
		key = pk.Public()
	}
	want := jwk.Marshal().ALG.String()
	implied := ""
	switch k := key.(type) {
	case *rsa.PublicKey:
		implied = "RS256"
		if want != "" && !strings.HasPrefix(want, "RS") && !strings.HasPrefix(want, "PS") {
			return nil, false
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			implied = "ES256"
		case elliptic.P384():
			implied = "ES384"
		case elliptic.P521():
			implied = "ES512"
		}
		if want != "" && want != implied {
			return nil, false
		}
	case ed25519.PublicKey:
		implied = "EdDSA"
		if want != "" && want != implied {
			return nil, false
		}
	default:
		return nil, false // symmetric or unknown key types never verify
	}
	if want == "" {
		want = implied
	}
	if want != alg {
		return nil, false
	}
	return key, true
}
