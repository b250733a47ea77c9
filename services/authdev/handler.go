package authdev

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/mana/apigw/services/httpjson"
)

// loginBody is a login request body: at most 64 KiB; a malformed one's
// problem does not quote the decoder, which could echo the password.
var loginBody = httpjson.Body{Limit: 64 << 10, Name: "the credentials",
	Shape: "a JSON object with email and password", HideCause: true}

// New builds an Issuer from cfg and returns its HTTP handler; it is what the
// authdev binary serves.
func New(cfg Config, logger *slog.Logger) (http.Handler, error) {
	if logger == nil {
		return nil, errors.New("authdev: logger is required")
	}
	cfg.Logger = logger
	is, err := NewIssuer(cfg)
	if err != nil {
		return nil, err
	}
	return is.Handler(), nil
}

// Handler serves:
//
//	POST /api/v1/auth/login      {"email","password"} -> {"accessToken","tokenType":"Bearer","expiresIn"}
//	GET  /.well-known/jwks.json  the public signing key
//	GET  /health                 liveness
//
// The login answers browsers of any origin (CORS without credentials: the
// answer carries the token only to whoever sent the password), so that the
// gateway's dashboard can sign in from its own origin.
func (is *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/auth/login", cors(is.handleLogin))
	mux.HandleFunc("OPTIONS /api/v1/auth/login", cors(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Access-Control-Allow-Methods", "POST")
		w.Header().Set("Access-Control-Allow-Headers", "Content-Type")
		w.Header().Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("GET /.well-known/jwks.json", is.handleJWKS)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Problem(w, http.StatusNotFound, "Not Found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// cors lets a page of any origin read the answer; no cookies are involved.
func cors(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		next(w, r)
	}
}

type loginRequest struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

type loginResponse struct {
	AccessToken string `json:"accessToken"`
	TokenType   string `json:"tokenType"`
	ExpiresIn   int64  `json:"expiresIn"`
}

func (is *Issuer) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if !loginBody.Decode(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.Email) == "" || req.Password == "" {
		httpjson.Problem(w, http.StatusBadRequest, "Malformed Request", "email and password are required")
		return
	}
	u, ok := is.Login(req.Email, req.Password)
	if !ok {
		is.cfg.Logger.Info("login refused")
		httpjson.Problem(w, http.StatusUnauthorized, "Unauthorized", "invalid email or password")
		return
	}
	tok, err := is.Sign(is.Claims(u))
	if err != nil {
		is.cfg.Logger.Error("sign token", "err", err)
		httpjson.Problem(w, http.StatusInternalServerError, "Internal Server Error", "could not sign the token")
		return
	}
	is.cfg.Logger.Info("login", "sub", u.ID, "role", u.Role)
	w.Header().Set("Cache-Control", "no-store")
	httpjson.Write(w, http.StatusOK, loginResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(is.cfg.TokenTTL.Seconds())})
}

func (is *Issuer) handleJWKS(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(is.jwks)
}
