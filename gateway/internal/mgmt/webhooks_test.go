package mgmt

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/proto/webhook"
)

func (en *env) createEndpoint(sub string, body map[string]any) endpointView {
	en.t.Helper()
	r := en.do(sub, "", http.MethodPost, "/webhooks", body)
	if r.code != http.StatusCreated {
		en.t.Fatalf("create endpoint: %d %s", r.code, r.body)
	}
	var v endpointView
	r.json(en.t, &v)
	return v
}

func TestWebhookEndpointLifecycle(t *testing.T) {
	en := newEnv(t)
	r := en.do("alice", "", http.MethodPost, "/webhooks", map[string]any{
		"url": "https://hooks.example.com/mana", "events": []string{"key.created", "credits.threshold", "key.created"},
		"thresholds": []int{100, 80}, "description": "ops"})
	if r.code != http.StatusCreated || r.header.Get("Cache-Control") != "no-store" || !strings.HasPrefix(r.header.Get("Location"), "/webhooks/") {
		t.Fatalf("create: %d %v %s", r.code, r.header, r.body)
	}
	var created endpointView
	r.json(t, &created)
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(created.Secret, "whsec_"))
	if !strings.HasPrefix(created.Secret, "whsec_") || err != nil || len(key) < 24 {
		t.Fatalf("secret %q is not whsec_ + base64 of enough bytes (%v)", created.Secret, err)
	}
	if strings.Join(created.Events, ",") != "credits.threshold,key.created" || len(created.Thresholds) != 2 ||
		created.Thresholds[0] != 80 || !created.Enabled || created.Description != "ops" {
		t.Fatalf("created %+v", created)
	}
	path := "/webhooks/" + created.ID

	// The secret is shown once: never in a read or a list.
	for _, p := range []string{path, "/webhooks"} {
		r := en.do("alice", "", http.MethodGet, p, nil)
		if r.code != http.StatusOK || strings.Contains(string(r.body), created.Secret) || strings.Contains(string(r.body), "secret") {
			t.Fatalf("GET %s: %d %s", p, r.code, r.body)
		}
	}
	// Defaults: every event, 50/80/100.
	def := en.createEndpoint("alice", map[string]any{"url": "http://127.0.0.1:9999/hook"})
	if len(def.Events) != 0 || len(def.Thresholds) != 3 || def.Thresholds[0] != 50 {
		t.Fatalf("defaults %+v", def)
	}

	// Another owner learns nothing: 404 everywhere, before validation.
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{http.MethodGet, path, nil},
		{http.MethodPatch, path, map[string]any{"url": "ftp://nope"}},
		{http.MethodDelete, path, nil},
		{http.MethodGet, path + "/deliveries", nil},
		{http.MethodPost, path + "/deliveries/msg_x/retry", nil},
	} {
		wantProblem(t, en.do("mallory", "", c.method, c.path, c.body), http.StatusNotFound)
	}
	var list struct{ Data []endpointView }
	en.do("mallory", "", http.MethodGet, "/webhooks", nil).json(t, &list)
	if len(list.Data) != 0 {
		t.Fatalf("mallory lists %+v", list.Data)
	}

	// Change, disable and re-enable.
	r = en.do("alice", "", http.MethodPatch, path, map[string]any{"url": "https://hooks.example.com/v2", "thresholds": []int{90}, "enabled": false})
	var changed endpointView
	r.json(t, &changed)
	if r.code != http.StatusOK || changed.URL != "https://hooks.example.com/v2" || changed.Enabled || changed.DisabledAt == nil ||
		changed.DisabledReason == nil || len(changed.Thresholds) != 1 {
		t.Fatalf("patch: %d %s", r.code, r.body)
	}
	r = en.do("alice", "", http.MethodPatch, path, map[string]any{"enabled": true})
	r.json(t, &changed)
	if !changed.Enabled || changed.DisabledAt != nil || changed.DisabledReason != nil {
		t.Fatalf("re-enable: %s", r.body)
	}

	// Delete is idempotent; the endpoint is gone afterwards.
	for range 2 {
		if r := en.do("alice", "", http.MethodDelete, path, nil); r.code != http.StatusNoContent {
			t.Fatalf("delete: %d %s", r.code, r.body)
		}
	}
	wantProblem(t, en.do("alice", "", http.MethodGet, path, nil), http.StatusNotFound)
}

