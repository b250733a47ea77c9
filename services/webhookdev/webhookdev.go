// Package webhookdev is a webhook receiver for development: it verifies
// each request as a receiver following the Standard Webhooks specification
// would (its own HMAC code, not the gateway's), drops repeats of a
// webhook-id, and logs what arrived. It keeps no state on disk.
//
//	POST /secrets   {"secret":"whsec_…"}: verify with this secret too (the one POST /webhooks answered)
//	POST /hook      a webhook: 204 if a secret verifies it, 401 otherwise
//	GET  /received  the last 100 verified webhooks, newest first
//	GET  /health    liveness
package webhookdev

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config tunes the receiver. Zero values take the defaults.
type Config struct {
	// Tolerance is how far webhook-timestamp may be from now (default 5 min).
	Tolerance time.Duration
}

// Received is one verified webhook.
type Received struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
	Repeats   int             `json:"repeats"`
}

type receiver struct {
	cfg     Config
	logger  *slog.Logger
	mu      sync.Mutex
	secrets [][]byte
	got     []*Received
	byID    map[string]*Received
}

// New returns the receiver's handler.
func New(cfg Config, logger *slog.Logger) (http.Handler, error) {
	if logger == nil {
		return nil, errors.New("webhookdev: logger is required")
	}
	if cfg.Tolerance == 0 {
		cfg.Tolerance = 5 * time.Minute
	}
	r := &receiver{cfg: cfg, logger: logger, byID: map[string]*Received{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /secrets", r.addSecret)
	mux.HandleFunc("POST /hook", r.hook)
	mux.HandleFunc("GET /received", r.received)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	})
	return mux, nil
}

func (r *receiver) addSecret(w http.ResponseWriter, req *http.Request) {
	var body struct{ Secret string }
	if err := json.NewDecoder(io.LimitReader(req.Body, 4096)).Decode(&body); err != nil {
		http.Error(w, "body must be {\"secret\":\"whsec_…\"}", http.StatusBadRequest)
		return
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(body.Secret, "whsec_"))
	if !strings.HasPrefix(body.Secret, "whsec_") || err != nil || len(key) == 0 {
		http.Error(w, "secret must be whsec_ + base64", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.secrets = append(r.secrets, key)
	r.mu.Unlock()
	r.logger.Info("secret added; webhooks signed with it are accepted")
	w.WriteHeader(http.StatusNoContent)
}

// verify checks the signature of one request against every known secret:
// HMAC-SHA256 over "id.timestamp.body", any of the space-separated "v1,…"
// signatures, compared in constant time.
func (r *receiver) verify(id, ts, sigs string, body []byte) bool {
	r.mu.Lock()
	secrets := r.secrets
	r.mu.Unlock()
	for _, key := range secrets {
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write([]byte(ts))
		mac.Write([]byte{'.'})
		mac.Write(body)
		want := mac.Sum(nil)
		for _, s := range strings.Fields(sigs) {
			version, sig, ok := strings.Cut(s, ",")
			if !ok || version != "v1" {
				continue
			}
			got, err := base64.StdEncoding.DecodeString(sig)
			if err == nil && hmac.Equal(got, want) {
				return true
			}
		}
	}
	return false
}

func (r *receiver) hook(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		http.Error(w, "could not read the body", http.StatusBadRequest)
		return
	}
	id, ts := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if id == "" || err != nil {
		http.Error(w, "webhook-id and webhook-timestamp are required", http.StatusBadRequest)
		return
	}
	if d := time.Since(time.Unix(sec, 0)); d > r.cfg.Tolerance || d < -r.cfg.Tolerance {
		r.logger.Warn("webhook refused: timestamp out of tolerance", "webhook_id", id, "timestamp", sec)
		http.Error(w, "webhook-timestamp too far from now", http.StatusUnauthorized)
		return
	}
	if !r.verify(id, ts, req.Header.Get("webhook-signature"), body) {
		r.logger.Warn("webhook refused: no known secret verifies its signature (POST /secrets first)", "webhook_id", id)
		http.Error(w, "signature does not verify", http.StatusUnauthorized)
		return
	}
	var msg struct {
		Type      string          `json:"type"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &msg); err != nil {
		http.Error(w, "body is not {type, timestamp, data}", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	if prev := r.byID[id]; prev != nil {
		prev.Repeats++
		r.mu.Unlock()
		r.logger.Info("webhook repeated; ignored", "webhook_id", id, "type", msg.Type)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	rec := &Received{ID: id, Type: msg.Type, Timestamp: msg.Timestamp, Data: msg.Data}
	r.byID[id] = rec
	r.got = append(r.got, rec)
	if len(r.got) > 100 {
		delete(r.byID, r.got[0].ID)
		r.got = r.got[1:]
	}
	r.mu.Unlock()
	r.logger.Info("webhook received", "webhook_id", id, "type", msg.Type, "data", string(msg.Data))
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) received(w http.ResponseWriter, _ *http.Request) {
	r.mu.Lock()
	out := make([]Received, 0, len(r.got))
	for i := len(r.got) - 1; i >= 0; i-- {
		out = append(out, *r.got[i])
	}
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"data": out})
}
