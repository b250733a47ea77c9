package authdev

import (
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/mana/apigw/services/httpjson"
)

func newServer(t *testing.T, cfg Config) (*Issuer, *httptest.Server) {
	t.Helper()
	cfg.Logger = slog.New(slog.DiscardHandler)
	is, err := NewIssuer(cfg)
	if err != nil {
		t.Fatalf("NewIssuer: %v", err)
	}
	srv := httptest.NewServer(is.Handler())
	t.Cleanup(srv.Close)
	return is, srv
}

// fetchKeys reads the JWKS the way a verifier would: over HTTP, by kid.
func fetchKeys(t *testing.T, base string) map[string]*rsa.PublicKey {
	t.Helper()
	resp, err := http.Get(base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("jwks: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var set jwkset.JWKSMarshal
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	keys := map[string]*rsa.PublicKey{}
	for _, m := range set.Keys {
		if m.ALG != jwkset.AlgRS256 || m.USE != jwkset.UseSig || m.KTY != jwkset.KtyRSA || m.D != "" {
			t.Fatalf("jwk: alg %q use %q kty %q private=%v", m.ALG, m.USE, m.KTY, m.D != "")
		}
		jwk, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pub, ok := jwk.Key().(*rsa.PublicKey)
		if !ok {
			t.Fatalf("key is %T", jwk.Key())
		}
		keys[m.KID] = pub
	}
	return keys
}

func verify(t *testing.T, keys map[string]*rsa.PublicKey, token string) jwt.MapClaims {
	t.Helper()
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, claims, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		k, ok := keys[kid]
		if !ok {
			return nil, errors.New("unknown kid")
		}
		return k, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(DefaultIssuer), jwt.WithAudience(DefaultAudience), jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return claims
}

func post(t *testing.T, url, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(url, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestLoginIssuesVerifiableTokens(t *testing.T) {
	_, srv := newServer(t, Config{})
	keys := fetchKeys(t, srv.URL)
	if len(keys) != 1 {
		t.Fatalf("jwks has %d keys, want 1", len(keys))
	}
	tests := []struct {
		email, sub, role string
	}{
		{"user@example.com", "user-1", "user"},
		{"other@example.com", "user-2", "user"},
		{"finance@example.com", "user-3", "finance"},
		{"admin@example.com", "user-4", "admin"},
		{"USER@example.com", "user-1", "user"},
	}
	for _, tt := range tests {
		t.Run(tt.email, func(t *testing.T) {
			resp, body := post(t, srv.URL+"/api/v1/auth/login", "application/json", `{"email":"`+tt.email+`","password":"password"}`)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var lr loginResponse
			if err := json.Unmarshal(body, &lr); err != nil {
				t.Fatal(err)
			}
			if lr.TokenType != "Bearer" || lr.ExpiresIn != 3600 || lr.AccessToken == "" {
				t.Fatalf("response %+v", lr)
			}
			c := verify(t, keys, lr.AccessToken)
			if c["sub"] != tt.sub || c["role"] != tt.role || !strings.EqualFold(c["email"].(string), tt.email) {
				t.Fatalf("claims %v", c)
			}
			iat, _ := c.GetIssuedAt()
			exp, _ := c.GetExpirationTime()
			if exp.Sub(iat.Time) != time.Hour {
				t.Fatalf("exp - iat = %v, want 1h", exp.Sub(iat.Time))
			}
		})
	}
}

func TestLoginRefusals(t *testing.T) {
	_, srv := newServer(t, Config{})
	tests := []struct {
		name, contentType, body string
		want                    int
	}{
		{"wrong password", "application/json", `{"email":"user@example.com","password":"Password"}`, 401},
		{"unknown user", "application/json", `{"email":"nobody@example.com","password":"password"}`, 401},
		{"empty password", "application/json", `{"email":"user@example.com","password":""}`, 400},
		{"missing email", "application/json", `{"password":"password"}`, 400},
		{"not json", "application/json", `email=user@example.com`, 400},
		{"two values", "application/json", `{"email":"user@example.com","password":"password"} {}`, 400},
		{"wrong type", "application/json", `{"email":1,"password":"password"}`, 400},
		{"form encoded", "application/x-www-form-urlencoded", `email=user@example.com&password=password`, 415},
		{"too large", "application/json", `{"email":"` + strings.Repeat("a", int(loginBody.Limit)) + `","password":"password"}`, 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := post(t, srv.URL+"/api/v1/auth/login", tt.contentType, tt.body)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("content type %q", ct)
			}
			var p httpjson.Details
			if err := json.Unmarshal(body, &p); err != nil || p.Status != tt.want || p.Title == "" || p.Type == "" || p.Detail == "" {
				t.Fatalf("problem %+v (%v)", p, err)
			}
		})
	}
}

func TestTokenAndSign(t *testing.T) {
	is, srv := newServer(t, Config{})
	keys := fetchKeys(t, srv.URL)
	tok, err := is.Token("finance@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if c := verify(t, keys, tok); c["role"] != "finance" || c["sub"] != "user-3" {
		t.Fatalf("claims %v", c)
	}
	if _, err := is.Token("nobody@example.com"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("Token(unknown) err = %v", err)
	}

	// Sign takes claims verbatim: an expired token must fail verification.
	expired, err := is.Sign(jwt.MapClaims{"iss": DefaultIssuer, "aud": DefaultAudience, "sub": "x", "exp": time.Now().Add(-time.Minute).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = jwt.Parse(expired, func(*jwt.Token) (any, error) { return is.PublicKey(), nil })
	if !errors.Is(err, jwt.ErrTokenExpired) {
		t.Fatalf("expired token err = %v", err)
	}
	parsed, _, err := jwt.NewParser().ParseUnverified(expired, jwt.MapClaims{})
	if err != nil || parsed.Header["kid"] != is.KeyID() || parsed.Header["alg"] != "RS256" {
		t.Fatalf("header %v (%v)", parsed.Header, err)
	}
}

func TestConfiguredIssuerAudienceAndClock(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	is, err := NewIssuer(Config{Issuer: "iss-x", Audience: "aud-y", TokenTTL: 5 * time.Minute, Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	c := is.Claims(User{ID: "u", Email: "e", Role: "user"})
	if c["iss"] != "iss-x" || c["aud"] != "aud-y" || c["iat"] != at.Unix() || c["exp"] != at.Add(5*time.Minute).Unix() {
		t.Fatalf("claims %v", c)
	}
}

func TestKeyFilePersistsTheKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "auth.pem")
	first, err := NewIssuer(Config{KeyFile: path})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("key file not written: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	second, err := NewIssuer(Config{KeyFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if first.KeyID() != second.KeyID() {
		t.Fatalf("kid changed across restarts: %s -> %s", first.KeyID(), second.KeyID())
	}
	tok, err := first.Token("user@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return second.PublicKey(), nil }); err != nil {
		t.Fatalf("token from before the restart does not verify: %v", err)
	}
}

func TestBadConfig(t *testing.T) {
	garbage := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(garbage, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"corrupt key file", Config{KeyFile: garbage}},
		{"negative ttl", Config{TokenTTL: -time.Second}},
		{"incomplete user", Config{Users: []User{{Email: "a@b"}}}},
		{"duplicate user", Config{Users: []User{{ID: "1", Email: "a@b", Password: "p", Role: "user"}, {ID: "2", Email: "A@b", Password: "p", Role: "user"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewIssuer(tt.cfg); err == nil {
				t.Fatal("NewIssuer accepted a bad config")
			}
		})
	}
	if _, err := New(Config{}, nil); err == nil {
		t.Fatal("New accepted a nil logger")
	}
}

// TestLoginAnswersBrowsersOfOtherOrigins: the gateway's dashboard posts the
// login from its own origin, so the preflight and the answer carry CORS
// headers (and no credentials are allowed).
func TestLoginAnswersBrowsersOfOtherOrigins(t *testing.T) {
	_, srv := newServer(t, Config{})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodOptions, srv.URL+"/api/v1/auth/login", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", "http://127.0.0.1:3030")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		resp.Header.Get("Access-Control-Allow-Methods") != "POST" || !strings.EqualFold(resp.Header.Get("Access-Control-Allow-Headers"), "content-type") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	if resp.Header.Get("Access-Control-Allow-Credentials") != "" {
		t.Fatal("credentials allowed")
	}
	resp, body := post(t, srv.URL+"/api/v1/auth/login", "application/json", `{"email":"user@example.com","password":"password"}`)
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("login: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if resp, _ := post(t, srv.URL+"/api/v1/auth/login", "application/json", `{"email":"user@example.com","password":"nope"}`); resp.StatusCode != 401 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("refusal: %d %v", resp.StatusCode, resp.Header)
	}
}
