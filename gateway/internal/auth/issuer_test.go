package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/mana/apigw/services/testenv"
)

const (
	testIssuer   = "mana-core-auth"
	testAudience = "mana-api-gateway"
)

// issuer is an in-process JWT issuer: an RSA signing key served as a
// JWKS over HTTP, with the number of JWKS fetches counted.
type issuer struct {
	t       testing.TB
	key     *rsa.PrivateKey
	kid     string
	store   *jwkset.MemoryJWKSet
	fetches atomic.Int64
	down    atomic.Bool // answer 503 to JWKS fetches
	srv     *httptest.Server
}

func newIssuer(t testing.TB) *issuer {
	t.Helper()
	is := &issuer{t: t, store: jwkset.NewMemoryStorage()}
	is.rotate("key-1")
	is.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.fetches.Add(1)
		if is.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		raw, err := is.store.JSONPublic(r.Context())
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(raw)
	}))
	t.Cleanup(is.srv.Close)
	return is
}

// rotate replaces the signing key (and the JWKS) with a new one named kid.
func (is *issuer) rotate(kid string) {
	is.t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		is.t.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(key.Public(), jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.AlgRS256, USE: jwkset.UseSig},
	})
	if err != nil {
		is.t.Fatal(err)
	}
	if err := is.store.KeyReplaceAll(context.Background(), []jwkset.JWK{jwk}); err != nil {
		is.t.Fatal(err)
	}
	is.key, is.kid = key, kid
}

func (is *issuer) url() string { return is.srv.URL + "/.well-known/jwks.json" }

// claims returns valid claims for sub with role.
func claims(sub, role string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"sub": sub, "email": sub + "@example.com", "role": role,
		"iss": testIssuer, "aud": testAudience,
		"iat": now.Unix(), "exp": now.Add(15 * time.Minute).Unix(),
	}
}

// token signs c with the issuer's current key and kid.
func (is *issuer) token(c jwt.MapClaims) string {
	is.t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = is.kid
	s, err := tok.SignedString(is.key)
	if err != nil {
		is.t.Fatal(err)
	}
	return s
}

func newVerifier(t testing.TB, is *issuer) *Verifier {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	v, err := NewVerifier(ctx, VerifierConfig{
		JWKSURL: is.url(), Issuer: testIssuer, Audience: testAudience,
		RefreshUnknownKIDRate: time.Hour, Leeway: 5 * time.Second,
	}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
