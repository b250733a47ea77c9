package authdev

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
)

// maxLoginBody bounds a login request body.
const maxLoginBody = 64 << 10

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
func (is *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/auth/login", is.handleLogin)
	mux.HandleFunc("GET /.well-known/jwks.json", is.handleJWKS)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "Not Found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
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
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeProblem(w, http.StatusUnsupportedMediaType, "Unsupported Media Type", "send the credentials as application/json")
			return
		}
	}
	var req loginRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxLoginBody))
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeProblem(w, http.StatusRequestEntityTooLarge, "Request Too Large", fmt.Sprintf("the body exceeds %d bytes", maxLoginBody))
			return
		}
		writeProblem(w, http.StatusBadRequest, "Malformed Request", "the body is not a JSON object with email and password")
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeProblem(w, http.StatusBadRequest, "Malformed Request", "the body holds more than one JSON value")
		return
	}
	if strings.TrimSpace(req.Email) == "" || req.Password == "" {
		writeProblem(w, http.StatusBadRequest, "Malformed Request", "email and password are required")
		return
	}
	u, ok := is.Login(req.Email, req.Password)
	if !ok {
		is.cfg.Logger.Info("login refused")
		writeProblem(w, http.StatusUnauthorized, "Unauthorized", "invalid email or password")
		return
	}
	tok, err := is.Sign(is.Claims(u))
	if err != nil {
		is.cfg.Logger.Error("sign token", "err", err)
		writeProblem(w, http.StatusInternalServerError, "Internal Server Error", "could not sign the token")
		return
	}
	is.cfg.Logger.Info("login", "sub", u.ID, "role", u.Role)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, loginResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(is.cfg.TokenTTL.Seconds())})
}

func (is *Issuer) handleJWKS(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(is.jwks)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// problem is an RFC 9457 problem details body.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{Type: "about:blank", Title: title, Status: status, Detail: detail})
}
