// Package authdev is the development stand-in for mana-core-auth: it logs in a
// fixed set of dev users and issues RS256 JWTs for them, and it serves the
// public signing key as a JWKS at /.well-known/jwks.json. The gateway verifies
// management-API tokens against that JWKS (MANA_CORE_AUTH_URL); in production
// the real auth service takes its place at the same URL.
//
// Gateway tests use NewIssuer in-process: Issuer.Handler serves the JWKS and
// Issuer.Token / Issuer.Sign mint tokens without a login round trip.
package authdev

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Defaults shared with the gateway's settings.
const (
	DefaultIssuer   = "mana-core-auth"
	DefaultAudience = "mana-api-gateway"
	DefaultTokenTTL = time.Hour
	// DevPassword is the password of every dev user.
	DevPassword = "password"
)

// ErrUnknownUser is returned by Token for an email that is not a dev user.
var ErrUnknownUser = errors.New("authdev: unknown user")

// User is a dev account.
type User struct {
	ID       string // the token's sub; stable across restarts
	Email    string
	Password string
	Role     string // "user", "finance" or "admin"
}

// DevUsers returns the built-in accounts; all have the password DevPassword.
func DevUsers() []User {
	return []User{
		{ID: "user-1", Email: "user@example.com", Password: DevPassword, Role: "user"},
		{ID: "user-2", Email: "other@example.com", Password: DevPassword, Role: "user"},
		{ID: "user-3", Email: "finance@example.com", Password: DevPassword, Role: "finance"},
		{ID: "user-4", Email: "admin@example.com", Password: DevPassword, Role: "admin"},
	}
}

// Config configures an Issuer. The zero value is usable: defaults fill in
// the issuer, audience, TTL and users, and a fresh key is generated.
type Config struct {
	Issuer   string        // iss claim; default DefaultIssuer
	Audience string        // aud claim; default DefaultAudience
	TokenTTL time.Duration // exp - iat; default DefaultTokenTTL
	// KeyFile, when set, holds the RSA signing key as PKCS#8 PEM. It is read
	// if it exists, otherwise a new key is generated and written there
	// (mode 0600), so tokens survive a restart.
	KeyFile string
	// Users replaces DevUsers when non-empty.
	Users []User
	// Logger receives login outcomes (never passwords or tokens). Nil
	// discards them.
	Logger *slog.Logger
	// Now is the clock for iat/exp; default time.Now.
	Now func() time.Time
}

func (c *Config) withDefaults() {
	if c.Issuer == "" {
		c.Issuer = DefaultIssuer
	}
	if c.Audience == "" {
		c.Audience = DefaultAudience
	}
	if c.TokenTTL == 0 {
		c.TokenTTL = DefaultTokenTTL
	}
	if len(c.Users) == 0 {
		c.Users = DevUsers()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.TokenTTL < 0 {
		errs = append(errs, fmt.Errorf("token TTL %v is negative", c.TokenTTL))
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		email := strings.ToLower(u.Email)
		switch {
		case u.ID == "" || u.Email == "" || u.Password == "" || u.Role == "":
			errs = append(errs, fmt.Errorf("user %d: id, email, password and role are required", i))
		case seen[email]:
			errs = append(errs, fmt.Errorf("user %d: duplicate email %q", i, u.Email))
		}
		seen[email] = true
	}
	return errors.Join(errs...)
}

// Issuer signs tokens with one RSA key and publishes its public half.
// It is safe for concurrent use.
type Issuer struct {
	cfg   Config
	key   *rsa.PrivateKey
	kid   string
	jwks  []byte
	users map[string]userEntry // by lower-case email
	// dummy is compared against when the email is unknown, so a miss takes
	// as long as a wrong password.
	dummy [sha256.Size]byte
}

type userEntry struct {
	User
	pwHash [sha256.Size]byte
}

// NewIssuer loads or generates the signing key and prepares the JWKS.
func NewIssuer(cfg Config) (*Issuer, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("authdev config: %w", err)
	}
	key, err := loadOrCreateKey(cfg.KeyFile, cfg.Logger)
	if err != nil {
		return nil, err
	}
	kid := thumbprint(&key.PublicKey)
	jwk, err := jwkset.NewJWKFromKey(&key.PublicKey, jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{ALG: jwkset.AlgRS256, KID: kid, USE: jwkset.UseSig},
	})
	if err != nil {
		return nil, fmt.Errorf("build JWK: %w", err)
	}
	jwks, err := json.Marshal(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{jwk.Marshal()}})
	if err != nil {
		return nil, fmt.Errorf("marshal JWKS: %w", err)
	}
	is := &Issuer{cfg: cfg, key: key, kid: kid, jwks: jwks, users: map[string]userEntry{}}
	for _, u := range cfg.Users {
		is.users[strings.ToLower(u.Email)] = userEntry{User: u, pwHash: sha256.Sum256([]byte(u.Password))}
	}
	if _, err := rand.Read(is.dummy[:]); err != nil {
		return nil, fmt.Errorf("dummy hash: %w", err)
	}
	return is, nil
}

