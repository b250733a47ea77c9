package auth

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/gateway/internal/problem"
	"github.com/mana/apigw/services/testenv"
)

func b64(v any) string {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(raw)
}

// unsigned builds header.payload.sig from raw parts.
func unsigned(header map[string]any, c jwt.MapClaims, sig string) string {
	return b64(header) + "." + b64(c) + "." + sig
}

func signWith(t *testing.T, m jwt.SigningMethod, key any, kid any, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != nil {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func without(c jwt.MapClaims, k string) jwt.MapClaims {
	delete(c, k)
	return c
}

func with(c jwt.MapClaims, k string, v any) jwt.MapClaims {
	c[k] = v
	return c
}

// attackCorpus returns named tokens that must all be refused.
func attackCorpus(t *testing.T, is *issuer) map[string]string {
	t.Helper()
	pubDER, err := x509.MarshalPKIXPublicKey(is.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec := newECKey(t)
	valid := is.token(claims("user-a", ""))
	parts := strings.Split(valid, ".")
	corpus := map[string]string{
		"alg none":              unsigned(map[string]any{"alg": "none", "typ": "JWT", "kid": is.kid}, claims("user-a", "admin"), ""),
		"alg None":              unsigned(map[string]any{"alg": "None", "kid": is.kid}, claims("user-a", "admin"), ""),
		"alg NONE with sig":     unsigned(map[string]any{"alg": "NONE", "kid": is.kid}, claims("user-a", "admin"), parts[2]),
		"alg none no kid":       unsigned(map[string]any{"alg": "none"}, claims("user-a", "admin"), ""),
		"hs256 public pem":      signWith(t, jwt.SigningMethodHS256, pubPEM, is.kid, claims("user-a", "admin")),
		"hs256 public der":      signWith(t, jwt.SigningMethodHS256, pubDER, is.kid, claims("user-a", "admin")),
		"hs256 public no kid":   signWith(t, jwt.SigningMethodHS256, pubPEM, nil, claims("user-a", "admin")),
		"hs512 public pem":      signWith(t, jwt.SigningMethodHS512, pubPEM, is.kid, claims("user-a", "admin")),
		"ps256 same key":        signWith(t, jwt.SigningMethodPS256, is.key, is.kid, claims("user-a", "")),
		"rs512 same key":        signWith(t, jwt.SigningMethodRS512, is.key, is.kid, claims("user-a", "")),
		"missing exp":           is.token(without(claims("user-a", ""), "exp")),
		"expired":               is.token(with(claims("user-a", ""), "exp", time.Now().Add(-time.Hour).Unix())),
		"past exp as string":    is.token(with(claims("user-a", ""), "exp", "1000")),
		"nbf in future":         is.token(with(claims("user-a", ""), "nbf", time.Now().Add(time.Hour).Unix())),
		"wrong iss":             is.token(with(claims("user-a", ""), "iss", "evil-issuer")),
		"missing iss":           is.token(without(claims("user-a", ""), "iss")),
		"wrong aud":             is.token(with(claims("user-a", ""), "aud", "other-service")),
		"missing aud":           is.token(without(claims("user-a", ""), "aud")),
		"missing sub":           is.token(without(claims("user-a", ""), "sub")),
		"empty sub":             is.token(with(claims("user-a", ""), "sub", "")),
		"unknown kid":           signWith(t, jwt.SigningMethodRS256, is.key, "key-unknown", claims("user-a", "")),
		"kid path traversal":    signWith(t, jwt.SigningMethodRS256, is.key, "../../../../etc/passwd", claims("user-a", "")),
		"kid sql":               signWith(t, jwt.SigningMethodRS256, is.key, "' OR '1'='1' --", claims("user-a", "")),
		"kid number":            signWith(t, jwt.SigningMethodRS256, is.key, 1, claims("user-a", "")),
		"kid empty":             signWith(t, jwt.SigningMethodRS256, is.key, "", claims("user-a", "")),
		"kid huge":              signWith(t, jwt.SigningMethodRS256, is.key, strings.Repeat("k", 4000), claims("user-a", "")),
		"other key same kid":    signWith(t, jwt.SigningMethodRS256, other, is.kid, claims("user-a", "admin")),
		"other key no kid":      signWith(t, jwt.SigningMethodRS256, other, nil, claims("user-a", "admin")),
		"es256 other key":       signWith(t, jwt.SigningMethodES256, ec, is.kid, claims("user-a", "admin")),
		"tampered payload":      parts[0] + "." + b64(claims("user-a", "admin")) + "." + parts[2],
		"signature stripped":    parts[0] + "." + parts[1] + ".",
		"two parts":             parts[0] + "." + parts[1],
		"four parts":            valid + ".x",
		"garbage":               "not-a-jwt",
		"dots":                  "...",
		"bad base64":            "!!!.###.$$$",
		"header not json":       base64.RawURLEncoding.EncodeToString([]byte("{")) + "." + parts[1] + "." + parts[2],
		"1 MB token":            strings.Repeat("a", 1<<20),
		"just over the cap":     parts[0] + "." + base64.RawURLEncoding.EncodeToString(make([]byte, MaxTokenLen)) + "." + parts[2],
		"padding in signature":  valid + "==",
		"whitespace inside":     parts[0] + ". " + parts[1] + "." + parts[2],
		"crit header":           unsigned(map[string]any{"alg": "RS256", "kid": is.kid, "crit": []string{"exp"}}, claims("user-a", ""), parts[2]),
		"aud list without ours": is.token(with(claims("user-a", ""), "aud", []string{"a", "b"})),
	}
	// jku/x5u pointing elsewhere must be ignored: signed by the wrong key.
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims("user-a", "admin"))
	tok.Header["kid"] = is.kid
	tok.Header["jku"] = "http://attacker.example/jwks.json"
	s, err := tok.SignedString(other)
	if err != nil {
		t.Fatal(err)
	}
	corpus["jku injection"] = s
	return corpus
}

func TestVerifyAcceptsValid(t *testing.T) {
	is := newIssuer(t)
	v := newVerifier(t, is)
	ctx := context.Background()
	tests := []struct {
		name  string
		token string
		want  Claims
	}{
		{"plain", is.token(claims("user-a", "")), Claims{Subject: "user-a", Email: "user-a@example.com"}},
		{"finance", is.token(claims("fin", "finance")), Claims{Subject: "fin", Email: "fin@example.com", Role: "finance"}},
		{"aud list", is.token(with(claims("user-a", ""), "aud", []string{"x", testAudience})), Claims{Subject: "user-a", Email: "user-a@example.com"}},
		{"no kid", signWith(t, jwt.SigningMethodRS256, is.key, nil, claims("user-a", "")), Claims{Subject: "user-a", Email: "user-a@example.com"}},
		{"expired within leeway", is.token(with(claims("user-a", ""), "exp", time.Now().Add(-2*time.Second).Unix())), Claims{Subject: "user-a", Email: "user-a@example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.Verify(ctx, tt.token)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got != tt.want {
				t.Fatalf("claims = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestVerifyRefusesAttackCorpus(t *testing.T) {
	is := newIssuer(t)
	v := newVerifier(t, is)
	for name, tok := range attackCorpus(t, is) {
		t.Run(name, func(t *testing.T) {
			c, err := v.Verify(context.Background(), tok)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if !errors.Is(err, ErrInvalidToken) && !errors.Is(err, ErrExpiredToken) {
				t.Fatalf("error %v is not a 401 sentinel", err)
			}
		})
	}
}

// TestMiddlewareAttackCorpus: every bad token and header is a 401
// problem+json with a Bearer challenge, never a 5xx, and the handler never runs.
func TestMiddlewareAttackCorpus(t *testing.T) {
	is := newIssuer(t)
	v := newVerifier(t, is)
	e := echo.New()
	e.HTTPErrorHandler = problem.ErrorHandler(testenv.Logger(t))
	e.GET("/me", func(c echo.Context) error {
		cl, ok := ClaimsFrom(c)
		if !ok {
			return errors.New("no claims")
		}
		return c.JSON(http.StatusOK, map[string]string{"sub": cl.Subject, "role": cl.Role})
	}, Middleware(v))

	headers := map[string]string{
		"no header":     "",
		"basic":         "Basic dXNlcjpwYXNz",
		"bearer empty":  "Bearer ",
		"bearer only":   "Bearer",
		"token no auth": is.token(claims("user-a", "")),
	}
	for name, tok := range attackCorpus(t, is) {
		headers[name] = "Bearer " + tok
	}
	for name, h := range headers {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/me", nil)
			if h != "" {
				req.Header.Set("Authorization", h)
			}
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, body %s", rec.Code, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != problem.ContentType {
				t.Fatalf("content type %q", ct)
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
				t.Fatalf("WWW-Authenticate %q", got)
			}
			var p problem.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Status != 401 || p.Title == "" || p.Detail == "" {
				t.Fatalf("problem %s (%v)", rec.Body, err)
			}
		})
	}

	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		req := httptest.NewRequest(http.MethodGet, "/me", nil)
		req.Header.Set("Authorization", scheme+" "+is.token(claims("user-a", "finance")))
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"sub":"user-a"`) {
			t.Fatalf("%s: status %d body %s", scheme, rec.Code, rec.Body)
		}
	}
}

// TestVerifyKeyRotation: a token signed with a key the verifier has not
// seen triggers one JWKS fetch; further unknown kids within
// RefreshUnknownKIDRate do not reach the issuer and fail fast.
func TestVerifyKeyRotation(t *testing.T) {
	is := newIssuer(t)
	v := newVerifier(t, is)
	ctx := context.Background()
	if _, err := v.Verify(ctx, is.token(claims("user-a", ""))); err != nil {
		t.Fatal(err)
	}
	oldKey, oldKID := is.key, is.kid
	fetches := is.fetches.Load()
	is.rotate("key-2")
	if _, err := v.Verify(ctx, is.token(claims("user-a", ""))); err != nil {
		t.Fatalf("token of the rotated key: %v", err)
	}
	if got := is.fetches.Load(); got != fetches+1 {
		t.Fatalf("fetches %d, want %d", got, fetches+1)
	}
	// The old key is gone from the JWKS, so is its token.
	if _, err := v.Verify(ctx, signWith(t, jwt.SigningMethodRS256, oldKey, oldKID, claims("user-a", ""))); err == nil {
		t.Fatal("token of the removed key accepted")
	}
	// Signed before the clock starts: the RSA signatures are the probe's
	// work. What is timed is the verifier refusing unknown kids: a key lookup
	// each, no RSA verification, and no waiting for the next refresh the
	// unknown-kid rate allows (a minute away), so 2 s is ample under -race.
	forged := make([]string, 50)
	for i := range forged {
		forged[i] = signWith(t, jwt.SigningMethodRS256, is.key, "forged-"+string(rune('a'+i%26)), claims("user-a", ""))
	}
	start := time.Now()
	for _, tok := range forged {
		if _, err := v.Verify(ctx, tok); err == nil {
			t.Fatal("unknown kid accepted")
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("50 unknown kids took %s to refuse", d)
	}
	if got := is.fetches.Load(); got != fetches+1 {
		t.Fatalf("unknown kids caused %d extra JWKS fetches", got-fetches-1)
	}
}

// TestVerifierIssuerDownAtStart: the gateway starts while the issuer is
// down; once it is up, the first token is verified.
func TestVerifierIssuerDownAtStart(t *testing.T) {
	is := newIssuer(t)
	is.down.Store(true)
	v := newVerifier(t, is)
	is.down.Store(false)
	if _, err := v.Verify(context.Background(), is.token(claims("user-a", ""))); err != nil {
		t.Fatalf("after the issuer came up: %v", err)
	}
}

func TestVerifierConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  VerifierConfig
		want []string
	}{
		{"ok", VerifierConfig{JWKSURL: "http://x/jwks", Issuer: "i", Audience: "a"}, nil},
		{"all missing", VerifierConfig{}, []string{"JWKS URL", "issuer", "audience"}},
		{"relative url", VerifierConfig{JWKSURL: "/jwks", Issuer: "i", Audience: "a"}, []string{"JWKS URL"}},
		{"leeway", VerifierConfig{JWKSURL: "https://x/jwks", Issuer: "i", Audience: "a", Leeway: time.Hour}, []string{"leeway"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// FuzzVerify: no input panics, and whatever is accepted carries a subject.
func FuzzVerify(f *testing.F) {
	is := newIssuer(f)
	v := newVerifier(f, is)
	f.Add(is.token(claims("user-a", "")))
	for _, tok := range []string{"", "a.b.c", "...", unsigned(map[string]any{"alg": "none"}, claims("x", ""), "")} {
		f.Add(tok)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Verify(context.Background(), tok)
		if err == nil && c.Subject == "" {
			t.Fatalf("accepted %q without subject", tok)
		}
		if err != nil && !errors.Is(err, ErrInvalidToken) && !errors.Is(err, ErrExpiredToken) {
			t.Fatalf("error %v is not a 401 sentinel", err)
		}
	})
}