func TestWebhookEndpointValidation(t *testing.T) {
	en := newEnv(t)
	for name, body := range map[string]any{
		"no url":             map[string]any{"events": []string{"key.created"}},
		"relative url":       map[string]any{"url": "/hook"},
		"ftp":                map[string]any{"url": "ftp://example.com/x"},
		"credentials":        map[string]any{"url": "https://u:p@example.com/x"},
		"unknown event":      map[string]any{"url": "https://example.com", "events": []string{"key.exploded"}},
		"threshold 0":        map[string]any{"url": "https://example.com", "thresholds": []int{0}},
		"threshold 101":      map[string]any{"url": "https://example.com", "thresholds": []int{101}},
		"no thresholds":      map[string]any{"url": "https://example.com", "thresholds": []int{}},
		"control characters": map[string]any{"url": "https://example.com", "description": "a\nb"},
	} {
		t.Run(name, func(t *testing.T) {
			wantProblem(t, en.do("alice", "", http.MethodPost, "/webhooks", body), http.StatusUnprocessableEntity)
		})
	}
	wantProblem(t, en.do("alice", "", http.MethodPost, "/webhooks", `{"url":"https://example.com","secret":"mine"}`), http.StatusBadRequest)
	v := en.createEndpoint("alice", map[string]any{"url": "https://example.com"})
	wantProblem(t, en.do("alice", "", http.MethodPatch, "/webhooks/"+v.ID, map[string]any{}), http.StatusUnprocessableEntity)
	wantProblem(t, en.do("alice", "", http.MethodPatch, "/webhooks/"+v.ID, map[string]any{"url": nil}), http.StatusUnprocessableEntity)
	wantProblem(t, en.do("alice", "", http.MethodGet, "/webhooks/not-a-uuid", nil), http.StatusNotFound)

	// An owner has a bounded number of endpoints.
	for range maxEndpoints - 1 {
		en.createEndpoint("alice", map[string]any{"url": "https://example.com"})
	}
	wantProblem(t, en.do("alice", "", http.MethodPost, "/webhooks", map[string]any{"url": "https://example.com"}), http.StatusConflict)
}