// KeyID is the kid header of every token and the kid of the JWKS entry.
func (is *Issuer) KeyID() string { return is.kid }

// PublicKey is the key tokens verify against.
func (is *Issuer) PublicKey() *rsa.PublicKey { return &is.key.PublicKey }

// JWKS returns the JSON Web Key Set document served at /.well-known/jwks.json.
func (is *Issuer) JWKS() []byte { return append([]byte(nil), is.jwks...) }

// Issuer returns the iss claim the tokens carry.
func (is *Issuer) Issuer() string { return is.cfg.Issuer }

// Audience returns the aud claim the tokens carry.
func (is *Issuer) Audience() string { return is.cfg.Audience }

// Sign signs claims exactly as given (tests use it for expired, foreign or
// malformed tokens) with RS256 and the issuer's kid.
func (is *Issuer) Sign(claims jwt.MapClaims) (string, error) {
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = is.kid
	s, err := tok.SignedString(is.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// Claims returns the standard claims for a user, issued now.
func (is *Issuer) Claims(u User) jwt.MapClaims {
	now := is.cfg.Now()
	return jwt.MapClaims{
		"iss":   is.cfg.Issuer,
		"aud":   is.cfg.Audience,
		"sub":   u.ID,
		"email": u.Email,
		"role":  u.Role,
		"iat":   now.Unix(),
		"exp":   now.Add(is.cfg.TokenTTL).Unix(),
	}
}

// Token mints a valid token for the dev user with this email, without a
// password. It returns ErrUnknownUser for other emails.
func (is *Issuer) Token(email string) (string, error) {
	u, ok := is.users[strings.ToLower(email)]
	if !ok {
		return "", fmt.Errorf("%w: %q", ErrUnknownUser, email)
	}
	return is.Sign(is.Claims(u.User))
}

// Login checks an email and password in constant time (for a given password
// length, whether or not the email exists) and returns the user.
func (is *Issuer) Login(email, password string) (User, bool) {
	got := sha256.Sum256([]byte(password))
	u, ok := is.users[strings.ToLower(email)]
	want := is.dummy
	if ok {
		want = u.pwHash
	}
	match := subtle.ConstantTimeCompare(got[:], want[:]) == 1
	if !ok || !match {
		return User{}, false
	}
	return u.User, true
}

// thumbprint is the RFC 7638 JWK thumbprint of an RSA public key.
func thumbprint(pub *rsa.PublicKey) string {
	e := base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes())
	n := base64.RawURLEncoding.EncodeToString(pub.N.Bytes())
	sum := sha256.Sum256([]byte(`{"e":"` + e + `","kty":"RSA","n":"` + n + `"}`))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func loadOrCreateKey(path string, logger *slog.Logger) (*rsa.PrivateKey, error) {
	if path != "" {
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			key, err := parseKey(data)
			if err != nil {
				return nil, fmt.Errorf("signing key %s: %w", path, err)
			}
			logger.Info("signing key loaded", "path", path)
			return key, nil
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("read signing key: %w", err)
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	if path == "" {
		logger.Info("signing key generated; tokens will not survive a restart (set AUTH_KEY_FILE to keep it)")
		return key, nil
	}
	if err := saveKey(path, key); err != nil {
		return nil, err
	}
	logger.Info("signing key generated and saved", "path", path)
	return key, nil
}

func parseKey(data []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var parsed any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q, want PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	key, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want RSA", parsed)
	}
	if key.N.BitLen() < 2048 {
		return nil, fmt.Errorf("RSA key of %d bits, want at least 2048", key.N.BitLen())
	}
	return key, nil
}

// saveKey writes the key atomically with mode 0600.
func saveKey(path string, key *rsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal signing key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".authdev-key-*")
	if err != nil {
		return fmt.Errorf("create key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := pem.Encode(tmp, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		tmp.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close key file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("install key file: %w", err)
	}
	return nil
}