func TestWebhookDeliveriesListAndRetry(t *testing.T) {
	en := newEnv(t)
	all := en.createEndpoint("alice", map[string]any{"url": "https://example.com/all"})
	only80 := en.createEndpoint("alice", map[string]any{"url": "https://example.com/80", "events": []string{"credits.threshold"}, "thresholds": []int{80}})
	en.createEndpoint("bob", map[string]any{"url": "https://example.com/bob"})

	id := webhook.NewID()
	if err := webhook.Enqueue(t.Context(), en.db, webhook.Event{ID: id, OwnerID: "alice", Type: webhook.CreditsThreshold,
		Threshold: 50, Data: map[string]any{"threshold": 50}}); err != nil {
		t.Fatal(err)
	}
	// Enqueueing the same event again changes nothing.
	if err := webhook.Enqueue(t.Context(), en.db, webhook.Event{ID: id, OwnerID: "alice", Type: webhook.CreditsThreshold, Threshold: 50}); err != nil {
		t.Fatal(err)
	}
	// The billing worker makes the deliveries from the stream; here the
	// same fan-out runs at once.
	if _, err := webhook.FanOut(t.Context(), en.db, []string{id}, time.Now()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := en.db.Get(&n, `SELECT count(*) FROM api_gateway.webhook_deliveries`); err != nil || n != 1 {
		t.Fatalf("%d deliveries (%v), want 1: only the endpoint with every event and threshold 50", n, err)
	}
	var got struct{ Data []deliveryView }
	en.do("alice", "", http.MethodGet, "/webhooks/"+all.ID+"/deliveries", nil).json(t, &got)
	if len(got.Data) != 1 || got.Data[0].ID != id || got.Data[0].Status != "pending" || got.Data[0].Type != webhook.CreditsThreshold {
		t.Fatalf("deliveries %+v", got.Data)
	}
	en.do("alice", "", http.MethodGet, "/webhooks/"+only80.ID+"/deliveries", nil).json(t, &got)
	if len(got.Data) != 0 {
		t.Fatalf("the 80%% endpoint got %+v", got.Data)
	}

	// While a sender holds the delivery (its lease), a retry is refused.
	en.exec(`UPDATE api_gateway.webhook_deliveries SET attempts = 1, leased_until = $1, next_attempt_at = $1`, en.now.Add(30*time.Second))
	leased := en.do("alice", "", http.MethodPost, "/webhooks/"+all.ID+"/deliveries/"+id+"/retry", nil)
	wantProblem(t, leased, http.StatusConflict)
	if ra, _ := strconv.Atoi(leased.header.Get("Retry-After")); ra < 1 || ra > 30 || !strings.Contains(string(leased.body), "being sent") {
		t.Fatalf("leased retry: Retry-After %q, %s", leased.header.Get("Retry-After"), leased.body)
	}
	en.exec(`UPDATE api_gateway.webhook_deliveries SET status = 'failed', attempts = 8, next_attempt_at = NULL, leased_until = NULL`)
	r := en.do("alice", "", http.MethodPost, "/webhooks/"+all.ID+"/deliveries/"+id+"/retry", nil)
	var d deliveryView
	r.json(t, &d)
	if r.code != http.StatusAccepted || d.Status != "pending" || d.NextAttemptAt == nil {
		t.Fatalf("retry: %d %s", r.code, r.body)
	}
	wantProblem(t, en.do("alice", "", http.MethodPost, "/webhooks/"+only80.ID+"/deliveries/"+id+"/retry", nil), http.StatusNotFound)
}

// TestKeyChangesAreWebhookEvents: each committed change of a key is one
// event in the outbox, delivered to the owner's endpoints, without the
// secret; a repeated delete and a change to nothing make none.
func TestKeyChangesAreWebhookEvents(t *testing.T) {
	en := newEnv(t)
	hook := en.createEndpoint("alice", map[string]any{"url": "https://example.com/hook", "events": []string{"key.created", "key.updated", "key.deleted", "key.regenerated"}})
	en.createEndpoint("bob", map[string]any{"url": "https://example.com/bob"})
	k := en.create("alice", map[string]any{"name": "app", "tier": "pro"})
	path := "/api-keys/" + k.ID
	steps := []struct {
		method, path string
		body         any
	}{
		{http.MethodPatch, path, map[string]any{"name": "renamed"}},
		{http.MethodPatch, path, map[string]any{"name": "renamed"}}, // nothing changes
		{http.MethodPost, path + "/regenerate", nil},
		{http.MethodDelete, path, nil},
		{http.MethodDelete, path, nil}, // already deleted
	}
	for _, s := range steps {
		if r := en.do("alice", "", s.method, s.path, s.body); r.code >= 300 {
			t.Fatalf("%s %s: %d %s", s.method, s.path, r.code, r.body)
		}
	}
	var ids []string
	if err := en.db.Select(&ids, `SELECT id FROM api_gateway.webhook_events`); err != nil {
		t.Fatal(err)
	}
	if _, err := webhook.FanOut(t.Context(), en.db, ids, time.Now()); err != nil {
		t.Fatal(err)
	}
	var events []struct {
		Type    string `db:"type"`
		Payload string `db:"payload"`
	}
	if err := en.db.Select(&events, `SELECT ev.type, ev.payload::text AS payload FROM api_gateway.webhook_events ev
		JOIN api_gateway.webhook_deliveries d ON d.event_id = ev.id WHERE d.endpoint_id = $1 ORDER BY ev.xmin::text::bigint`, hook.ID); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
		if strings.Contains(e.Payload, k.Secret) || !strings.Contains(e.Payload, k.ID) {
			t.Fatalf("payload %s", e.Payload)
		}
	}
	if got := strings.Join(types, " "); got != "key.created key.updated key.regenerated key.deleted" {
		t.Fatalf("events %q", got)
	}
	if !strings.Contains(events[1].Payload, `"changed": ["name"]`) {
		t.Fatalf("update payload %s", events[1].Payload)
	}
	var bobs int
	if err := en.db.Get(&bobs, `SELECT count(*) FROM api_gateway.webhook_events WHERE owner_id = 'bob'`); err != nil || bobs != 0 {
		t.Fatalf("bob got %d events (%v)", bobs, err)
	}
}
